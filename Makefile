# Two commands set everything up on a fresh machine: `make run` and `make test`.
# Each bootstraps .venv itself (scripts/bootstrap.sh; fast when already done).

VENV := .venv
BIN := $(VENV)/bin
TINY := var/tiny-model

.PHONY: run test test-unit test-e2e test-chaos test-lowest test-fedora lint docs format check-packaging bootstrap engine tiny-model clean

run: engine tiny-model
	@scripts/run-demo.sh

# The fast suites (no vLLM, no timing bounds over whole processes) run on TEST_WORKERS
# processes (pytest-xdist; TEST_WORKERS=4 is faster on 2 cores, see docs/testing.md); the
# ops, chaos, fleet and e2e suites, which start real processes and measure bounds, run one
# test at a time after them.
TEST_WORKERS ?= 2
test: engine
	$(BIN)/python -m pytest -n $(TEST_WORKERS) neuron/tests cortex/tests tests/contract $(PYTEST_ARGS)
	$(BIN)/python -m pytest tests/ops tests/chaos tests/fleet tests/e2e $(PYTEST_ARGS)

test-unit: bootstrap
	$(BIN)/python -m pytest neuron/tests cortex/tests $(PYTEST_ARGS)

test-e2e: engine
	$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

# A real cortex process in front of scripted bad neurons, hostile clients and thousands of
# connections (tests/chaos/README.md); no vLLM. Under 4 minutes on a 2-core machine.
# `make test` runs it too; this target runs it alone.
test-chaos: bootstrap
	$(BIN)/python -m pytest tests/chaos $(PYTEST_ARGS)

# cortex's and neuron's fast tests on the lowest version of each dependency they accept.
test-lowest:
	@scripts/test-lowest.sh -- $(PYTEST_ARGS)

# cortex's and neuron's fast tests on the versions Fedora 43 ships (packaging/fedora43-constraints.txt),
# in .venv-fedora/<python version>; PYTHON=python3.14 for Fedora 43's own Python.
test-fedora:
	@scripts/test-fedora.sh $(PYTEST_ARGS)

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy neuron/src cortex/src

# Needs rpm, rpmlint, systemd and firewalld tools, shellcheck, node and curl: .ci/tools.sh
# installs from Debian exactly those that are missing (`.ci/tools.sh --dry-run` says which).
# Builds and installs the binary RPMs with ../shared/rpm-shim (or $$RPM_SHIM); see packaging/README.md.
check-packaging: bootstrap
	@packaging/check.sh

# The docs site (mkdocs.yml, docs/) into site/, with --strict: a broken link or anchor fails it
# (scripts/docs.sh also proves that). Its own venv, .venv-docs, from requirements-docs.txt.
docs:
	@scripts/docs.sh

format: bootstrap
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bootstrap:
	@scripts/bootstrap.sh dev

engine:
	@scripts/bootstrap.sh engine

tiny-model: engine
	@$(BIN)/python scripts/make_tiny_model.py $(TINY)

clean:
	rm -rf $(VENV) .venv-lowest .venv-fedora .venv-docs site var .mypy_cache .ruff_cache .pytest_cache
