# `make run`: set up and run the mirror (embedded registry + web service + sync).
# `make test`: set up and run the whole test suite.
VENV   ?= .venv
PYTHON ?= python3
STAMP  := $(VENV)/.installed
MIRROR_CONFIG ?= $(CURDIR)/mirror.yaml
BIND   ?= 0.0.0.0:8080

.PHONY: run test lint sysdeps venv bench clean

sysdeps:
	@bash scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check --upgrade pip
	@$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

venv: $(STAMP)

run: sysdeps venv
	@MIRROR_CONFIG=$(MIRROR_CONFIG) BIND=$(BIND) VENV=$(VENV) bash scripts/run.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy mirror

test: sysdeps venv lint
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

# `make bench`: the full bench (issue 7's table); `make bench BENCH_ARGS=--quick` the quick one.
bench: sysdeps venv
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
