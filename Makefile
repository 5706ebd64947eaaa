# Quick start: `make train` runs the main job, `make test` runs the tests.
# Both create .venv and install the project from pyproject.toml on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.install-stamp
WORKDIR ?= runs/tiny
ARGS    ?=

.PHONY: install train test docs docs-serve bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/signflax train --workdir $(WORKDIR) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --durations=15 $(ARGS)

# The docs site (mkdocs + Material + mkdocstrings): `make docs` builds it into site/,
# `make docs-serve` serves it at http://127.0.0.1:8000 and rebuilds on every edit.
DOCS_STAMP := $(VENV)/.docs-stamp

$(DOCS_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/python -m mkdocs build --strict

docs-serve: $(DOCS_STAMP)
	$(BIN)/python -m mkdocs serve

clean:
	rm -rf $(VENV) runs site
