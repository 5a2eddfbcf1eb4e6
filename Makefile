# Two commands set everything up on a bare machine with Python 3.11:
#   make demo   virtualenv, install, migrate SQLite, seed the demo shop, train, serve
#   make test   the whole test suite (PostgreSQL and Redis used when reachable)
#   make lint   ruff: formatting and lint rules (CI runs it before the tests)
#   make benchmarks   every benchmark's --smoke run (seconds each; reports under $TMPDIR)
#   make docs   the documentation site (MkDocs, strict: broken links fail) into site/
#   make fresh-install   docs/install.md followed on a new project in a clean virtualenv
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install demo test test-fast test-ml lint docs fresh-install benchmarks clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

demo: install
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py seed_demo --if-empty
	$(BIN)/python manage.py recommender_train --if-no-active --max-seconds 120
	$(BIN)/python manage.py rundemo --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest

# The model code's tests alone: no Django settings, no database, no Redis.
test-ml: install
	$(BIN)/python -m pytest tests/ml -p no:django

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not browser" -x

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

docs: install
	$(BIN)/mkdocs build --strict --quiet

# A new Django project, a clean virtualenv, this package's wheel and the commands and code
# of docs/install.md read from the page itself (minutes: it installs torch from disk).
fresh-install: install
	tests/fresh_install/run.sh

# Tiny sizes through each benchmark's real code, to see that they still run. The real runs
# (docs/benchmarks.md) take minutes each and write benchmarks/results/.
benchmarks: install
	for name in quality train_step reasons ingest serving soak; do \
	  $(BIN)/python -m benchmarks.$$name --smoke || exit 1; \
	done

clean:
	rm -rf var .pytest_cache site
