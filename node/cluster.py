"""``ledger cluster init`` and ``ledger cluster up``: a local multi-node cluster."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Host:
    """Where one validator of a multi-host cluster runs (``cluster init --hosts`` or an
    ``--inventory`` file): the ``address`` peers and clients reach it at (a DNS name or an
    IP), an optional ``name`` (its folder is ``node{i}-{name}``; default the address), its
    API and peer ports (default: the cluster's base port and base port + 100, the same on
    every host), and the address it binds (default: ``address``; ``0.0.0.0`` for every
    interface, e.g. behind NAT where the advertised address is not the machine's own)."""

    address: str
    name: str | None = None
    api_port: int | None = None
    p2p_port: int | None = None
    bind: str | None = None

    @property
    def label(self) -> str:
        """The folder suffix: the name, or the address, as a safe file name."""
        text = self.name or self.address
        return "".join(c if c.isalnum() or c in ".-_" else "_" for c in text)


def _host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets."""
    return f"[{host.strip('[]')}]:{port}" if ":" in host.strip("[]") else f"{host}:{port}"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def _check_host(text: str, what: str) -> str:
    text = text.strip()
    if not text or any(c.isspace() or c in "/,@?#" for c in text):
        raise ClusterError(f"{what}: not a host name or address: {text!r}")
    if ":" in text and not _is_ip(text):  # "host:8000": ports are options, not part of it
        raise ClusterError(f"{what}: {text!r} is neither a host name nor an IP address (give "
                           "ports with --base-port, or api_port/p2p_port in an inventory)")
    return text


def parse_hosts(text: str) -> list[Host]:
    """``--hosts HOST1,HOST2,...``: one validator per entry, in order."""
    hosts = [Host(_check_host(h, "--hosts")) for h in text.split(",") if h.strip()]
    if not hosts:
        raise ClusterError("--hosts: no host given")
    return hosts


def load_inventory(path: Path) -> list[Host]:
    """An ``--inventory`` file: JSON, a list of hosts or ``{"hosts": [...]}``, each a host
    name/address string or ``{"address", "name"?, "api_port"?, "p2p_port"?, "bind"?}``
    (docs/deploy.md)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ClusterError(f"{path}: cannot read an inventory ({exc})") from exc
    items = doc.get("hosts") if isinstance(doc, dict) else doc
    if not isinstance(items, list) or not items:
        raise ClusterError(f"{path}: expected a non-empty list of hosts (or {{\"hosts\": "
                           "[...]})")
    hosts = []
    for n, item in enumerate(items):
        where = f"{path}: host {n}"
        if isinstance(item, str):
            item = {"address": item}
        if not isinstance(item, dict) or not isinstance(item.get("address"), str):
            raise ClusterError(f"{where}: expected a string or an object with 'address'")
        unknown = set(item) - {"address", "name", "api_port", "p2p_port", "bind"}
        if unknown:
            raise ClusterError(f"{where}: unknown keys {sorted(unknown)}")
        ports = {}
        for key in ("api_port", "p2p_port"):
            value = item.get(key)
            if value is not None and (type(value) is not int or not 1 <= value <= 65535):
                raise ClusterError(f"{where}: {key} must be a port number")
            ports[key] = value
        name, bind = item.get("name"), item.get("bind")
        if not (name is None or isinstance(name, str)) or \
                not (bind is None or isinstance(bind, str)):
            raise ClusterError(f"{where}: 'name' and 'bind' must be strings")
        hosts.append(Host(_check_host(item["address"], where),
                          None if name is None else _check_host(name, where),
                          ports["api_port"], ports["p2p_port"],
                          None if bind is None else _check_host(bind, where)))
    return hosts


@dataclass(frozen=True)
class _Placement:
    """Where one node of a new cluster listens, how the others reach it, and where its
    folder is: what distinguishes a local cluster (every node on 127.0.0.1), a multi-host
    one (``Host``) and a Kubernetes one (pods' DNS names) in ``init_cluster``."""

    folder: str
    api: str  # host:port bound
    p2p: str
    advertised_p2p: str  # host:port peers dial (genesis ``p2p``)
    advertised_api: str  # URL (genesis ``api``)
    cert_names: tuple[str, ...]  # certificate SANs beyond node{i}, localhost, 127.0.0.1
    self_contained: bool  # genesis and the CA copied into the folder (it goes elsewhere)


def _placements(nodes: int, base_port: int, tls: bool, k8s_name: str | None,
                hosts: list[Host] | None, bind: str | None) -> list[_Placement]:
    scheme = "https" if tls else "http"
    if hosts is None:
        out = []
        for i in range(nodes):
            adv = _advertised(i, base_port, tls, k8s_name)
            names: tuple[str, ...] = ()
            if k8s_name is not None:  # the name peers dial, and the API Service's clients use
                from node.k8s import pod_host

                names = (pod_host(k8s_name, i), f"{k8s_name}-api")
            out.append(_Placement(f"node{i}", f"127.0.0.1:{base_port + i}",
                                  f"127.0.0.1:{base_port + 100 + i}", adv["p2p"], adv["api"],
                                  names, False))
        return out
    out = []
    for i, host in enumerate(hosts):
        api_port = host.api_port or base_port
        p2p_port = host.p2p_port or base_port + 100
        # a name is bound as 0.0.0.0: resolved on its own machine it may be loopback
        # (Debian maps the machine's name to 127.0.1.1), where peers cannot reach it
        listen = bind or host.bind or (host.address if _is_ip(host.address) else "0.0.0.0")
        out.append(_Placement(
            f"node{i}-{host.label}", _host_port(listen, api_port), _host_port(listen, p2p_port),
            _host_port(host.address, p2p_port),
            f"{scheme}://{_host_port(host.address, api_port)}",
            tuple(dict.fromkeys(n for n in (host.address, host.name) if n)), True))
    used: dict[str, str] = {}
    for p in out:
        for where in (p.advertised_p2p, p.advertised_api.split("://")[-1]):
            if where in used:
                raise ClusterError(f"{p.folder} and {used[where]} would both use {where}: "
                                   "give them distinct ports in an --inventory file")
            used[where] = p.folder
    return out


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
                 k8s_name: str | None = None, hosts: list[Host] | None = None,
                 bind: str | None = None) -> list[str]:
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

    ``hosts`` (``cluster init --hosts``/``--inventory``): one validator per host, ``nodes``
    ignored. Folder ``node{i}-{label}`` is self-contained, to be copied to that host: its
    key, config.json binding the host's address (or ``bind``, e.g. ``0.0.0.0``) and dialing
    the other hosts' advertised addresses, genesis.json, and with ``tls`` its certificate
    (SANs: the host's address and name) and the CA certificate ``ca.pem``. The CA's private
    key (``tls/ca.key``) and the client keys stay in ``directory``. Genesis advertises each
    validator at ``HOST:port``.
    """
    from node.k8s import check_name

    if k8s_name is not None:
        try:
            check_name(k8s_name)
        except ValueError as exc:
            raise ClusterError(str(exc)) from None
    if hosts is not None:
        if k8s_name is not None:
            raise ClusterError("--hosts and --k8s do not go together (Kubernetes places "
                               "the validators itself)")
        nodes = len(hosts)
        if bind is not None:
            bind = _check_host(bind, "--bind")
    if witnesses < 0:
        raise ClusterError("--witnesses must be at least 0")
    if nodes < 1:
        raise ClusterError("--nodes must be at least 1")
    if not 1024 <= base_port <= 65535 - 100 - nodes:
        raise ClusterError(f"--base-port {base_port} leaves no room for {nodes} nodes")
    placements = _placements(nodes, base_port, tls, k8s_name, hosts, bind)
    if (directory / "genesis.json").exists():
        raise ClusterError(f"{directory} already holds a cluster (genesis.json exists)")
    directory.mkdir(parents=True, exist_ok=True)
    keys = [PrivateKey.generate() for _ in range(nodes)]
    client = PrivateKey.generate()
    admins = {org: PrivateKey.generate() for org in GOVERNING_ORGS}
    genesis = {
        "chain_id": chain_id,
        "validators": [
            {"name": f"node{i}", "pubkey": k.public.hex(), "power": 1,
             "p2p": placements[i].advertised_p2p, "api": placements[i].advertised_api}
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
    for i, (key, place) in enumerate(zip(keys, placements, strict=True)):
        node_dir = directory / place.folder
        node_dir.mkdir(exist_ok=True)
        write_key_file(node_dir / "node.pem", key)
        # a folder copied to another host carries genesis and the CA certificate with it
        here = "" if place.self_contained else "../"
        if place.self_contained:
            (node_dir / "genesis.json").write_bytes(raw)
        config = {
            "index": i, "api": place.api, "p2p": place.p2p, "genesis": f"{here}genesis.json",
            "key": "node.pem", "store": "chain.db",
            # a local folder dials 127.0.0.1 even when genesis advertises pods' names
            "peers": {str(j): (p.advertised_p2p if place.self_contained else p.p2p)
                      for j, p in enumerate(placements) if j != i},
        }
        if ca is not None:
            make_node_cert(node_dir, f"node{i}", *ca, extra_names=place.cert_names)
            if place.self_contained:
                (node_dir / "ca.pem").write_bytes((directory / "tls" / "ca.pem").read_bytes())
            config["tls"] = {"ca": "ca.pem" if place.self_contained else "../tls/ca.pem",
                             "cert": "tls.crt", "key": "tls.key"}
        (node_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        urls.append(place.advertised_api if place.self_contained
                    else f"{'https' if tls else 'http'}://{place.api}")
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


def _node_order(folder: Path) -> tuple[int, str]:
    """``node{i}`` and ``node{i}-{host}`` folders in validator order."""
    digits = folder.name[4:].partition("-")[0]
    return (int(digits) if digits.isdigit() else 0, folder.name)


def run_cluster(directory: Path, stop_on_exit: bool = False) -> int:
    """Run every node of ``directory`` in the foreground until Ctrl-C or SIGTERM.

    A node that exits is reported in one line and the others keep serving (a quorum may
    remain; an operator may be replacing that node's disk). ``stop_on_exit`` stops every
    node instead, and returns 1. Returns 1 too when every node has exited by itself.
    """
    node_dirs = sorted((p for p in directory.glob("node*") if (p / "config.json").exists()),
                       key=_node_order)
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
