# The README's two quick-start commands are `make demo` and `make test`; both set up first.
PY := .venv/bin/python

.PHONY: setup test demo bench clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -c tests/pytest.ini tests $(PYTEST_ARGS)

demo: setup
	$(PY) scripts/demo.py $(DEMO_ARGS)

# Speed and memory tables (minutes; not run by CI): prints them, draws benchmarks/scaling.png and
# writes the tables into benchmarks/RESULTS.md.
bench: setup
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf .venv .comfyui .cache demo_out
