# The README's two quick-start commands are `make demo` and `make test`; both set up first.
PY := .venv/bin/python

.PHONY: setup test demo miniature thumbnails bench clean

setup:
	@bash scripts/setup.sh

# The whole suite on ComfyUI 0.33.0 and the ComfyUI tests on 0.3.75 where ../shared has 0.33.0;
# on 0.3.75 alone elsewhere; on yours with COMFYUI_PATH (scripts/test.sh).
test: setup
	bash scripts/test.sh $(PYTEST_ARGS)

demo: setup
	$(PY) scripts/demo.py $(DEMO_ARGS)

# The typeface miniature (issue 17) from the Debian font packages: base model, encoder, identity
# LoRAs, hypernet, image evaluation; resumable per stage (75 minutes on an idle 2-core CPU). Writes
# benchmarks/miniature.json, its RESULTS.md section and picture, and the shipped files in models/.
miniature: setup
	$(PY) -m miniature run $(MINIATURE_ARGS)

# Speed and memory tables (minutes; not run by CI): prints them, draws benchmarks/scaling.png and
# writes the tables into benchmarks/RESULTS.md.
bench: setup
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

# The example workflows' .jpg thumbnails: screenshots of each workflow after a run in the real
# frontend, taken by the browser test's harness (tests/browser_support.py).
# Taken in the newest ComfyUI set up here (0.33.0 where ../shared has it).
NEWEST := $(if $(and $(wildcard .venv-0.33.0/bin/python),$(if $(COMFYUI_PATH),,yes)),COMFYUI_PATH=.comfyui/ComfyUI-0.33.0 .venv-0.33.0/bin/python,$(PY))
thumbnails: setup
	$(NEWEST) scripts/thumbnails.py $(THUMBNAIL_ARGS)

clean:
	rm -rf .venv .venv-0.33.0 .comfyui .cache demo_out
