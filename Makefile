# The project's vocabulary: make demo, make test, make lint, make bench.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-stamp

.PHONY: venv install test lint bench demo clean debs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test,lint]'
	touch $(STAMP)

venv install: $(STAMP)

# Debian tools some tests use (systemd-analyze); installed when missing, as root.
debs:
	@./scripts/ensure-debs.sh

test: $(STAMP) debs
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check $(wildcard config metrics strategies optimizer testbed tests bench)
	$(VENV)/bin/ruff format --check $(wildcard config metrics strategies optimizer testbed tests bench)
	$(VENV)/bin/mypy --strict config metrics strategies optimizer

bench: $(STAMP)
	@echo "make bench: the benchmark suite is not built yet (see the performance issue); nothing was measured."

demo: $(STAMP)
	$(PY) -m testbed.demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
