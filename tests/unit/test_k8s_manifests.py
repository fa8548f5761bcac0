"""`ledger cluster init --k8s`: the manifests are valid against a current Kubernetes
version's schemas (strict: an unknown field fails), offline, and wire the cluster.

kubernetes-validate bundles the schemas, so this needs no cluster and no network.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from kubernetes_validate import utils as kv

from node import cli
from node.cluster import ClusterError, init_cluster, write_k8s
from node.config import NodeConfig
from node.k8s import fault_tolerance, manifests, pod_host, to_yaml

#: The oldest Kubernetes minor version whose schemas may stand in for "current".
OLDEST_CURRENT = (1, 33)


def version() -> str:
    """The newest Kubernetes version kubernetes-validate bundles schemas of."""
    latest = kv.latest_version()
    assert tuple(int(x) for x in latest.split(".")[:2]) >= OLDEST_CURRENT, latest
    return latest


def validate(doc: dict[str, Any]) -> str:
    """Strict schema validation; raises kv.ValidationError."""
    return kv.validate(doc, version(), strict=True)


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.fixture(params=[False, True], ids=["plain", "tls"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    directory = tmp_path / "cluster"
    init_cluster(directory, 4, tls=request.param, k8s_name="ledger")
    write_k8s(directory, "ledger", "registry.example/ledger:0.1.0", "20Gi")
    return directory


def test_every_generated_document_validates_strictly(cluster: Path) -> None:
    files = sorted((cluster / "k8s").glob("*.yaml"))
    assert [p.name for p in files] == ["cluster.yaml"] + [f"node{i}.yaml" for i in range(4)]
    kinds: dict[str, int] = {}
    for path in files:
        for doc in load(path):
            assert validate(doc) == ".".join(version().split(".")[:2])
            kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
    assert kinds == {"StatefulSet": 4, "Secret": 4, "ConfigMap": 5, "Service": 2,
                     "PodDisruptionBudget": 1}


def test_yaml_written_is_the_documents(cluster: Path) -> None:
    """Our small emitter: what a YAML parser reads back is exactly what was generated."""
    expected = manifests(cluster, "ledger", "registry.example/ledger:0.1.0", "20Gi")
    for name, docs in expected.items():
        assert load(cluster / "k8s" / name) == docs
    tricky = {"a": ["", "yes", "1", "x: y", "-", "#", " lead", "trail \n", "two\nlines\n",
                    True, 0, {}, [], {"b": [[1, 2], {"c": None}]}]}
    assert yaml.safe_load(to_yaml(tricky)) == {**tricky}


def test_a_typo_fails_the_check(cluster: Path) -> None:
    """A misspelt field is rejected: `replica:` for `replicas:`, `contianers:`."""
    text = (cluster / "k8s" / "node0.yaml").read_text()
    for good, bad in (("  replicas: 1", "  replica: 1"), ("containers:", "contianers:"),
                      ("readOnlyRootFilesystem:", "readOnlyRootFileSystem:")):
        assert good in text
        broken = cluster / "k8s" / "broken.yaml"
        broken.write_text(text.replace(good, bad, 1))
        statefulset = next(d for d in load(broken) if d["kind"] == "StatefulSet")
        with pytest.raises(kv.ValidationError) as err:
            validate(statefulset)
        assert bad.strip().rstrip(":").split(":")[0] in str(err.value)
    # and the file as generated passes
    for doc in load(cluster / "k8s" / "node0.yaml"):
        validate(doc)


def test_the_cli_check_fails_on_a_typo(cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`kubernetes-validate --strict` (what docs/deploy.md tells operators to run): 0 on the
    generated files, non-zero on a typo."""
    good = cluster / "k8s" / "node1.yaml"
    assert kv.validate_file(str(good), version(), strict=True, quiet=True,
                            no_warn=True) == 0
    broken = cluster / "k8s" / "broken.yaml"
    broken.write_text(good.read_text().replace("  replicas: 1", "  replica: 1", 1))
    assert kv.validate_file(str(broken), version(), strict=True, quiet=True,
                            no_warn=True) != 0
    assert "replica" in capsys.readouterr().out


def test_manifests_wire_the_cluster(cluster: Path) -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d
            for p in (cluster / "k8s").glob("*.yaml") for d in load(p)}
    genesis_raw = (cluster / "genesis.json").read_text()
    genesis = json.loads(genesis_raw)
    tls = (cluster / "tls").exists()
    cm = docs["ConfigMap", "ledger-genesis"]["data"]
    assert cm["genesis.json"] == genesis_raw  # byte for byte: the same genesis hash
    assert ("ca.pem" in cm) == tls
    scheme = "https" if tls else "http"
    for i, v in enumerate(genesis["validators"]):
        host = f"ledger-node{i}-0.ledger-p2p"
        assert host == pod_host("ledger", i)
        assert (v["p2p"], v["api"]) == (f"{host}:8100", f"{scheme}://{host}:8000")
    p2p = docs["Service", "ledger-p2p"]["spec"]
    assert p2p["clusterIP"] == "None" and p2p["publishNotReadyAddresses"] is True
    assert docs["Service", "ledger-api"]["spec"]["selector"] == p2p["selector"]
    pdb = docs["PodDisruptionBudget", "ledger-quorum"]["spec"]
    assert pdb["maxUnavailable"] == 1 and pdb["selector"]["matchLabels"] == p2p["selector"]
    for i in range(4):
        sts = docs["StatefulSet", f"ledger-node{i}"]
        spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
        assert spec["replicas"] == 1 and spec["serviceName"] == "ledger-p2p"
        labels = sts["spec"]["template"]["metadata"]["labels"]
        assert all(labels[k] == val for k, val in p2p["selector"].items())
        assert spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"] == {
            "storage": "20Gi"}
        (container,) = pod["containers"]
        assert container["image"] == "registry.example/ledger:0.1.0"
        assert container["args"] == ["node", "run", "/etc/ledger/node"]
        for probe, path in (("startupProbe", "/healthz"), ("readinessProbe", "/readyz"),
                            ("livenessProbe", "/healthz")):
            assert container[probe]["httpGet"] == {"path": path, "port": "api",
                                                   "scheme": scheme.upper()}
        assert set(container["resources"]) == {"requests", "limits"}
        sc, psc = container["securityContext"], pod["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["allowPrivilegeEscalation"] is False
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["key"]["secret"]["secretName"] == f"ledger-node{i}-key"
        assert volumes["genesis"]["configMap"]["name"] == "ledger-genesis"
        # the key is this validator's own, and only its own
        secret = docs["Secret", f"ledger-node{i}-key"]["data"]
        assert base64.b64decode(secret["node.pem"]) == (cluster / f"node{i}/node.pem").read_bytes()
        assert set(secret) == ({"node.pem", "tls.crt", "tls.key"} if tls else {"node.pem"})
        assert (cluster / "k8s" / f"node{i}.yaml").stat().st_mode & 0o077 == 0
        # the pod's config.json loads, dials its peers by DNS name and stores on the volume
        node_dir = cluster / f"pod{i}"
        node_dir.mkdir()
        (node_dir / "config.json").write_text(
            docs["ConfigMap", f"ledger-node{i}-config"]["data"]["config.json"])
        config = NodeConfig.load(node_dir)
        assert config.index == i and config.api == ("0.0.0.0", 8000)
        assert config.peers == {j: (pod_host("ledger", j), 8100) for j in range(4) if j != i}
        assert str(config.store_path) == "/data/chain.db"
        assert str(config.key_path) == "/etc/ledger/key/node.pem"
        if tls:
            cert = x509.load_pem_x509_certificate((cluster / f"node{i}/tls.crt").read_bytes())
            names = cert.extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
            assert pod_host("ledger", i) in names and "ledger-api" in names


def test_local_folders_still_dial_loopback(cluster: Path) -> None:
    """The node folders run the same chain with `ledger cluster up` on one machine."""
    config = NodeConfig.load(cluster / "node0")
    assert config.peers == {j: ("127.0.0.1", 8100 + j) for j in range(1, 4)}


@pytest.mark.parametrize(("n", "f"), [(1, 0), (3, 0), (4, 1), (6, 1), (7, 2), (10, 3)])
def test_pdb_keeps_a_quorum(n: int, f: int) -> None:
    assert fault_tolerance(n) == f
    assert n - f > 2 * n / 3  # the validators left still hold more than 2/3 of the power


def test_cli_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["cluster", "init", str(tmp_path / "c"), "--nodes", "7", "--k8s",
                     "--k8s-name", "chain-a", "--k8s-image", "ledger:test"]) == 0
    out = capsys.readouterr().out
    assert "PRIVATE KEYS" in out and "k8s/node6.yaml" in out
    docs = [d for p in sorted((tmp_path / "c" / "k8s").glob("*.yaml")) for d in load(p)]
    for doc in docs:
        validate(doc)
    pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert pdb["metadata"]["name"] == "chain-a-quorum" and pdb["spec"]["maxUnavailable"] == 2
    assert "WARNING" in (tmp_path / "c" / "k8s" / "node0.yaml").read_text()
    # without --k8s: no manifests, loopback addresses in genesis (the behaviour before)
    assert cli.main(["cluster", "init", str(tmp_path / "d")]) == 0
    assert not (tmp_path / "d" / "k8s").exists()
    genesis = json.loads((tmp_path / "d" / "genesis.json").read_text())
    assert genesis["validators"][0]["p2p"] == "127.0.0.1:8100"


def test_a_bad_name_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="--k8s-name"):
        init_cluster(tmp_path / "c", 4, k8s_name="Not_A_Label")
    assert not (tmp_path / "c").exists()
