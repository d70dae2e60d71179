#!/usr/bin/env bash
# `make test`: the whole suite on the newest ComfyUI set up here, and the tests that touch
# ComfyUI (in-process, server, example workflows; pytest -m comfy) on 0.3.75 too.
#   COMFYUI_PATH set:                      the whole suite on that ComfyUI (.venv)
#   .comfyui/ComfyUI-0.33.0 set up:        the whole suite on 0.33.0, then -m comfy on 0.3.75
#                                          (OLDEST_LEFT_OUT below left out)
#   otherwise (a fresh clone):             the whole suite on 0.3.75
# Extra arguments go to every pytest run. Exits non-zero when any run fails.
#
# TEST_WORKERS (default 2) pytest-xdist workers with one torch thread each: on a 2-core machine
# about half the wall time of one process with two threads (conftest.py keeps each test module,
# and the tests on the shared ComfyUI server, on one worker). TEST_WORKERS=1: one process.
set -uo pipefail
cd "$(dirname "$0")/.."

WORKERS="${TEST_WORKERS:-2}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
PARALLEL=()
[ "$WORKERS" -gt 1 ] && PARALLEL=(-n "$WORKERS" --dist loadgroup)

# On 0.3.75 the ComfyUI-facing tests run without the frontend ones (the browser shows today's
# frontend on the newest ComfyUI) and without the training pipelines (collect, evaluate-images,
# glyph and LoRA training: the same ComfyUI sampling calls the node tests make there); they run
# whole on the newest ComfyUI.
OLDEST_LEFT_OUT=(tests/test_browser.py tests/test_collect.py tests/test_collect_group.py
                 tests/test_evaluate_images.py tests/test_glyph_base.py tests/test_lora_training.py
                 tests/test_w2w_end_to_end.py)

run() {  # run LABEL VENV COMFY [pytest args...]
  local label="$1" venv="$2" comfy="$3"; shift 3
  echo "=== tests on $label (ComfyUI at $comfy, $venv, $WORKERS workers) ==="
  COMFYUI_PATH="$comfy" "$venv/bin/python" -m pytest -c tests/pytest.ini tests "${PARALLEL[@]}" "$@"
}

if [ -n "${COMFYUI_PATH:-}" ]; then
  run "your ComfyUI" .venv "$COMFYUI_PATH" "$@"
  exit $?
fi
if [ -f .comfyui/ComfyUI-0.33.0/main.py ] && [ -x .venv-0.33.0/bin/python ]; then
  # The example workflows' tiny hypernets, trained by the first run and reused by the second.
  LORA_HYPERNET_TEST_TRAINED="$(mktemp -d)"
  export LORA_HYPERNET_TEST_TRAINED
  trap 'rm -rf "$LORA_HYPERNET_TEST_TRAINED"' EXIT
  run "ComfyUI 0.33.0 (whole suite)" .venv-0.33.0 .comfyui/ComfyUI-0.33.0 "$@"
  newest=$?
  run "ComfyUI 0.3.75 (tests that touch ComfyUI, pipelines and browser left out)" .venv .comfyui/ComfyUI -m comfy \
    "${OLDEST_LEFT_OUT[@]/#/--ignore=}" "$@"
  oldest=$?
  # pytest's 5 is "no test selected": extra arguments (-k ...) may leave none of these.
  [ $oldest = 5 ] && [ $# -gt 0 ] && oldest=0
  echo "=== ComfyUI 0.33.0: $([ $newest = 0 ] && echo passed || echo "FAILED ($newest)"); ComfyUI 0.3.75: $([ $oldest = 0 ] && echo passed || echo "FAILED ($oldest)") ==="
  [ $newest = 0 ] && [ $oldest = 0 ]
  exit $?
fi
run "ComfyUI 0.3.75 (whole suite)" .venv .comfyui/ComfyUI "$@"
