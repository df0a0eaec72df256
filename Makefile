# Two entry points, each installing what it needs into .venv:
#   make demo   the main job: trains tiny models on a synthetic task and compares the methods
#   make test   the test suite (lint + pytest; slow tests: make test-slow; on the oldest transformers: make test-oldest)
# TORCH pins the CPU build that lies on the project's CPU machines; on a GPU machine use e.g. TORCH=torch.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
# The oldest transformers the project supports (pyproject: transformers>=4.56,<6); `make test-oldest` runs the suite on it.
TRANSFORMERS_OLDEST ?= transformers==4.56.2
OLDEST_VENV ?= .venv-oldest
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-oldest test-slow lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/latentcot demo

test: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(PY) -m pytest -q

# The default suite in a second venv holding the oldest supported transformers.
test-oldest:
	test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -q --disable-pip-version-check $(TORCH)
	$(OLDEST_VENV)/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]" "$(TRANSFORMERS_OLDEST)"
	$(OLDEST_VENV)/bin/python -c "import transformers; print('transformers', transformers.__version__)"
	$(OLDEST_VENV)/bin/python -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) bench/decode.py
	$(PY) bench/soft_step.py
	$(PY) bench/coconut.py
	$(PY) bench/softcot.py
	$(PY) bench/throughput.py
	$(PY) bench/streams.py
	$(PY) bench/prepack.py
	$(PY) bench/attention.py
	$(PY) bench/profile_step.py

clean:
	rm -rf $(VENV) $(OLDEST_VENV) runs
