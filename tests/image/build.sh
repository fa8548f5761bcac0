#!/bin/sh
# Build the container image with podman: no Docker daemon, no Docker Hub (docs/deploy.md,
# "The container image"). `make image` runs this; `make image-test` runs it, then
# tests/image/run.py.
#
# BASE (default: the local stand-in below) is the Dockerfile's base. With BASE unset, and no
# image named $STAND_IN yet (or STAND_IN_REBUILD=1), a stand-in for python:3.11-slim-bookworm is
# made from Debian's own packages: debootstrap's minbase of bookworm with python3 (3.11),
# python3-venv and ca-certificates, docs, man pages, locales and apt's lists removed, imported
# as one layer. Where Docker Hub answers, BASE=python:3.11-slim-bookworm builds the image
# exactly as `docker build .` does.
#
# Needs root (debootstrap, and rootful podman's storage), podman, debootstrap, and network to
# deb.debian.org and PyPI. Environment: IMAGE (the tag, default localhost/ledger:0.1.0),
# DEBIAN_MIRROR, BUILD_CA_BUNDLE (see below), PODMAN (default podman).
set -eu
cd "$(dirname "$0")/../.."

PODMAN=${PODMAN:-podman}
IMAGE=${IMAGE:-localhost/ledger:0.1.0}
STAND_IN=localhost/python-base:3.11-bookworm
BASE=${BASE:-$STAND_IN}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# podman's defaults for a root container (nofile and nproc 1048576) exceed the hard limits of
# some hosts (this one: nproc 96365, and runc's setrlimit is refused without
# CAP_SYS_RESOURCE): every container gets limits far above what a node uses, below those.
ULIMITS="--ulimit nofile=16384:16384 --ulimit nproc=4096:4096"

die() { echo "tests/image/build.sh: $*" >&2; exit 1; }
command -v "$PODMAN" >/dev/null 2>&1 || die "podman is missing (apt-get install podman)"

if [ "$BASE" = "$STAND_IN" ] && { [ "${STAND_IN_REBUILD:-0}" = 1 ] || ! "$PODMAN" image exists "$STAND_IN"; }; then
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap is missing (apt-get install debootstrap)"
    [ "$(id -u)" = 0 ] || die "the stand-in base needs root (debootstrap)"
    rootfs=$(mktemp -d /var/tmp/ledger-base.XXXXXX)
    chmod 755 "$rootfs"  # it becomes the image's /: mktemp's 0700 would lock uid 10001 out
    trap 'rm -rf "$rootfs"' EXIT INT TERM
    echo "build.sh: debootstrap bookworm (minbase + python3, python3-venv, ca-certificates) from $DEBIAN_MIRROR"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$DEBIAN_MIRROR" >"$rootfs.log" 2>&1 \
        || { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; die "debootstrap failed"; }
    rm -f "$rootfs.log"
    # what an image needs no copy of: apt's downloads and lists, docs (the copyright files
    # stay), man and info pages, translations, logs
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
    find "$rootfs"/usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
    tar --numeric-owner -C "$rootfs" -c . | "$PODMAN" import \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$STAND_IN" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT INT TERM
    # shellcheck disable=SC2086  # ULIMITS is a list of words
    echo "build.sh: stand-in base $STAND_IN: $("$PODMAN" run --rm $ULIMITS "$STAND_IN" python3 -V)"
fi

# Some networks (this one) re-sign TLS with their own CA, which the host trusts and a fresh
# base does not: the host's bundle is bind-mounted over the base's for the RUN steps only
# (Debian's pip reads /etc/ssl/certs/ca-certificates.crt); nothing of it enters the image.
# BUILD_CA_BUNDLE= (empty) turns this off.
CA=${BUILD_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
CA_MOUNT=""
if [ -n "$CA" ] && [ -f "$CA" ]; then
    CA_MOUNT="--volume $CA:/etc/ssl/certs/ca-certificates.crt:ro"
fi

# --format docker: an OCI image config has no HEALTHCHECK (podman drops it with a warning).
# --network host: pip reaches PyPI without a bridge or NAT rule being made for the build.
echo "build.sh: podman build $IMAGE from $BASE"
# shellcheck disable=SC2086  # ULIMITS and CA_MOUNT are lists of words
"$PODMAN" build --format docker --network host $ULIMITS $CA_MOUNT \
    --build-arg "BASE=$BASE" --tag "$IMAGE" .
"$PODMAN" images "$IMAGE"
