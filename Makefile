# The project's vocabulary: make demo, make test, make lint, make bench, make chaos, make install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-stamp
# the daemon and the stand-in backend alone: what `make demo` needs, without the test and lint tools
DEMO_STAMP := $(VENV)/.demo-stamp
PYDIRS := $(wildcard config metrics strategies optimizer testbed tests bench)

.PHONY: venv test lint bench chaos demo install clean debs docs contract

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet -e '.[test,lint]'
	touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet -e .
	touch $(DEMO_STAMP)

venv: $(STAMP)

# Debian tools the tests use (systemd-analyze, chromium, promtool, prometheus, alertmanager), installed when missing.
debs:
	@bash scripts/ensure-debs.sh

test: $(STAMP) debs
	$(PY) -m pytest -q -m "not slow and not contract"

lint: $(STAMP)
	$(VENV)/bin/ruff check $(PYDIRS)
	$(VENV)/bin/ruff format --check $(PYDIRS)
	$(VENV)/bin/mypy --strict config metrics strategies optimizer testbed tests

# Benchmarks: results in bench/results/*.json, summary spliced into docs/BENCHMARKS.md.
bench: $(STAMP)
	@bash scripts/ensure-debs.sh bench
	$(PY) -m bench.run

# The longer reliability runs (extended fuzzing, long soak) that do not fit in `make test`.
chaos: $(STAMP) debs
	$(PY) -m pytest -q -m slow
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-1000} $(PY) -m pytest -q -s tests/system/test_fuzz.py

# Contract checks against the real backend (docs/CONTRACT.md): CCTV_REAL_BACKEND and CCTV_REAL_DATABASE name it;
# without them every check is skipped with the reason.
contract: $(STAMP)
	$(PY) -m pytest -q -m contract tests/contract

demo: $(DEMO_STAMP)
	$(PY) -m testbed.demo

# System install (as root): own user, venv under /opt/cctv-optimizer, unit, /etc/cctv-optimizer/env, token.
install:
	bash systemd/install.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-data

# Regenerate the README's configuration reference from the settings (a test checks it is current).
docs: $(STAMP)
	$(PY) -m config.reference --write README.md
