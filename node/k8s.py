"""Kubernetes manifests for a cluster made by ``ledger cluster init --k8s`` (docs/deploy.md).

One StatefulSet per validator (one replica each): validators hold distinct keys, and a pod
template cannot mount a different Secret per ordinal, so one StatefulSet for all would have
to give every pod every validator's key. Each validator's pod is
``{name}-node{i}-0``, addressed by the headless Service ``{name}-p2p`` as
``{name}-node{i}-0.{name}-p2p`` (namespace-relative DNS: the manifests name no namespace;
apply them with ``kubectl apply -n NS``). Those names are what genesis advertises
(:func:`advertised`) and what each validator's config.json dials.

Written with a small YAML emitter of our own (:func:`to_yaml`): ``cluster init`` is part of
the base install, which does not depend on PyYAML.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

#: The ports every validator pod uses (each pod has its own address, so all share them).
API_PORT = 8000
P2P_PORT = 8100
#: The image's non-root user and group (Dockerfile ``useradd --uid``).
UID = 10001
#: Where the pod finds its files (read-only mounts) and its store (the volume).
NODE_DIR = "/etc/ledger/node"
GENESIS_DIR = "/etc/ledger/genesis"
KEY_DIR = "/etc/ledger/key"
DATA_DIR = "/data"

DEFAULT_IMAGE = "ledger:0.1.0"
DEFAULT_NAME = "ledger"
DEFAULT_STORAGE = "10Gi"

_NAME = re.compile(r"[a-z]([-a-z0-9]{0,30}[a-z0-9])?")


def check_name(name: str) -> str:
    """``name`` prefixes every object: a DNS label short enough for ``NAME-nodeI-0``."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"--k8s-name {name!r}: use 1-32 lowercase letters, digits and '-', "
                         "starting with a letter")
    return name


def pod_host(name: str, index: int) -> str:
    """The stable DNS name of validator ``index``'s pod, relative to its namespace."""
    return f"{name}-node{index}-0.{name}-p2p"


def advertised(name: str, index: int, tls: bool) -> tuple[str, str]:
    """(p2p ``host:port``, API URL) genesis lists for validator ``index`` in Kubernetes."""
    host = pod_host(name, index)
    return f"{host}:{P2P_PORT}", f"{'https' if tls else 'http'}://{host}:{API_PORT}"


def fault_tolerance(nodes: int) -> int:
    """f: validators (of equal power) that may be down while the rest, n - f > 2n/3, commit."""
    return (nodes - 1) // 3


def _labels(name: str, chain_id: str, index: int | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": "ledger", "app.kubernetes.io/instance": name,
              "app.kubernetes.io/component": "validator",
              "ledger/chain": re.sub(r"[^-A-Za-z0-9_.]", "-", chain_id)[:63].strip(
                  "-_.") or "chain"}
    if index is not None:
        labels["ledger/validator"] = f"node{index}"
    return labels


def _selector(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "ledger", "app.kubernetes.io/instance": name,
            "app.kubernetes.io/component": "validator"}


def node_config(name: str, index: int, nodes: int, tls: bool) -> dict[str, Any]:
    """config.json of validator ``index`` inside its pod (node.config.NodeConfig.load)."""
    config: dict[str, Any] = {
        "index": index, "api": f"0.0.0.0:{API_PORT}", "p2p": f"0.0.0.0:{P2P_PORT}",
        "genesis": f"{GENESIS_DIR}/genesis.json", "key": f"{KEY_DIR}/node.pem",
        "store": f"{DATA_DIR}/chain.db",
        "peers": {str(j): f"{pod_host(name, j)}:{P2P_PORT}" for j in range(nodes) if j != index},
    }
    if tls:
        config["tls"] = {"ca": f"{GENESIS_DIR}/ca.pem", "cert": f"{KEY_DIR}/tls.crt",
                         "key": f"{KEY_DIR}/tls.key"}
    return config


def _probe(path: str, scheme: str, period: int, failures: int, timeout: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "api", "scheme": scheme},
            "periodSeconds": period, "timeoutSeconds": timeout, "failureThreshold": failures}


def statefulset(name: str, chain_id: str, index: int, tls: bool, image: str,
                storage: str) -> dict[str, Any]:
    """Validator ``index``: one pod, its store on a PersistentVolumeClaim."""
    node = f"{name}-node{index}"
    scheme = "HTTPS" if tls else "HTTP"
    container = {
        "name": "ledger",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["node", "run", NODE_DIR],
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"},
                {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
        "ports": [{"name": "api", "containerPort": API_PORT, "protocol": "TCP"},
                  {"name": "p2p", "containerPort": P2P_PORT, "protocol": "TCP"}],
        # /healthz answers once the store is open and the API serves; it skips every request
        # limit, so a busy node is not restarted for being busy (docs/api.md#limits).
        # /readyz only once the node is caught up (linked with a quorum, within a height of
        # its peers): the API Service sends clients to no node still syncing after a restart
        # (the headless peer Service publishes not-ready pods, so peers still find it).
        "startupProbe": _probe("/healthz", scheme, period=5, failures=120, timeout=3),
        "readinessProbe": _probe("/readyz", scheme, period=5, failures=3, timeout=3),
        "livenessProbe": _probe("/healthz", scheme, period=10, failures=6, timeout=5),
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi",
                                   "ephemeral-storage": "64Mi"},
                      "limits": {"cpu": "2", "memory": "2Gi", "ephemeral-storage": "256Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "privileged": False,
                            "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [
            {"name": "config", "mountPath": NODE_DIR, "readOnly": True},
            {"name": "genesis", "mountPath": GENESIS_DIR, "readOnly": True},
            {"name": "key", "mountPath": KEY_DIR, "readOnly": True},
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        # No LEDGER_API_* / LEDGER_P2P_* service variables next to the LEDGER_* settings.
        "enableServiceLinks": False,
        # A node's stop waits up to 17 s (API, consensus step, other tasks) before it writes
        # its state and closes the store (docker-compose.yml stop_grace_period).
        "terminationGracePeriodSeconds": 30,
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
                            "fsGroup": UID, "fsGroupChangePolicy": "OnRootMismatch",
                            "seccompProfile": {"type": "RuntimeDefault"}},
        # Validators on different machines: one machine's loss costs one validator.
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {
                "topologyKey": "kubernetes.io/hostname",
                "labelSelector": {"matchLabels": _selector(name)}}}]}},
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": f"{node}-config"}},
            {"name": "genesis", "configMap": {"name": f"{name}-genesis"}},
            # group-readable (fsGroup) only: the files are root-owned in the pod
            {"name": "key", "secret": {"secretName": f"{node}-key", "defaultMode": 0o440}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": node, "labels": _labels(name, chain_id, index)},
        "spec": {
            "replicas": 1,
            "serviceName": f"{name}-p2p",
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": {**_selector(name),
                                         "ledger/validator": f"node{index}"}},
            # a validator's store outlives its StatefulSet: delete the claim by hand
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain",
                                                     "whenScaled": "Retain"},
            "template": {"metadata": {"labels": _labels(name, chain_id, index)},
                         "spec": pod_spec},
            "volumeClaimTemplates": [{
                "metadata": {"name": "data", "labels": _labels(name, chain_id, index)},
                "spec": {"accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": storage}}}}],
        },
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def manifests(directory: Path, name: str = DEFAULT_NAME, image: str = DEFAULT_IMAGE,
              storage: str = DEFAULT_STORAGE) -> dict[str, list[dict[str, Any]]]:
    """The documents for the cluster in ``directory`` (its genesis, node keys, TLS files),
    by file name. Pure apart from reading those files."""
    check_name(name)
    genesis_raw = (directory / "genesis.json").read_text()
    genesis = json.loads(genesis_raw)
    chain_id = str(genesis["chain_id"])
    nodes = len(genesis["validators"])
    tls = (directory / "tls" / "ca.pem").exists()
    genesis_data = {"genesis.json": genesis_raw}
    if tls:
        genesis_data["ca.pem"] = (directory / "tls" / "ca.pem").read_text()
    f = fault_tolerance(nodes)
    common = [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": f"{name}-genesis", "labels": _labels(name, chain_id)},
         "data": genesis_data},
        # Peer addressing: one DNS name per pod, published before the pod is ready (a
        # validator needs its peers to become useful).
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": f"{name}-p2p", "labels": _labels(name, chain_id)},
         "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                  "selector": _selector(name),
                  "ports": [{"name": "p2p", "port": P2P_PORT, "targetPort": "p2p"},
                            {"name": "api", "port": API_PORT, "targetPort": "api"}]}},
        # Clients: any ready validator's API.
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": f"{name}-api", "labels": _labels(name, chain_id)},
         "spec": {"type": "ClusterIP", "selector": _selector(name),
                  "ports": [{"name": "api", "port": API_PORT, "targetPort": "api"}]}},
        # At most f of n = 3f+1 validators evicted at once: the rest keep a quorum.
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
         "metadata": {"name": f"{name}-quorum", "labels": _labels(name, chain_id)},
         "spec": {"maxUnavailable": f, "selector": {"matchLabels": _selector(name)}}},
    ]
    files: dict[str, list[dict[str, Any]]] = {"cluster.yaml": common}
    for i in range(nodes):
        node_dir = directory / f"node{i}"
        node = f"{name}-node{i}"
        secret = {"node.pem": _b64((node_dir / "node.pem").read_bytes())}
        if tls:
            secret["tls.crt"] = _b64((node_dir / "tls.crt").read_bytes())
            secret["tls.key"] = _b64((node_dir / "tls.key").read_bytes())
        files[f"node{i}.yaml"] = [
            # PRIVATE KEYS: whoever reads this Secret (or this file) signs as validator i.
            {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
             "metadata": {"name": f"{node}-key", "labels": _labels(name, chain_id, i)},
             "data": secret},
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": f"{node}-config", "labels": _labels(name, chain_id, i)},
             "data": {"config.json": json.dumps(node_config(name, i, nodes, tls), indent=2)
                      + "\n"}},
            statefulset(name, chain_id, i, tls, image, storage),
        ]
    return files


HEADER = ("# Generated by `ledger cluster init --k8s` (docs/deploy.md). Apply with\n"
          "#   kubectl apply -n NAMESPACE -f {dir}\n")
SECRET_WARNING = ("# WARNING: this file holds a validator's PRIVATE KEY (a Secret, base64 is not\n"
                  "# encryption). Do not commit it; apply it, then keep it offline.\n")


def write_manifests(directory: Path, name: str = DEFAULT_NAME, image: str = DEFAULT_IMAGE,
                    storage: str = DEFAULT_STORAGE) -> list[Path]:
    """Write ``directory/k8s/*.yaml`` (private-key files mode 0600); returns the paths."""
    out = directory / "k8s"
    out.mkdir(exist_ok=True)
    paths = []
    for filename, docs in manifests(directory, name, image, storage).items():
        path = out / filename
        text = HEADER.format(dir=out)
        if any(d["kind"] == "Secret" for d in docs):
            text += SECRET_WARNING
        text += "".join("---\n" + to_yaml(d) for d in docs)
        path.write_text(text)
        if "Secret" in text:
            path.chmod(0o600)
        paths.append(path)
    return paths


# -- a small YAML emitter -----------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z_/][-A-Za-z0-9_./]*")
_RESERVED = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"})


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _RESERVED:
        return text
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


def _block(text: str) -> bool:
    """Written as a literal block (``|``): multi-line text ending in one newline."""
    return ("\n" in text.rstrip("\n") and text.endswith("\n") and not text.endswith("\n\n")
            and not text[:1].isspace() and all(c == "\n" or c.isprintable() for c in text)
            and not any(line != line.rstrip() for line in text.split("\n")))


def _emit(value: Any, indent: int, lines: list[str], prefix: str) -> None:
    pad = " " * indent
    if isinstance(value, dict) and value:
        first = True
        for k, v in value.items():
            head = (prefix if first else pad) + f"{_scalar(k)}:"
            first = False
            _emit_value(v, indent, lines, head)
    elif isinstance(value, list) and value:
        first = True
        for item in value:
            head = (prefix if first else pad) + "- "
            first = False
            if isinstance(item, dict | list) and item:
                _emit(item, indent + 2, lines, head)
            else:
                lines.append(head + _inline(item))
    else:
        lines.append(prefix + _inline(value))


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def _emit_value(value: Any, indent: int, lines: list[str], head: str) -> None:
    if isinstance(value, dict) and value:
        lines.append(head)
        _emit(value, indent + 2, lines, " " * (indent + 2))
    elif isinstance(value, list) and value:
        lines.append(head)
        _emit(value, indent, lines, " " * indent)
    elif isinstance(value, str) and _block(value):
        lines.append(head + " |")
        lines.extend((" " * (indent + 2) + line) if line else ""
                     for line in value[:-1].split("\n"))
    else:
        lines.append(f"{head} {_inline(value)}")


def to_yaml(doc: dict[str, Any]) -> str:
    """``doc`` (dicts, lists, strings, ints, bools, None) as block-style YAML."""
    lines: list[str] = []
    _emit(doc, 0, lines, "")
    return "\n".join(lines) + "\n"
