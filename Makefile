# Two commands set everything up on a fresh machine:
#   make run    install into .venv and start the daemon with its defaults
#   make test   install into .venv and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install run test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

install: $(PY)
	$(PY) -m pip install --quiet -e '.[test,dev]' --config-settings editable_mode=compat
	@# Byte-compile once: shims and workers start faster, even under PYTHONDONTWRITEBYTECODE.
	$(PY) -m compileall -q broker workers shim

run: install
	$(PY) -m broker --workers 4

test: install
	$(PY) -m pytest

lint: install
	$(PY) -m ruff check broker workers shim tests benchmarks
	$(PY) -m mypy

bench: install
	$(PY) -m benchmarks.load

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
