"""Client credentials of the simulated app registrations.

Each app of the scenario gets, at start, either a random client secret or an RSA key with a
self-signed certificate. The files go to the state directory with mode 0600 (what dvmirror's
configuration points at); the simulated Entra keeps the secret or the certificate's public
key and thumbprints to check what clients send.

Like a real app registration's ``passwordCredentials``, a secret app may hold several secrets at
once, each with its own id (a GUID, as Entra's ``keyId``): the admin API adds one (a new file
beside the first) or revokes one (the token endpoint refuses it from then on; tokens already
issued stay valid until they expire). A secret is never kept in memory: it is read from its
file each time a client presents one.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from sync.simulator.scenario import AppSpec
from sync.simulator.tls import write_private


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class AppCredential:
    """What the simulator knows about one app's credential (the secret is never logged)."""

    client_id: str
    kind: str  # "secret" | "certificate"
    secret_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    certificate: x509.Certificate | None = None
    secret_id: str | None = None  # the id of the first secret (`secret_file`)
    # Every secret that is still valid, id → file (the first one included until it is revoked).
    live_secrets: dict[str, Path] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.secret_file is not None and self.secret_id is not None:
            self.live_secrets.setdefault(self.secret_id, self.secret_file)

    def secret(self) -> str | None:
        """The first secret, read from its file (it is not kept in memory twice)."""
        return self.secret_file.read_text(encoding="utf-8").strip() if self.secret_file else None

    def accepts_secret(self, presented: str) -> bool:
        """Whether `presented` is one of the live secrets, compared in constant time with
        every one of them (no early exit: the time does not tell which one matched)."""
        matched = False
        for path in list(self.live_secrets.values()):
            try:
                registered = path.read_text(encoding="utf-8").strip()
            except OSError:  # a file removed behind the simulator's back matches nothing
                continue
            matched |= hmac.compare_digest(presented.encode(), registered.encode())
        return matched

    def add_secret(self) -> tuple[str, Path]:
        """A new random secret in a new 0600 file beside the first one: (its id, its file)."""
        if self.kind != "secret" or self.secret_file is None:
            raise ValueError(f"app {self.client_id} signs in with a certificate, not a secret")
        secret_id = str(uuid.uuid4())
        path = self.secret_file.with_name(f"{self.client_id}.{secret_id}.secret")
        write_private(path, secrets.token_urlsafe(30).encode())
        self.live_secrets[secret_id] = path
        return secret_id, path

    def revoke_secret(self, secret_id: str) -> bool:
        """Stop accepting one secret (its file stays, as the operator's copy would). False
        when there is no live secret with that id."""
        return self.live_secrets.pop(secret_id.lower(), None) is not None

    @property
    def x5t(self) -> str | None:
        """base64url SHA-1 thumbprint, as in the ``x5t`` assertion header."""
        if self.certificate is None:
            return None
        return b64url(self.certificate.fingerprint(hashes.SHA1()))  # noqa: S303 - x5t is SHA-1 by spec

    @property
    def x5t_s256(self) -> str | None:
        """base64url SHA-256 thumbprint, as in the ``x5t#S256`` assertion header."""
        if self.certificate is None:
            return None
        return b64url(self.certificate.fingerprint(hashes.SHA256()))

    @property
    def thumbprint_sha1_hex(self) -> str | None:
        if self.certificate is None:
            return None
        return self.certificate.fingerprint(hashes.SHA1()).hex()  # noqa: S303

    def ready_info(self) -> dict[str, object]:
        """The app's entry in the simulator's ready line."""
        info: dict[str, object] = {"client_id": self.client_id, "credential": self.kind}
        if self.kind == "secret":
            info["client_secret"] = self.secret()
            info["secret_file"] = str(self.secret_file)
            info["secret_id"] = self.secret_id
        else:
            info["certificate"] = {
                "cert": str(self.cert_file),
                "key": str(self.key_file),
                "thumbprint_sha1": self.thumbprint_sha1_hex,
            }
        return info


def make_credential(app: AppSpec, directory: Path) -> AppCredential:
    """Generate the secret or the certificate of `app` into `directory`."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if app.credential == "secret":
        path = directory / f"{app.client_id}.secret"
        write_private(path, secrets.token_urlsafe(30).encode())
        return AppCredential(
            client_id=app.client_id, kind="secret", secret_file=path, secret_id=str(uuid.uuid4())
        )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dvmirror {app.client_id}")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    cert_file = directory / f"{app.client_id}.crt.pem"
    key_file = directory / f"{app.client_id}.key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    write_private(
        key_file,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return AppCredential(
        client_id=app.client_id,
        kind="certificate",
        cert_file=cert_file,
        key_file=key_file,
        certificate=certificate,
    )
