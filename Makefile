# Set-up and entry points. Each target creates and fills .venv on first use.
# torch is pinned to 2.13.0, the CPU build; any other spec pulls a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: demo bench test lint clean-venv

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[export,gguf,bench,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m shadow_edge.models.demo

# Needs `make demo` first; run it on a quiet machine.
bench: $(STAMP)
	$(PY) -m shadow_edge.models.bench_demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
