# The two commands of the README: `make dev` runs the broker on embedded defaults,
# `make test` runs the whole test suite. Both set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: dev test install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.installed
	$(VENV)/bin/broker dev

test: $(VENV)/.installed
	$(VENV)/bin/ruff check broker providers tests bench
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .broker .pytest_cache
