#!/usr/bin/env bash
# `make test`: the whole suite on the newest ComfyUI set up here, and the tests that touch
# ComfyUI (in-process, server, example workflows, browser; pytest -m comfy) on 0.3.75 too.
#   COMFYUI_PATH set:                      the whole suite on that ComfyUI (.venv)
#   .comfyui/ComfyUI-0.33.0 set up:        the whole suite on 0.33.0, then -m comfy on 0.3.75
#   otherwise (a fresh clone):             the whole suite on 0.3.75
# Extra arguments go to every pytest run. Exits non-zero when any run fails.
set -uo pipefail
cd "$(dirname "$0")/.."

run() {  # run LABEL VENV COMFY [pytest args...]
  local label="$1" venv="$2" comfy="$3"; shift 3
  echo "=== tests on $label (ComfyUI at $comfy, $venv) ==="
  COMFYUI_PATH="$comfy" "$venv/bin/python" -m pytest -c tests/pytest.ini tests "$@"
}

if [ -n "${COMFYUI_PATH:-}" ]; then
  run "your ComfyUI" .venv "$COMFYUI_PATH" "$@"
  exit $?
fi
if [ -f .comfyui/ComfyUI-0.33.0/main.py ] && [ -x .venv-0.33.0/bin/python ]; then
  run "ComfyUI 0.33.0 (whole suite)" .venv-0.33.0 .comfyui/ComfyUI-0.33.0 "$@"
  newest=$?
  run "ComfyUI 0.3.75 (tests that touch ComfyUI)" .venv .comfyui/ComfyUI -m comfy "$@"
  oldest=$?
  # pytest's 5 is "no test selected": extra arguments (-k ...) may leave none of these.
  [ $oldest = 5 ] && [ $# -gt 0 ] && oldest=0
  echo "=== ComfyUI 0.33.0: $([ $newest = 0 ] && echo passed || echo "FAILED ($newest)"); ComfyUI 0.3.75: $([ $oldest = 0 ] && echo passed || echo "FAILED ($oldest)") ==="
  [ $newest = 0 ] && [ $oldest = 0 ]
  exit $?
fi
run "ComfyUI 0.3.75 (whole suite)" .venv .comfyui/ComfyUI "$@"
