# The two set-up commands: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# CPU machines take the CPU build of torch that lies on disk; override on other machines.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test lint clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m orthoasr demo

# Two pytest workers (pytest-xdist) for the CI machine's two cores, each taking whole test
# files (--dist loadfile: a file's tests share module-level state, e.g. test_train.py's
# trained runs). pytest exits 5 when it collects no test: that is a failure here, said plainly.
TEST_WORKERS ?= 2
test: $(VENV)/.installed
	$(PY) -m pytest -q --benchmark-disable -n $(TEST_WORKERS) --dist loadfile tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; fi; exit $$rc

lint: $(VENV)/.installed
	$(PY) -m pip install -q ruff && $(VENV)/bin/ruff check kernels orthoasr bench tests experiments

clean:
	rm -rf $(VENV) build *.egg-info
