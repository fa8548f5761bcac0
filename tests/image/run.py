"""Run the container image as a 4-validator cluster with podman and check what the Dockerfile
promises (docs/deploy.md, "The container image"). Outside `make test`: `make image-test`
builds the image (tests/image/build.sh) and runs this; it needs root and podman.

    python -m tests.image.run [--image localhost/ledger:0.1.0] [--keep]

Each node's command, environment and volume targets are docker-compose.yml's, so this runs
what `docker compose up` would, on a podman network of its own (``--internal``: no NAT, no
published port; its DNS resolves ``node0`` ... ``node3`` as LEDGER_PEERS names them). The
`cluster init` folder is mounted read-only at /cluster, owned by uid 10001 as the docs say;
each node's /data is a named volume. Checked, each a failure (exit 1) if wrong:

- every container runs as uid/gid 10001 (inside, and as the host sees its process);
- the image's own HEALTHCHECK (`podman healthcheck run`) passes on every node, and fails in a
  container of the image whose API does not answer;
- a record submitted over HTTP to node1 (`ledger submit --wait`) is committed, at the same
  height, on all four;
- a node stopped by `podman stop` (SIGTERM) exits 0, and restarted on its volume still holds
  the record and turns healthy;
- the image's size (printed; not a pass/fail figure).

With ``--compose PODMAN_COMPOSE`` the nodes are started by podman-compose on
docker-compose.yml itself (plus an override naming the built image and the ulimits that
build.sh explains); it publishes ports 8000-8003 on the host, refuses to start if one is
taken, and the client reaches 127.0.0.1:800i as a user's would (`make image-compose`).

Everything made (containers, volumes, network, folder) is removed at the end, also on failure
or Ctrl-C, unless --keep. (netavark itself leaves its empty base iptables chains behind once
ports were published: podman's own behaviour, harmless, see docs/deploy.md.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from node.cluster import init_cluster

ROOT = Path(__file__).resolve().parents[2]
UID = 10001
NODES = 4
# build.sh says why: podman's default limits for root exceed some hosts' hard limits
ULIMITS = ["--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096"]


class Failed(Exception):
    """A check did not hold."""


def podman(*args: str, check: bool = True, timeout: float = 120) -> str:
    res = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise Failed(f"podman {' '.join(args)}: exit {res.returncode}: {res.stderr.strip()}")
    return res.stdout.strip()


def compose_services() -> dict[str, dict[str, Any]]:
    """docker-compose.yml's node services: command, environment, container-side volumes."""
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services: dict[str, dict[str, Any]] = doc["services"]
    assert sorted(services) == [f"node{i}" for i in range(NODES)], sorted(services)
    return services


def healthy(container: str) -> bool:
    res = subprocess.run(["podman", "healthcheck", "run", container], capture_output=True,
                         text=True, timeout=30)
    return res.returncode == 0


def wait_until(what: str, test: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if test():
            return
        time.sleep(1)
    raise Failed(f"{what}: not within {seconds:.0f} s")


class Run:
    def __init__(self, image: str, keep: bool, compose: str | None) -> None:
        self.image = image
        self.keep = keep
        self.tag = f"ledger-image-{os.getpid()}"
        self.net = self.tag
        self.names = [f"{self.tag}-node{i}" for i in range(NODES)]
        self.containers: list[str] = []
        self.volumes: list[str] = []
        self.made_net = False
        self.dir = Path(tempfile.mkdtemp(prefix="ledger-image-"))
        self.report: dict[str, Any] = {"image": image}
        self.compose: list[str] | None = None
        self.composed = False
        if compose:
            # docker-compose.yml as it is, plus: the image already built (compose would
            # build with `podman build .`, without build.sh's base and flags) and the ulimits
            self.compose = [compose, "--project-name", self.tag, "--file",
                            str(ROOT / "docker-compose.yml"), "--file",
                            str(self.dir / "override.yml")]
            self.report["mode"] = f"podman-compose ({compose}) on docker-compose.yml"
        else:
            self.report["mode"] = "podman run, docker-compose.yml's settings, internal network"

    def name(self, i: int) -> str:
        return self.names[i]

    def start(self, i: int, svc: dict[str, Any]) -> None:
        name, volume = self.name(i), f"{self.tag}-node{i}-data"
        env = dict(svc["environment"])
        api_port = env["LEDGER_API_LISTEN"].rsplit(":", 1)[1]
        # the image's HEALTHCHECK asks LEDGER_HEALTH_URL (default port 8000): node i's API is
        # on 800i (compose checks it with its own `healthcheck:` instead)
        env["LEDGER_HEALTH_URL"] = f"http://127.0.0.1:{api_port}/healthz"
        mounts = []
        for v in svc["volumes"]:
            # SOURCE:TARGET[:MODE]; SOURCE may hold ':' (${LEDGER_CLUSTER_DIR:-./.cluster})
            parts = v.split(":")
            target = parts[-2] if parts[-1] in ("ro", "rw") else parts[-1]
            source = v[:v.rindex(":" + target)]
            if target == "/cluster":
                mounts += ["--volume", f"{self.dir / 'cluster'}:/cluster:ro"]
            else:
                assert target == "/data" and source == f"node{i}-data", v
                mounts += ["--volume", f"{volume}:/data"]
        self.containers.append(name)
        self.volumes.append(volume)
        podman("run", "--detach", "--name", name, "--network", self.net,
               "--network-alias", f"node{i}", *ULIMITS, *mounts,
               *[a for k, val in env.items() for a in ("--env", f"{k}={val}")],
               self.image, *svc["command"])

    def url(self, i: int, port: str) -> str:
        """Node i's API as this host reaches it: compose publishes 800i on the host; the
        internal network's bridge reaches the container's address."""
        if self.compose:
            return f"http://127.0.0.1:{port}"
        ip = podman("inspect", "--format",
                    f"{{{{(index .NetworkSettings.Networks \"{self.net}\").IPAddress}}}}",
                    self.name(i))
        return f"http://{ip}:{port}"

    def compose_up(self, services: dict[str, dict[str, Any]], ports: list[str]) -> None:
        assert self.compose
        for port in ports:  # compose publishes them on the host: refuse to collide
            with socket.socket() as s:
                try:
                    s.bind(("0.0.0.0", int(port)))
                except OSError as exc:
                    raise Failed(f"port {port} is taken on this host ({exc}): compose "
                                 "publishes 8000-8003") from exc
        override = {"services": {
            name: {"image": self.image, "ulimits": {"nofile": 16384, "nproc": 4096}}
            for name in services}}
        (self.dir / "override.yml").write_text(yaml.safe_dump(override))
        env = {**os.environ, "LEDGER_CLUSTER_DIR": str(self.dir / "cluster")}
        self.composed = True
        res = subprocess.run([*self.compose, "up", "--detach"], capture_output=True,
                             text=True, timeout=300, env=env)
        if res.returncode != 0:
            raise Failed(f"podman-compose up: exit {res.returncode}: {res.stderr[-2000:]}")
        rows = podman("ps", "--all", "--filter", f"label=com.docker.compose.project={self.tag}",
                      "--format", '{{.Names}} {{index .Labels "com.docker.compose.service"}}')
        by_service = {service: name for name, service in
                      (row.split() for row in rows.splitlines())}
        self.names = [by_service[f"node{i}"] for i in range(NODES)]

    def run(self) -> None:
        if not shutil.which("podman"):
            raise Failed("podman is missing (apt-get install podman)")
        if os.geteuid() != 0:
            raise Failed("run as root: the cluster folder is given to uid 10001, podman is rootful")
        if subprocess.run(["podman", "image", "exists", self.image]).returncode != 0:
            raise Failed(f"no image {self.image}: build it first (make image)")
        info = json.loads(podman("image", "inspect", self.image))[0]
        self.report["image_size_bytes"] = info["Size"]
        self.report["image_size_mb"] = round(info["Size"] / 1e6)
        health = json.dumps(info.get("Healthcheck"))
        if "LEDGER_HEALTH_URL" not in health:
            raise Failed(f"the image has no HEALTHCHECK (built without --format docker?): {health}")
        if info["Config"].get("User") != f"{UID}:{UID}":
            raise Failed(f"image user {info['Config'].get('User')!r}, want {UID}:{UID}")

        init_cluster(self.dir / "cluster", NODES)
        for path in [self.dir / "cluster", *(self.dir / "cluster").rglob("*")]:
            os.chown(path, UID, UID)  # docs/deploy.md: chown -R 10001:10001 .cluster

        services = compose_services()
        ports = [services[f"node{i}"]["environment"]["LEDGER_API_LISTEN"].rsplit(":", 1)[1]
                 for i in range(NODES)]
        if self.compose:
            self.compose_up(services, ports)
        else:
            podman("network", "create", "--internal", self.net)
            self.made_net = True
            for i in range(NODES):
                self.start(i, services[f"node{i}"])
        t0 = time.monotonic()
        for i in range(NODES):
            wait_until(f"{self.name(i)} healthy (podman healthcheck run)",
                       lambda i=i: healthy(self.name(i)), 90)
        self.report["all_healthy_after_s"] = round(time.monotonic() - t0, 1)

        for i in range(NODES):
            inside = podman("exec", self.name(i), "id", "-u") + ":" + podman(
                "exec", self.name(i), "id", "-g")
            host_pid = podman("inspect", "--format", "{{.State.Pid}}", self.name(i))
            status = Path(f"/proc/{host_pid}/status").read_text()
            host_uid = next(line.split()[1] for line in status.splitlines()
                            if line.startswith("Uid:"))
            if inside != f"{UID}:{UID}" or host_uid != str(UID):
                raise Failed(f"{self.name(i)} runs as {inside} (host uid {host_uid})")
        self.report["uid_gid"] = f"{UID}:{UID} on all {NODES} (inside and host-side)"

        # a container of the image whose API does not answer: its health check must fail
        probe = f"{self.tag}-nohttp"
        self.containers.append(probe)
        podman("run", "--detach", "--name", probe, "--network", "none", *ULIMITS,
               "--entrypoint", "sleep", self.image, "300")
        if healthy(probe):
            raise Failed("the health check passed with no API listening")
        self.report["healthcheck_without_api"] = "fails (exit 1), as it must"

        urls = [self.url(i, ports[i]) for i in range(NODES)]
        ledger = str(Path(sys.executable).parent / "ledger")
        t0 = time.monotonic()
        sub = subprocess.run(
            [ledger, "submit", "--node", urls[1], "--identity",
             str(self.dir / "cluster" / "clients" / "demo.pem"), "--type", "sensor.reading",
             "--subject", "plant-7/line-3/temp", "--payload", '{"value": 21.5, "unit": "C"}',
             "--wait", "--timeout", "60"], capture_output=True, text=True, timeout=90)
        if sub.returncode != 0:
            raise Failed(f"ledger submit: exit {sub.returncode}: {sub.stdout}{sub.stderr}")
        record_id = sub.stdout.split()[0]
        self.report["submitted"] = {"to": urls[1], "answer": sub.stdout.strip(),
                                    "seconds": round(time.monotonic() - t0, 2)}
        heights = self.committed_heights(urls, record_id)
        self.report["committed_on"] = {self.name(i): heights[i] for i in range(NODES)}

        # SIGTERM: the node stops cleanly (exit 0); its volume keeps the chain
        victim = self.name(3)
        t0 = time.monotonic()
        podman("stop", "--time", "30", victim, timeout=60)
        stop_s = round(time.monotonic() - t0, 1)
        code = podman("inspect", "--format", "{{.State.ExitCode}}", victim)
        if code != "0":
            raise Failed(f"{victim} exited {code} on SIGTERM: {podman('logs', victim)[-2000:]}")
        podman("start", victim)
        wait_until(f"{victim} healthy after restart", lambda: healthy(victim), 90)
        urls[3] = self.url(3, ports[3])
        self.committed_heights(urls[3:], record_id)
        self.report["restart"] = {"stop_seconds": stop_s, "exit_code": 0,
                                  "record_still_committed": True}
        self.report["ok"] = True

    @staticmethod
    def committed_heights(urls: list[str], record_id: str) -> list[int]:
        heights: list[int] = []
        for url in urls:
            got: dict[str, Any] = {}

            def committed(url: str = url, got: dict[str, Any] = got) -> bool:
                got.update(httpx.get(f"{url}/v1/records/{record_id}", timeout=5).json())
                return got.get("status") == "committed"

            wait_until(f"record committed at {url}", committed, 30)
            heights.append(int(got["height"]))
        if len(set(heights)) != 1:
            raise Failed(f"record {record_id} at different heights: {heights}")
        return heights

    def cleanup(self) -> None:
        if self.keep:
            print(f"kept: containers {self.containers + self.names}, volumes {self.volumes}, "
                  f"network {self.net}, folder {self.dir}", file=sys.stderr)
            return
        if self.compose and self.composed:
            subprocess.run([*self.compose, "down", "--volumes"], capture_output=True,
                           timeout=120, env={**os.environ,
                                             "LEDGER_CLUSTER_DIR": str(self.dir / "cluster")})
        for c in dict.fromkeys(self.names + self.containers):
            podman("rm", "--force", "--volumes", "--time", "5", c, check=False, timeout=60)
        for v in self.volumes:
            podman("volume", "rm", "--force", v, check=False)
        if self.made_net:
            podman("network", "rm", "--force", self.net, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default=os.environ.get("IMAGE", "localhost/ledger:0.1.0"))
    ap.add_argument("--keep", action="store_true", help="leave everything made, to look at")
    ap.add_argument("--compose", metavar="PODMAN_COMPOSE",
                    help="start the nodes with this podman-compose on docker-compose.yml itself "
                         "(publishes ports 8000-8003 on the host) instead of podman run")
    args = ap.parse_args(argv)
    run = Run(args.image, args.keep, args.compose)
    try:
        run.run()
    except (Failed, AssertionError, subprocess.TimeoutExpired, httpx.HTTPError) as exc:
        run.report["ok"] = False
        run.report["error"] = f"{type(exc).__name__}: {exc}"
        for c in dict.fromkeys(run.names + run.containers):
            logs = subprocess.run(["podman", "logs", "--tail", "15", c], capture_output=True,
                                  text=True, timeout=30)
            print(f"--- {c}\n{logs.stdout}{logs.stderr}", file=sys.stderr)
    finally:
        run.cleanup()
    print(json.dumps(run.report, indent=2))
    return 0 if run.report.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
