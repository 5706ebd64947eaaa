# Quick start: `make train` runs the main job, `make test` runs the tests.
# Both create .venv and install the project from pyproject.toml on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.install-stamp
WORKDIR ?= runs/tiny
ARGS    ?=

.PHONY: install train test bench clean

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

clean:
	rm -rf $(VENV) runs
