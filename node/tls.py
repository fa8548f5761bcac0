"""TLS for peer links and the API: a cluster CA and one certificate per node.

``ledger cluster init --tls`` writes ``DIR/tls/ca.pem`` (the cluster's certificate
authority) and, per node, ``tls.crt``/``tls.key`` valid for 127.0.0.1, localhost and
``node{i}`` (the docker-compose service name). Validators still authenticate each other by
their keys in the peer handshake; TLS adds confidentiality and protects the API.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALIDITY = datetime.timedelta(days=3650)


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def make_ca(directory: Path, name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new CA certificate (``ca.pem``) and key (``ca.key``) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} cluster CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    (directory / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(directory / "ca.key", key)
    return cert, key


def make_node_cert(directory: Path, node: str, ca: x509.Certificate,
                   ca_key: ec.EllipticCurvePrivateKey,
                   extra_names: tuple[str, ...] = ()) -> None:
    """``tls.crt`` and ``tls.key`` for ``node`` (and ``extra_names``: DNS names, e.g. its
    Kubernetes pod's, or IP addresses, e.g. the host it runs on: each becomes the SAN of
    its kind), signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [
        x509.DNSName(node), x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    for extra in dict.fromkeys(extra_names):  # in order, once each
        name: x509.GeneralName = x509.DNSName(extra)
        with contextlib.suppress(ValueError):
            name = x509.IPAddress(ipaddress.ip_address(extra.strip("[]")))
        if name not in names:
            names.append(name)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(directory / "tls.key", key)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS for a listener (peer links)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def client_context(ca: Path) -> ssl.SSLContext:
    """TLS for a dialer, trusting only the cluster CA."""
    return ssl.create_default_context(cafile=str(ca))
