# Two commands a fresh machine needs: `make demo` and `make test`.
# Both build .venv on first use; torch is pinned by constraints.txt to the local CPU build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench bench-quick mutation clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/statevault demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

# Mutation testing (docs/mutation.md), not part of `make test`: tens of minutes. One module at a
# time, e.g. `make mutation MODULE=fileformat/table.py`; without MODULE, every module below.
MUTATION_MODULES := fileformat/container.py fileformat/table.py fileformat/checksums.py \
	fileformat/tree.py fileformat/metadata.py fileformat/dtypes.py \
	loading/keymap.py loading/diagnose.py loading/shape_causes.py
MODULE ?= $(MUTATION_MODULES)
MUTATION_CHILDREN ?= 2

mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[mutation]'
	@for module in $(MODULE); do \
		name=statevault.$$(echo $$module | sed 's|\.py$$||; s|/|.|g'); \
		echo "== $$module ($$name)"; \
		$(BIN)/mutmut run --max-children $(MUTATION_CHILDREN) "$$name.*" || exit 1; \
	done
	$(BIN)/mutmut results

clean:
	rm -rf $(VENV) mutants build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
