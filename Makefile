# fedlab: the two commands are `make demo` and `make test` (see README.md).
# Every target sets up what it needs first (scripts/setup.sh is idempotent).

VENV := .venv
BIN := $(VENV)/bin

.PHONY: help demo test lint format bench setup constraints

help:
	@echo "make demo         set up .venv (no servers), run 'fedlab demo', say how to open JupyterLab"
	@echo "make test         the test command: bash .ci/run (setup, servers, ruff, pytest, notebooks)"
	@echo "make lint         ruff check + ruff format --check"
	@echo "make format       ruff format + ruff check --fix"
	@echo "make bench        TPC-H SF 0.1 over SQLite + PostgreSQL + MariaDB (fedlab bench --sf 0.1)"
	@echo "make setup        scripts/setup.sh (venv, packages, PostgreSQL and MariaDB)"
	@echo "make constraints  re-pin constraints.txt from what .venv has installed"

demo:
	bash scripts/setup.sh --no-servers
	$(BIN)/fedlab demo
	@echo
	@echo "Open the notebooks in JupyterLab:"
	@echo "    $(BIN)/jupyter lab notebooks/"
	@echo "(as root add --allow-root; on a machine without a browser add --no-browser"
	@echo " and open the http://127.0.0.1:8888/lab?token=... address it prints)"

test:
	bash .ci/run

lint:
	bash scripts/setup.sh --no-servers
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	bash scripts/setup.sh --no-servers
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench:
	bash scripts/setup.sh
	$(BIN)/fedlab bench --sf 0.1

setup:
	bash scripts/setup.sh

constraints:
	{ grep '^#' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -vi '^fedlab=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
