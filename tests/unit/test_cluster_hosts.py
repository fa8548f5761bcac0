"""`ledger cluster init --hosts` / `--inventory`: one self-contained folder per host,
binding and advertising the host's address, TLS on by default, no CA key in a host folder."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from cryptography import x509

from ledger.genesis import Genesis
from node import cli
from node.cluster import ClusterError, Host, init_cluster, load_inventory, parse_hosts
from node.config import NodeConfig
from node.runtime import peer_addresses

HOSTS = ["10.0.0.5", "10.0.0.6", "db3.example.com", "10.0.0.8"]


def sans(path: Path) -> tuple[set[str], set[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (set(names.get_values_for_type(x509.DNSName)),
            {str(a) for a in names.get_values_for_type(x509.IPAddress)})


def test_hosts_cli_writes_one_self_contained_folder_per_host(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "c"
    assert cli.main(["cluster", "init", str(d), "--hosts", ",".join(HOSTS)]) == 0
    out = capsys.readouterr().out
    folders = [f"node{i}-{h}" for i, h in enumerate(HOSTS)]
    assert sorted(p.name for p in d.glob("node*")) == folders
    genesis = Genesis.load(d / "genesis.json")
    for i, (host, folder) in enumerate(zip(HOSTS, folders, strict=True)):
        v = genesis.validators[i]
        assert (v.p2p, v.api) == (f"{host}:8100", f"https://{host}:8000")  # advertised
        node_dir = d / folder
        # everything the node needs, and no private key but its own
        assert sorted(p.name for p in node_dir.iterdir()) == [
            "ca.pem", "config.json", "genesis.json", "node.pem", "tls.crt", "tls.key"]
        assert (node_dir / "genesis.json").read_bytes() == (d / "genesis.json").read_bytes()
        assert (node_dir / "ca.pem").read_bytes() == (d / "tls" / "ca.pem").read_bytes()
        cfg = NodeConfig.load(node_dir)  # what `ledger node run` reads on that host
        assert cfg.index == i
        # binds the host's own address; a name binds every interface (resolved on its own
        # machine a name may be loopback: Debian maps it to 127.0.1.1)
        listen = "0.0.0.0" if host == "db3.example.com" else host
        assert (cfg.api, cfg.p2p) == ((listen, 8000), (listen, 8100))
        assert cfg.tls_ca == node_dir / "ca.pem" and cfg.tls_cert == node_dir / "tls.crt"
        assert cfg.genesis_path == node_dir / "genesis.json"
        # peers dial the others' advertised addresses, never 127.0.0.1
        assert peer_addresses(cfg, genesis) == {
            j: (h, 8100) for j, h in enumerate(HOSTS) if j != i}
        dns, ips = sans(node_dir / "tls.crt")
        if host[0].isdigit():
            assert host in ips
        else:
            assert host in dns
        assert f"node{i}" in dns
        assert f"https://{host}:8000" in out
    # the CA's private key and the client keys stay in DIR
    assert (d / "tls" / "ca.key").exists() and (d / "clients" / "demo.pem").exists()
    pems = [p for p in d.glob("node*/**/*") if "PRIVATE KEY" in p.read_text()]
    assert sorted(p.name for p in pems) == ["node.pem"] * 4 + ["tls.key"] * 4
    ca_key = (d / "tls" / "ca.key").read_bytes()
    demo = (d / "clients" / "demo.pem").read_bytes()
    for p in d.glob("node*/*"):
        assert p.read_bytes() not in (ca_key, demo)
    assert "127.0.0.1" not in (d / "genesis.json").read_text()


def test_no_tls_warns_and_bind_overrides_the_listen_address(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "c"
    assert cli.main(["cluster", "init", str(d), "--hosts", "10.1.0.1,10.1.0.2,10.1.0.3",
                     "--no-tls", "--bind", "0.0.0.0", "--base-port", "9000"]) == 0
    assert "warning: --no-tls" in capsys.readouterr().err
    genesis = Genesis.load(d / "genesis.json")
    assert genesis.validators[1].api == "http://10.1.0.2:9000"
    cfg = NodeConfig.load(d / "node1-10.1.0.2")
    assert (cfg.api, cfg.p2p) == (("0.0.0.0", 9000), ("0.0.0.0", 9100))
    assert cfg.tls_cert is None and not (d / "tls").exists()
    assert peer_addresses(cfg, genesis) == {0: ("10.1.0.1", 9100), 2: ("10.1.0.3", 9100)}


def test_inventory_names_ports_and_binds(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"hosts": [
        {"name": "acme", "address": "203.0.113.10", "bind": "0.0.0.0"},
        {"name": "globex", "address": "ledger.globex.example", "api_port": 443,
         "p2p_port": 26656},
        "198.51.100.7",
        {"address": "198.51.100.7", "api_port": 8001, "p2p_port": 8101}]}))
    hosts = load_inventory(inventory)
    assert hosts[0] == Host("203.0.113.10", "acme", None, None, "0.0.0.0")
    d = tmp_path / "c"
    assert cli.main(["cluster", "init", str(d), "--inventory", str(inventory)]) == 0
    genesis = Genesis.load(d / "genesis.json")
    assert [(v.p2p, v.api) for v in genesis.validators] == [
        ("203.0.113.10:8100", "https://203.0.113.10:8000"),
        ("ledger.globex.example:26656", "https://ledger.globex.example:443"),
        ("198.51.100.7:8100", "https://198.51.100.7:8000"),
        ("198.51.100.7:8101", "https://198.51.100.7:8001")]
    acme = NodeConfig.load(d / "node0-acme")
    assert (acme.api, acme.p2p) == (("0.0.0.0", 8000), ("0.0.0.0", 8100))
    dns, ips = sans(d / "node0-acme" / "tls.crt")
    assert "acme" in dns and ipaddress.ip_address("203.0.113.10").compressed in ips
    globex = NodeConfig.load(d / "node1-globex")
    assert globex.api == ("0.0.0.0", 443)  # a name: every interface (not its loopback)
    assert "ledger.globex.example" in sans(d / "node1-globex" / "tls.crt")[0]
    assert (d / "node2-198.51.100.7").is_dir() and (d / "node3-198.51.100.7").is_dir()
    # a port belongs in the options, not in the host
    with pytest.raises(ClusterError, match="neither a host name nor an IP"):
        parse_hosts("10.0.0.1,db3.example.com:8000")
    assert parse_hosts("2001:db8::1")[0].address == "2001:db8::1"


def test_colliding_addresses_and_bad_inventories_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match=r"both use 10\.0\.0\.1:8100"):
        init_cluster(tmp_path / "a", 0, hosts=parse_hosts("10.0.0.1,10.0.0.1"), tls=True)
    assert not (tmp_path / "a" / "genesis.json").exists()
    with pytest.raises(ClusterError, match="not a host"):
        parse_hosts("10.0.0.1,http://x")
    for doc, match in (([], "non-empty"), ([{"name": "x"}], "address"),
                       ([{"address": "h", "api_port": 0}], "port number"),
                       ([{"address": "h", "color": "red"}], "unknown keys")):
        path = tmp_path / "inv.json"
        path.write_text(json.dumps(doc))
        with pytest.raises(ClusterError, match=match):
            load_inventory(path)
    with pytest.raises(ClusterError, match="--k8s"):
        init_cluster(tmp_path / "b", 0, hosts=parse_hosts("h1"), k8s_name="ledger")


def test_local_cluster_unchanged(tmp_path: Path) -> None:
    """Without --hosts: node{i} folders sharing ../genesis.json, 127.0.0.1 everywhere."""
    urls = init_cluster(tmp_path, 3, 8200, tls=True)
    assert urls == [f"https://127.0.0.1:{8200 + i}" for i in range(3)]
    config = json.loads((tmp_path / "node1" / "config.json").read_text())
    assert config == {"index": 1, "api": "127.0.0.1:8201", "p2p": "127.0.0.1:8301",
                      "genesis": "../genesis.json", "key": "node.pem", "store": "chain.db",
                      "peers": {"0": "127.0.0.1:8300", "2": "127.0.0.1:8302"},
                      "tls": {"ca": "../tls/ca.pem", "cert": "tls.crt", "key": "tls.key"}}
