# One ledger node (docs/deploy.md#the-container-image).
#   docker build -t ledger:0.1.0 .
#   podman build --format docker -t ledger:0.1.0 .   (an OCI-format image has no HEALTHCHECK)
#   make image     (podman on a local Debian base, where Docker Hub is out of reach)
# Configuration comes from a folder made by `ledger cluster init` (docker-compose.yml mounts
# it read-only at /cluster; Kubernetes mounts a ConfigMap and a Secret, see `--k8s`). The
# store lives in the /data volume. Runs as uid/gid 10001, never as root.
#
# Volumes:  /data  the SQLite store and the signing state (point config "store" or
#                  LEDGER_STORE at /data/chain.db)
# Ports:    8000   HTTP API (and /healthz, /metrics)     8100   peer links (P2P)
# Env:      LEDGER_API_LISTEN, LEDGER_P2P_LISTEN, LEDGER_PEERS, LEDGER_FOLLOW, LEDGER_STORE,
#           LEDGER_KEY_PASSPHRASE (node/config.py), LEDGER_HEALTH_URL (the health check's URL)

# The base of both stages: the official python image by default. Any Debian bookworm with
# python3 (3.11), its venv module and ca-certificates will do (`python3` is called, never
# `python`, which Debian's own package does not install): tests/image/build.sh makes such a
# stand-in where Docker Hub cannot be reached, and builds with --build-arg BASE=... .
ARG BASE=python:3.11-slim-bookworm

# -- build: install the package and the server into a virtual environment ------------------
FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ledger ./ledger
COPY node ./node
# The project itself: its dependencies' versions are bounded in pyproject.toml. Then pip and
# setuptools leave the environment (about 25 MB): nothing runs them in the image.
# hadolint ignore=DL3013
RUN python3 -m venv /opt/ledger && /opt/ledger/bin/pip install --no-cache-dir '.[node]' \
    && /opt/ledger/bin/python -m pip uninstall --yes --quiet pip setuptools

# -- run: the virtual environment on a clean base, no compiler, no build files ---------------
FROM ${BASE}
COPY --from=build /opt/ledger /opt/ledger
ENV PATH=/opt/ledger/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LEDGER_HEALTH_URL=http://127.0.0.1:8000/healthz
RUN groupadd --system --gid 10001 ledger \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin ledger \
    && mkdir -p /data && chown 10001:10001 /data
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000 8100
# 200 from /healthz: the store is open and the API serves (it skips every request limit).
# An https API (--tls) is checked without verifying its certificate: it is this container's.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request as u; u.urlopen(os.environ['LEDGER_HEALTH_URL'], timeout=2, context=ssl._create_unverified_context())"]
ENTRYPOINT ["ledger"]
CMD ["--help"]
