"""``manage.py gencerts --out DIR --nodes n1,n2,n3``: a development CA and node certificates.

Writes ``ca.pem`` (the CA every node and client verifies against: ``CACHE_CA_BUNDLE``,
``CacheClient(ca_certs=)``, ``ClusterCache`` ``OPTIONS["CA_BUNDLE"]``), ``ca.key``, and for each
node ``<name>.pem`` and ``<name>.key`` for ``runnode --certfile --keyfile``. Each node
certificate names ``localhost``, ``127.0.0.1``, the node's name and the ``--hosts`` given, so
peers and clients can verify it. For development and tests: in production use your own CA.
Keys are written readable by the owner only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


def _write(path: Path, data: bytes, private: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def generate(out: Path, names: list[str], hosts: list[str], days: int) -> list[Path]:
    """Write the CA and one certificate per node into ``out``; the files written."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    until = now + dt.timedelta(days=days)

    def pem_key(key: Any) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cache cluster development CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    written = [out / "ca.pem", out / "ca.key"]
    _write(written[0], ca.public_bytes(serialization.Encoding.PEM))
    _write(written[1], pem_key(ca_key), private=True)
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        alt: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName(name)]
        for host in ["127.0.0.1", "::1", *hosts]:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt.append(x509.DNSName(host))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(until)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        cert_path, key_path = out / f"{name}.pem", out / f"{name}.key"
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        _write(key_path, pem_key(key), private=True)
        written += [cert_path, key_path]
    return written


class Command(BaseCommand):
    help = "Write a development CA and certificates for the named nodes."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", required=True, help="directory to write into")
        parser.add_argument("--nodes", required=True, help="node names, comma-separated")
        parser.add_argument(
            "--hosts", default="", help="more host names or addresses for every certificate"
        )
        parser.add_argument("--days", type=int, default=365, help="validity (365)")

    def handle(self, *args: Any, **options: Any) -> None:
        names = [n.strip() for n in options["nodes"].split(",") if n.strip()]
        if not names:
            raise CommandError("--nodes names at least one node")
        hosts = [h.strip() for h in options["hosts"].split(",") if h.strip()]
        for path in generate(Path(options["out"]), names, hosts, options["days"]):
            self.stdout.write(str(path))
