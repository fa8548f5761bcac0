PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
# `make run` needs the package and its `node` extra (the server: FastAPI, uvicorn); the dev
# extras (Playwright, matplotlib, ...) are for `make test` and the benches. The dev extras
# include `node`, so the dev stamp implies the run one (a superset).
RUN_STAMP := $(VENV)/.installed-run

.PHONY: run test browser compose faketime soak bench attack wan image image-test image-compose clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(RUN_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[node]'
	touch $(RUN_STAMP)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $(RUN_STAMP) $(STAMP)

run: $(RUN_STAMP)
	@test -f .cluster/genesis.json || $(BIN)/ledger cluster init .cluster --nodes 4 --types example
	$(BIN)/ledger cluster up .cluster

# The browser tests (tests/browser) need a chromium: Debian's /usr/bin/chromium, Playwright's
# own download, or LEDGER_CHROMIUM (tests/browser/chromium.py finds it). If there is none:
# as root with apt-get, install Debian's package; else try Playwright's download; else say
# what to run and fail. APT_GET and PLAYWRIGHT can be replaced for a dry run, e.g.
# `make browser LEDGER_CHROMIUM=/nonexistent APT_GET=false PLAYWRIGHT=false`.
APT_GET ?= apt-get
PLAYWRIGHT ?= $(BIN)/playwright
FIND_CHROMIUM := $(BIN)/python -m tests.browser.chromium

browser: $(STAMP)
	@$(FIND_CHROMIUM) >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make: installing Debian's chromium for the browser tests (apt-get)"; \
	    $(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq chromium; \
	  fi; \
	  $(FIND_CHROMIUM) >/dev/null || { \
	    echo "make: trying Playwright's own chromium download (playwright install chromium)"; \
	    $(PLAYWRIGHT) install chromium; \
	  }; \
	  $(FIND_CHROMIUM) >/dev/null || { \
	    $(BIN)/python -c 'from tests.browser.chromium import describe_missing as d; print("make test:", d())' >&2; \
	    exit 1; \
	  }; \
	}

# tests/integration/test_compose.py checks docker-compose.yml with `docker-compose config`:
# as root with apt-get, install Debian's package; else say what to run and fail.
compose:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make: installing Debian's docker-compose for the compose file's test (apt-get)"; \
	    $(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq docker-compose; \
	  fi; \
	  command -v docker-compose >/dev/null 2>&1 || { \
	    echo "make test: docker-compose is missing (it checks docker-compose.yml): install Debian's docker-compose package (apt-get install docker-compose)" >&2; \
	    exit 1; \
	  }; \
	}

# tests/wan/test_chaos.py skews one node's clock with libfaketime (Debian's faketime):
# as root with apt-get, install it; else say what to run and fail.
faketime:
	@ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make: installing Debian's faketime for the WAN chaos test's clock skew (apt-get)"; \
	    $(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq faketime; \
	  fi; \
	  ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || { \
	    echo "make test: libfaketime is missing (the WAN chaos test skews a clock with it): install Debian's faketime package (apt-get install faketime)" >&2; \
	    exit 1; \
	  }; \
	}

test: $(STAMP) browser compose faketime
	$(BIN)/ruff check ledger node tests examples
	$(BIN)/mypy
	$(BIN)/pytest -q -n auto

soak: $(STAMP)
	$(BIN)/python -m tests.sim.run --seeds 0:$(or $(SOAK_SEEDS),20000)
	$(BIN)/python -m tests.chaos.chaos --seconds $(or $(CHAOS_SECONDS),1800)

# openloop_bench: the open-loop latency-throughput curve (docs/performance.md, "Open-loop
# latency"); e.g. OPENLOOP_BENCH_ARGS="--seconds 8 --max-records 3000" for a short run.
bench: $(STAMP)
	$(BIN)/python -m tests.bench.audit_bench $(BENCH_ARGS)
	$(BIN)/python -m tests.bench.cluster_bench --sealed $(CLUSTER_BENCH_ARGS)
	$(BIN)/python -m tests.bench.openloop_bench $(OPENLOOP_BENCH_ARGS)

# The attacks of issue 11 against real clusters, ATTACK_SECONDS per window (default 20),
# a table on stdout and every figure in bench-results/attack.json; exits 1 on a miss.
attack: $(STAMP)
	$(BIN)/python -m tests.attack.run --seconds $(or $(ATTACK_SECONDS),20) \
		--out $(or $(ATTACK_OUT),bench-results/attack.json) $(ATTACK_ARGS)

# The WAN bed's long form (tests/wan, docs/wan.md): a 4-validator TLS cluster in network
# namespaces behind the userspace shaping switch, per one-way delay and loss, against
# loopback; recovery after a link down and a 2/2 split. Then chaos (seeded faults under load,
# one clock skewed) and Twins (validator 3's key in two nodes across a partition):
# tests/bench/wan_chaos.py, WAN_CHAOS_ARGS e.g. `--seed 7 --seconds 300`. Needs root (as CI runs).
wan: $(STAMP) faketime
	$(BIN)/python -m tests.bench.wan_bench $(WAN_ARGS)
	$(BIN)/python -m tests.bench.wan_chaos $(WAN_CHAOS_ARGS)

# The container image, built and run with podman (no Docker daemon; docs/deploy.md, "The
# container image"). Not part of `make test`: it needs root, podman and debootstrap (as root
# with apt-get, installed here), deb.debian.org and PyPI, and takes minutes. `make image`
# builds IMAGE (default localhost/ledger:0.1.0) on a stand-in base made with debootstrap, or
# on BASE (e.g. BASE=python:3.11-slim-bookworm where Docker Hub answers); `make image-test`
# then runs docker-compose.yml's 4 nodes from it (tests/image/run.py) and checks the record
# commits on all four, uid 10001, the health check and a clean stop.
image:
	@command -v podman >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make: installing Debian's podman and debootstrap for the image (apt-get)"; \
	    $(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq podman debootstrap; \
	  fi; \
	}
	tests/image/build.sh

image-test: $(STAMP) image
	$(BIN)/python -m tests.image.run

# The same checks with docker-compose.yml itself, started by podman-compose (installed from
# PyPI into its own environment, .venv/podman-compose: a tool, not a project dependency).
# It publishes ports 8000-8003 on this host.
PODMAN_COMPOSE := $(VENV)/podman-compose/bin/podman-compose
$(PODMAN_COMPOSE): $(BIN)/python
	$(PY) -m venv $(VENV)/podman-compose
	$(VENV)/podman-compose/bin/pip install -q podman-compose

image-compose: $(STAMP) image $(PODMAN_COMPOSE)
	$(BIN)/python -m tests.image.run --compose $(PODMAN_COMPOSE)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
