# Two commands set everything up on a fresh machine:
#   make run    install into .venv and start the daemon with its defaults
#   make test   install into .venv and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

NODE_DIR := .cache/node

# Build back-ends print walls of deprecation notices about themselves; they say nothing
# about this project, so the installs keep quiet.
PIP := PYTHONWARNINGS=ignore $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: install install-run node-tools run test test-ray lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

# Byte-compiled once: shims and workers start faster, even under PYTHONDONTWRITEBYTECODE.
COMPILE := $(PY) -m compileall -q exai broker workers shim

# What running the daemon needs, and no more.
install-run: $(PY)
	$(PIP) -e .
	$(COMPILE)

# Everything the tests, linters and benchmarks need too.
install: $(PY)
	$(PIP) -e '.[test,dev]'
	$(COMPILE)

# Third-party MCP peers for the interop tests (server-everything, the Inspector CLI).
# Optional: without npm the tests that need them are skipped.
node-tools:
	@if [ -d $(NODE_DIR)/node_modules/@modelcontextprotocol/inspector ]; then :; \
	elif command -v npm >/dev/null 2>&1; then \
		mkdir -p $(NODE_DIR) && cd $(NODE_DIR) && \
		HOME="$$(pwd)" npm install --no-audit --no-fund --silent \
			@modelcontextprotocol/server-everything @modelcontextprotocol/inspector@2.12.0 @modelcontextprotocol/sdk \
		|| echo "npm install failed: interop tests will be skipped"; \
	else echo "npm not found: interop tests will be skipped"; fi

run: install-run
	$(PY) -m broker --workers 4

# The soak and fuzz tests load the whole machine: they run after the rest, one at a
# time, so that neither they nor the others are measured against each other's load.
test: install node-tools
	$(PY) -m pytest -n 2 --dist loadfile -m "not ray and not slow"
	$(PY) -m pytest -m "slow and not ray" -p no:cacheprovider
	@$(MAKE) --no-print-directory test-ray

# The Ray pool's tests need the ray extra and run in a network namespace with only
# loopback up, so nothing Ray starts can reach past this machine.
test-ray: install
	$(PIP) -e '.[ray]'
	@if unshare -n true 2>/dev/null && command -v ip >/dev/null; then \
		unshare -n sh -c 'ip link set lo up && exec $(PY) -m pytest -m ray -p no:cacheprovider'; \
	else echo "no unshare -n here (it needs root): the ray tests are skipped"; fi

lint: install
	$(PY) -m ruff check exai broker workers shim tests benchmarks
	$(PY) -m mypy

bench: install
	$(PY) -m benchmarks.load

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
