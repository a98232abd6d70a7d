"""A throwaway certificate authority and one server certificate for the simulator.

The simulated Entra authority and every simulated environment serve HTTPS (MSAL refuses plain
http authorities), so each simulator run makes a fresh CA and a leaf certificate for
``127.0.0.1`` and ``localhost``, written as PEM files. Clients trust the simulator by pointing
their CA bundle at ``ca.pem``; TLS verification stays on everywhere.

``DVMIRROR_SIMULATOR_TLS_NAMES`` (DNS names separated by commas or spaces) adds names to the
server certificate, for clients that hard-code a public host such as
``login.microsoftonline.com``: inside a private network namespace whose hosts file maps that
name to 127.0.0.1, they reach the simulator and verify it against ``ca.pem`` without changes.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sync.errors import ConfigError

VALIDITY = dt.timedelta(days=30)
EXTRA_NAMES_VARIABLE = "DVMIRROR_SIMULATOR_TLS_NAMES"
_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)(?:\*\.)?(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*"
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
)


@dataclass(frozen=True)
class ServerTLS:
    """Where the PEM files of one simulator run live."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        """The TLS context every simulated HTTPS server listens with."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only this run's CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def write_private(path: Path, data: bytes) -> None:
    """Write a file readable by the owner only (keys, secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    path.chmod(0o600)


def extra_dns_names(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The DNS names ``DVMIRROR_SIMULATOR_TLS_NAMES`` adds to the server certificate."""
    raw = (os.environ if environ is None else environ).get(EXTRA_NAMES_VARIABLE, "")
    names = tuple(dict.fromkeys(n.lower() for n in re.split(r"[,\s]+", raw) if n))
    for name in names:
        if not _DNS_NAME.match(name):
            raise ConfigError(f"{EXTRA_NAMES_VARIABLE}: {name!r} is not a DNS name")
    return names


def make_tls(directory: Path, extra_names: Sequence[str] | None = None) -> ServerTLS:
    """Create a CA and a server certificate under `directory` for 127.0.0.1, ::1, localhost
    and `extra_names` (by default the names in ``DVMIRROR_SIMULATOR_TLS_NAMES``)."""
    names = extra_dns_names() if extra_names is None else tuple(extra_names)
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dvmirror simulator CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    *(x509.DNSName(name) for name in names if name != "localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                    x509.IPAddress(ipaddress.IPv6Address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    tls = ServerTLS(
        ca_file=directory / "ca.pem",
        cert_file=directory / "server.pem",
        key_file=directory / "server.key",
    )
    tls.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    tls.cert_file.write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    write_private(
        tls.key_file,
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return tls
