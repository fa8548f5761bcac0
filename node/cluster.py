"""``ledger cluster init`` and ``ledger cluster up``: a local multi-node cluster."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from ledger.crypto import PrivateKey, write_key_file
from ledger.errors import LedgerError
from ledger.genesis import Genesis
from node.tls import make_ca, make_node_cert

#: The record types the demo genesis lets its client write: those of the example genesis
#: (examples/genesis.example.json, docs/genesis.md), so what is tried on the demo chain runs
#: on one made from the example. No "*": any other type is refused as ``unauthorized``.
DEMO_TYPES = ("sensor.reading", "quality.inspection", "quality.certificate",
              "shipment.dispatched", "shipment.in-transit", "shipment.received")


#: The demo genesis's organisations: the first holds the demo key; each has an admin.
GOVERNING_ORGS = ("demo-org", "supplier", "carrier")


class ClusterError(LedgerError):
    """A cluster directory cannot be made or run."""

    code = "cluster"


def _from_template(template: Path, genesis: dict[str, Any],
                   directory: Path) -> list[tuple[Path, PrivateKey]]:
    """Put ``template``'s chain id, organisations, policies (and read policies), governance
    and consensus into ``genesis``.

    The validators stay the generated nodes; every member gets a new key, written to
    ``clients/<organisation>.<member>.pem`` (a local cluster cannot hold the real members'
    private keys). Returns the client keys to write.
    """
    try:
        doc = json.loads(template.read_text())
    except (OSError, ValueError) as exc:
        raise ClusterError(f"{template}: cannot read a genesis template ({exc})") from exc
    if not isinstance(doc, dict):
        raise ClusterError(f"{template}: expected a JSON object")
    keys: list[tuple[Path, PrivateKey]] = []
    orgs = doc.get("organizations", [])
    for org in orgs if isinstance(orgs, list) else []:
        for member in org.get("members", []) if isinstance(org, dict) else []:
            if isinstance(member, dict) and "name" in member:
                key = PrivateKey.generate()
                member["pubkey"] = key.public.hex()
                name = f"{org.get('name')}.{member['name']}".replace("/", "_")
                keys.append((directory / "clients" / f"{name}.pem", key))
    genesis.pop("governance", None)  # the template's organisations govern, by its rules
    for field in ("chain_id", "organizations", "policies", "consensus", "governance",
                  "read_policies"):
        if field in doc:
            genesis[field] = doc[field]
    return keys


def _advertised(index: int, base_port: int, tls: bool,
                k8s_name: str | None) -> dict[str, str]:
    """The ``p2p`` and ``api`` genesis lists for validator ``index``."""
    if k8s_name is not None:
        from node.k8s import advertised

        p2p, api = advertised(k8s_name, index, tls)
        return {"p2p": p2p, "api": api}
    return {"p2p": f"127.0.0.1:{base_port + 100 + index}",
            "api": f"{'https' if tls else 'http'}://127.0.0.1:{base_port + index}"}


def write_k8s(directory: Path, name: str, image: str, storage: str) -> list[Path]:
    """``directory/k8s/``: Kubernetes manifests for the cluster ``init_cluster(...,
    k8s_name=name)`` wrote there (node.k8s; docs/deploy.md)."""
    from node.k8s import write_manifests

    try:
        return write_manifests(directory, name, image, storage)
    except (OSError, ValueError, KeyError) as exc:
        raise ClusterError(f"{directory}: cannot write Kubernetes manifests ({exc})") from exc


def init_cluster(directory: Path, nodes: int, base_port: int = 8000,
                 chain_id: str = "demo", tls: bool = False,
                 template: Path | None = None,
                 types: tuple[str, ...] | None = None, witnesses: int = 0,
                 k8s_name: str | None = None) -> list[str]:
    """Write genesis.json, one folder per node (config and key), a demo client key and an
    admin key per organisation (``clients/<org>-admin.pem``; two of three approve a change).

    The demo key may write every record type (SPEC section 8), or only ``types`` (then a
    mistyped type is refused, listing them: what ``make run`` asks for).

    With ``template`` (a genesis file such as examples/genesis.example.json), its chain id,
    organisations, policies, read policies, governance and consensus section replace the demo
    ones (see docs/genesis.md).

    ``witnesses`` > 0: that many witness keys ``witnesses/witness{i}.pem``, listed in genesis
    ``witnesses`` (SPEC sections 9 and 11; docs/witness.md). 0 leaves genesis without the key.

    ``k8s_name``: genesis advertises each validator at its Kubernetes pod's DNS name
    (node.k8s.advertised; the node folders still dial 127.0.0.1, so ``cluster up`` runs the
    same chain locally) and TLS certificates name it and the API Service ``NAME-api`` too.
    :func:`write_k8s` then writes the manifests.
    """
    from node.k8s import check_name, pod_host

    if k8s_name is not None:
        try:
            check_name(k8s_name)
        except ValueError as exc:
            raise ClusterError(str(exc)) from None
    if witnesses < 0:
        raise ClusterError("--witnesses must be at least 0")
    if nodes < 1:
        raise ClusterError("--nodes must be at least 1")
    if not 1024 <= base_port <= 65535 - 100 - nodes:
        raise ClusterError(f"--base-port {base_port} leaves no room for {nodes} nodes")
    if (directory / "genesis.json").exists():
        raise ClusterError(f"{directory} already holds a cluster (genesis.json exists)")
    directory.mkdir(parents=True, exist_ok=True)
    keys = [PrivateKey.generate() for _ in range(nodes)]
    scheme = "https" if tls else "http"
    client = PrivateKey.generate()
    admins = {org: PrivateKey.generate() for org in GOVERNING_ORGS}
    genesis = {
        "chain_id": chain_id,
        "validators": [
            {"name": f"node{i}", "pubkey": k.public.hex(), "power": 1,
             **_advertised(i, base_port, tls, k8s_name)}
            for i, k in enumerate(keys)
        ],
        # Three organisations, each with an admin (clients/<org>-admin.pem): any two of them
        # change the configuration (SPEC section 9; docs/governance.md).
        "organizations": [
            {"name": org, "members": [
                *([{"name": "demo", "pubkey": client.public.hex(), "roles": ["writer"]}]
                  if org == GOVERNING_ORGS[0] else []),
                {"name": "admin", "pubkey": admins[org].public.hex(), "roles": ["admin"]}]}
            for org in GOVERNING_ORGS],
        # With explicit types (no "*"), a mistyped --type is refused, listing them.
        "policies": ({t: ["writer"] for t in types} if types is not None
                     else {"*": ["writer"]}),
        "governance": {"role": "admin", "threshold": 2},
        # An idle chain makes no empty blocks: a height starts when records arrive.
        "consensus": {"create_empty_blocks": False},
    }
    client_keys = [(directory / "clients" / "demo.pem", client),
                   *((directory / "clients" / f"{org}-admin.pem", key)
                     for org, key in admins.items())]
    if template is not None:
        client_keys = _from_template(template, genesis, directory)
    witness_keys = [PrivateKey.generate() for _ in range(witnesses)]
    if witness_keys:
        genesis["witnesses"] = [{"name": f"witness{i}", "pubkey": k.public.hex()}
                                for i, k in enumerate(witness_keys)]
        client_keys += [(directory / "witnesses" / f"witness{i}.pem", k)
                        for i, k in enumerate(witness_keys)]
    raw = (json.dumps(genesis, indent=2) + "\n").encode()
    try:
        Genesis.from_bytes(raw, str(template or "genesis.json"))
    except LedgerError as exc:
        raise ClusterError(str(exc)) from exc
    (directory / "genesis.json").write_bytes(raw)
    (directory / "clients").mkdir(exist_ok=True)
    for path, key in client_keys:
        path.parent.mkdir(exist_ok=True)
        write_key_file(path, key)
    chain_id = str(genesis["chain_id"])
    ca = make_ca(directory / "tls", chain_id) if tls else None
    urls = []
    for i, key in enumerate(keys):
        node_dir = directory / f"node{i}"
        node_dir.mkdir(exist_ok=True)
        write_key_file(node_dir / "node.pem", key)
        config = {
            "index": i, "api": f"127.0.0.1:{base_port + i}",
            "p2p": f"127.0.0.1:{base_port + 100 + i}", "genesis": "../genesis.json",
            "key": "node.pem", "store": "chain.db",
            "peers": {str(j): f"127.0.0.1:{base_port + 100 + j}" for j in range(nodes) if j != i},
        }
        if ca is not None:
            # in Kubernetes: the name peers dial, and the API Service's clients use
            make_node_cert(node_dir, f"node{i}", *ca, extra_names=(
                () if k8s_name is None else (pod_host(k8s_name, i), f"{k8s_name}-api")))
            config["tls"] = {"ca": "../tls/ca.pem", "cert": "tls.crt", "key": "tls.key"}
        (node_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        urls.append(f"{scheme}://127.0.0.1:{base_port + i}")
    return urls


def _pump(prefix: str, stream: IO[str], out: IO[str], lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            out.write(f"{prefix} {line}")
            out.flush()


def _port_free(host: str, port: int) -> bool:
    """Can a listener bind ``host:port``? SO_REUSEADDR as uvicorn and asyncio use it, so a
    port left in TIME_WAIT by a cluster that just stopped counts as free."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return True  # the node itself will report an unusable address
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            return False
    return True


def check_ports(node_dirs: list[Path]) -> None:
    """Raise ClusterError naming the first API or peer port of the cluster already taken.

    Checked before any node starts, so a second ``cluster up`` says so in one line instead
    of four nodes each dying with a traceback.
    """
    from node.config import ConfigError, parse_address

    for node_dir in node_dirs:
        config = json.loads((node_dir / "config.json").read_text())
        for key, what in (("api", "API"), ("p2p", "peer")):
            if key not in config:
                continue
            try:
                host, port = parse_address(config[key], f"{node_dir.name} {key}")
            except ConfigError as exc:
                raise ClusterError(str(exc)) from None
            if not _port_free(host, port):
                raise ClusterError(f"port {port} ({node_dir.name} {what}) is in use: "
                                   "is the cluster already running?")


def run_cluster(directory: Path, stop_on_exit: bool = False) -> int:
    """Run every node of ``directory`` in the foreground until Ctrl-C or SIGTERM.

    A node that exits is reported in one line and the others keep serving (a quorum may
    remain; an operator may be replacing that node's disk). ``stop_on_exit`` stops every
    node instead, and returns 1. Returns 1 too when every node has exited by itself.
    """
    node_dirs = sorted((p for p in directory.glob("node*") if (p / "config.json").exists()),
                       key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else 0)
    if not node_dirs:
        raise ClusterError(f"{directory}: no node folders; run 'ledger cluster init' first")
    check_ports(node_dirs)
    stop = threading.Event()
    signalled: list[int] = []  # the handler takes no lock: Event.set() in it can deadlock

    def on_signal(signum: int, _frame: object) -> None:
        signalled.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    lock = threading.Lock()
    procs: list[tuple[str, subprocess.Popen[str]]] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    width = max(len(p.name) for p in node_dirs)
    for node_dir in node_dirs:
        proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "node", "run", str(node_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            start_new_session=True)  # Ctrl-C reaches us; we stop the nodes in order
        assert proc.stdout is not None
        threading.Thread(target=_pump, args=(f"[{node_dir.name:<{width}}]", proc.stdout,
                                             sys.stdout, lock), daemon=True).start()
        procs.append((node_dir.name, proc))
        config = json.loads((node_dir / "config.json").read_text())
        with lock:
            scheme = "https" if config.get("tls") else "http"
            print(f"{node_dir.name}: API {scheme}://{config['api']}  (OpenAPI docs at /docs), "
                  f"pid {proc.pid}", flush=True)
    with lock:
        print(f"cluster of {len(procs)} nodes running; genesis {directory / 'genesis.json'}; "
              f"client key {directory / 'clients' / 'demo.pem'}. Ctrl-C stops it.", flush=True)
    exit_code = 0
    exited: set[str] = set()
    while not stop.is_set() and not signalled:
        for name, proc in procs:
            if name in exited or proc.poll() is None:
                continue
            exited.add(name)
            status = proc.returncode
            how = str(status)
            if status < 0:  # killed by a signal
                with contextlib.suppress(ValueError):
                    how += f" ({signal.Signals(-status).name})"
            with lock:
                if stop_on_exit:
                    print(f"{name} exited with status {how}; stopping the cluster "
                          "(--stop-on-exit)", flush=True)
                elif len(exited) == len(procs):
                    print(f"{name} exited with status {how}; no node is left running",
                          flush=True)
                else:
                    print(f"{name} exited with status {how}; the others keep running "
                          "(Ctrl-C stops them)", flush=True)
            if stop_on_exit or len(exited) == len(procs):
                exit_code = 1
                stop.set()
                break
        stop.wait(0.5)
    with lock:
        print("stopping every node ...", flush=True)
    for _, proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for _, proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print("cluster stopped", flush=True)
    return exit_code
