# Two commands for a fresh machine: `make demo` and `make test`. Each sets itself up.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-slow bench lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	DATABASE_URL=$$(scripts/ensure-postgres.sh) $(BIN)/broadcaster demo

test: $(STAMP)
	-scripts/ensure-promtool.sh >/dev/null 2>&1
	-scripts/ensure-chromium.sh >/dev/null 2>&1
	DATABASE_URL=$$(scripts/ensure-postgres.sh | sed 's#/[^/]*$$#/postgres#') $(BIN)/python -m pytest -q
	DATABASE_URL=$$(scripts/ensure-postgres.sh | sed 's#/[^/]*$$#/postgres#') $(BIN)/python -m pytest -q -m slow; \
	  rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

bench: $(STAMP)
	DATABASE_URL=$$(scripts/ensure-postgres.sh) $(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check .
