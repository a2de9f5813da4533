# Two commands a fresh machine needs: `make demo` and `make test`.
# Both build .venv on first use; torch is pinned by constraints.txt to the local CPU build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck browser bench bench-quick mutation mutation-scores clean

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

# The HTML report's browser tests drive Debian's chromium: installed here where we can (root
# with apt-get); elsewhere those tests skip and say what is missing.
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	fi

test: lint typecheck browser
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
	$(MAKE) --no-print-directory mutation-scores

# Per-module counts from mutmut's cache in mutants/ (the score: docs/mutation.md)
mutation-scores:
	@$(BIN)/python -c "import json, glob, collections; \
	status = {1: 'killed', 3: 'killed', 0: 'survived', 36: 'timeout', 24: 'timeout', -24: 'timeout', 152: 'timeout', 255: 'timeout', 5: 'no tests', 33: 'no tests', None: 'not run'}; \
	[print(path.split('src/', 1)[1][:-5], dict(collections.Counter(status.get(code, 'other') \
	for code in json.load(open(path))['exit_code_by_key'].values()))) \
	for path in sorted(glob.glob('mutants/src/**/*.py.meta', recursive=True))]"

clean:
	rm -rf $(VENV) mutants build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
