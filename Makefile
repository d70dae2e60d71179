# The README's two quick-start commands are `make demo` and `make test`; both set up first.
PY := .venv/bin/python

.PHONY: setup test demo clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -c tests/pytest.ini tests $(PYTEST_ARGS)

demo: setup
	$(PY) scripts/demo.py $(DEMO_ARGS)

clean:
	rm -rf .venv .comfyui .cache demo_out
