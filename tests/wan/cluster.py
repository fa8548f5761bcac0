"""A TLS validator cluster on the WAN bed: node i runs in namespace ``node{i}`` at its own
address, clients in ``client``.

The cluster is written by ``ledger cluster init --hosts`` (``init_cluster(hosts=...)``), as
for separate machines: each host's folder binds and advertises its address, with a
certificate naming it. :func:`_reissue_cert` gives a copied folder (a Twins' second node) a
certificate for another address.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from node.cluster import Host, init_cluster
from tests.wan.bed import ROOT, Bed

API_PORT = 8000
P2P_PORT = 8100


def _reissue_cert(node_dir: Path, name: str, address: str, ca_dir: Path) -> None:
    """Replace ``tls.crt``/``tls.key`` with a certificate for ``address`` (an IP SAN: TLS
    clients check an IP host against IP SANs only), signed by the cluster CA."""
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName(name), x509.IPAddress(ipaddress.ip_address(address))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    (node_dir / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (node_dir / "tls.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


class WanCluster:
    """``nodes`` validators on ``bed`` (hosts node0..node{n-1}); clients on ``client``."""

    def __init__(self, bed: Bed, directory: Path, nodes: int = 4, tls: bool = True,
                 consensus: dict[str, object] | None = None) -> None:
        self.bed, self.dir, self.nodes, self.tls = bed, directory, nodes, tls
        # what an operator runs for separate machines (docs/deploy.md): one folder per host,
        # binding and advertising the host's address (API 8000, peers 8100), TLS
        # certificates naming it; here folder node{i}-ADDRESS becomes node{i}
        hosts = [Host(bed.address(f"node{i}")) for i in range(nodes)]
        init_cluster(directory, nodes, base_port=API_PORT, tls=tls, hosts=hosts)
        for i, host in enumerate(hosts):
            (directory / f"node{i}-{host.label}").rename(directory / f"node{i}")
        if consensus:  # genesis and each host folder's copy of it
            genesis = json.loads((directory / "genesis.json").read_text())
            genesis["consensus"] = consensus
            text = json.dumps(genesis, indent=2)
            for path in [directory] + [directory / f"node{i}" for i in range(nodes)]:
                (path / "genesis.json").write_text(text)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.ca = directory / "tls" / "ca.pem" if tls else None
        self._http: httpx.Client | None = None

    def url(self, i: int) -> str:
        return f"{'https' if self.tls else 'http'}://{self.bed.address(f'node{i}')}:{API_PORT}"

    def urls(self) -> list[str]:
        return [self.url(i) for i in range(self.nodes)]

    def verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=str(self.ca)) if self.ca else True

    def start(self, i: int) -> None:
        log = open(self.dir / f"node{i}.log", "ab")  # noqa: SIM115 - the process owns it
        self.procs[i] = self.bed.popen(
            f"node{i}", [sys.executable, "-m", "node.cli", "node", "run",
                         str(self.dir / f"node{i}")],
            stdout=log, stderr=subprocess.STDOUT, env={"PYTHONUNBUFFERED": "1",
                                                       **_env()})

    def start_all(self, timeout: float = 60) -> None:
        for i in range(self.nodes):
            self.start(i)
        for i in range(self.nodes):
            self.wait_healthy(i, timeout)

    def log(self, i: int) -> str:
        path = self.dir / f"node{i}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- HTTP from the client namespace (a thread that entered it)

    def get(self, i: int, path: str, timeout: float = 5) -> Any:
        def fetch() -> Any:
            if self._http is None:
                self._http = httpx.Client(verify=self.verify())
            resp = self._http.get(f"{self.url(i)}{path}", timeout=timeout)
            resp.raise_for_status()
            return resp.json()
        return self.bed.call("client", fetch)

    def height(self, i: int) -> int:
        return int(self.get(i, "/v1/status")["height"])

    def wait_healthy(self, i: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[i].poll() is not None:
                raise RuntimeError(f"node{i} exited: {self.log(i)[-2000:]}")
            try:
                self.get(i, "/healthz", timeout=2)
                return
            except (httpx.HTTPError, ValueError):
                time.sleep(0.2)
        raise RuntimeError(f"node{i} not healthy in {timeout} s: {self.log(i)[-2000:]}")

    def wait_height(self, i: int, height: int, timeout: float = 30) -> float:
        """Seconds until node i reaches ``height``."""
        start = time.monotonic()
        while time.monotonic() < start + timeout:
            try:
                if self.height(i) >= height:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"node{i} did not reach height {height} in {timeout} s: "
                             f"{self.log(i)[-3000:]}")

    def load(self, **options: Any) -> dict[str, Any]:
        """Run tests/wan/load.py in the client namespace; its JSON report."""
        argv = [sys.executable, "-m", "tests.wan.load", "--cluster", str(self.dir),
                "--urls", ",".join(self.urls())]
        if self.ca:
            argv += ["--ca", str(self.ca)]
        for k, v in options.items():
            argv += [f"--{k.replace('_', '-')}", str(v)]
        done = self.bed.run("client", argv, env=_env())
        if done.returncode != 0:
            raise RuntimeError(f"load failed: {done.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT)}
