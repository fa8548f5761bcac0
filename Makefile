PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
# `make run` needs only the package itself; the dev extras (Playwright, matplotlib, ...) are
# for `make test` and the benches. The dev stamp implies the run one (a superset).
RUN_STAMP := $(VENV)/.installed-run

.PHONY: run test soak bench attack clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(RUN_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $(RUN_STAMP)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $(RUN_STAMP) $(STAMP)

run: $(RUN_STAMP)
	@test -f .cluster/genesis.json || $(BIN)/ledger cluster init .cluster --nodes 4
	$(BIN)/ledger cluster up .cluster

test: $(STAMP)
	$(BIN)/ruff check ledger node tests examples
	$(BIN)/mypy
	$(BIN)/pytest -q -n auto

soak: $(STAMP)
	$(BIN)/python -m tests.sim.run --seeds 0:$(or $(SOAK_SEEDS),20000)
	$(BIN)/python -m tests.chaos.chaos --seconds $(or $(CHAOS_SECONDS),1800)

bench: $(STAMP)
	$(BIN)/python -m tests.bench.audit_bench $(BENCH_ARGS)
	$(BIN)/python -m tests.bench.cluster_bench $(CLUSTER_BENCH_ARGS)

# The attacks of issue 11 against real clusters, ATTACK_SECONDS per window (default 20),
# a table on stdout and every figure in bench-results/attack.json; exits 1 on a miss.
attack: $(STAMP)
	$(BIN)/python -m tests.attack.run --seconds $(or $(ATTACK_SECONDS),20) \
		--out $(or $(ATTACK_OUT),bench-results/attack.json) $(ATTACK_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
