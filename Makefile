# Two commands (DESIGN.md §2): `make run` serves the portal at http://127.0.0.1:5000, `make test`
# runs the suite. Without DATABASE_URL / TEST_DATABASE_URL both start an embedded PostgreSQL with
# its data under instance/ (see portal/supervise.py). Extra arguments: make test ARGS="-k ledger -x".

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HTMX := portal/static/vendor/htmx.min.js
SWAGGER_UI := portal/static/vendor/swagger-ui
CHARTJS := portal/static/vendor/chartjs
ARGS ?=

.PHONY: venv assets run dev test lint audit fmt clean bench

# Python dependencies: reinstalled only when pyproject.toml changes.
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo "make: setting up the Python virtualenv in $(VENV) (first run only, or after pyproject.toml changes)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "make: upgrading pip and setuptools (under a minute)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip setuptools
	@echo "make: installing Portal and its dependencies with pip (about 4 minutes on a first run, quiet meanwhile)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@echo "make: Python dependencies installed"
	touch $@

# Front-end assets, pinned in package-lock.json and served from portal/static/vendor/.
assets: $(HTMX) $(SWAGGER_UI)/swagger-ui-bundle.js $(CHARTJS)/chart.umd.min.js

node_modules/.installed: package.json package-lock.json
	@echo "make: installing the pinned front-end assets with npm (under a minute)"
	npm install --no-audit --no-fund
	touch $@

$(HTMX): node_modules/.installed
	mkdir -p $(@D)
	cp node_modules/htmx.org/dist/htmx.min.js $@

# Swagger UI for /api/docs: the bundle, its stylesheet and its licence, nothing else.
$(SWAGGER_UI)/swagger-ui-bundle.js: node_modules/.installed
	mkdir -p $(@D)
	cp $(addprefix node_modules/swagger-ui-dist/,swagger-ui.css LICENSE NOTICE) $(@D)/
	cp node_modules/swagger-ui-dist/swagger-ui-bundle.js $@

# Chart.js for the wallet's monthly chart: the UMD bundle and its licence (no source map).
$(CHARTJS)/chart.umd.min.js: node_modules/.installed
	mkdir -p $(@D)
	cp node_modules/chart.js/LICENSE.md $(@D)/
	sed '/^\/\/# sourceMappingURL=/d' node_modules/chart.js/dist/chart.umd.min.js > $@

run: venv assets
	$(BIN)/python -m portal.supervise run $(ARGS)

dev: venv assets
	$(BIN)/python -m portal.supervise dev $(ARGS)

test: venv assets
	$(BIN)/ruff check portal tests
	$(BIN)/lint-imports
	$(BIN)/python -m portal.supervise test $(ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# bandit over portal/ at medium severity and above (each `# nosec B608` marks SQL whose
# interpolated parts are constant column lists or table/CTE names; values are always bound),
# then pip-audit over the installed packages, saying which it could not check (.ci/pip_audit.py).
audit: venv
	$(BIN)/bandit -q -r portal -ll
	$(BIN)/python .ci/pip_audit.py

# Benchmarks (bench/run.py): Portal under wrk beside its own baselines (pgbench, a bare Flask
# app) in one bounded run, on its own embedded PostgreSQL and Redis; appends to bench/RESULTS.md.
# Needs wrk and redis-server (Debian packages). Quick: make bench ARGS="--quick".
bench: venv
	$(BIN)/python bench/run.py --record $(ARGS)

fmt: venv
	$(BIN)/ruff check --select I --fix .
	$(BIN)/ruff format .

# Keeps instance/: the development database and the development secrets that encrypt its data.
clean:
	rm -rf $(VENV) node_modules $(HTMX) $(SWAGGER_UI) $(CHARTJS) build test-artifacts *.egg-info
	rm -rf .pytest_cache .ruff_cache .mypy_cache .import_linter_cache
	find portal tests -name __pycache__ -type d -prune -exec rm -rf {} +
