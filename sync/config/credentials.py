"""Credentials in the configuration: where secrets come from, certificates, the app registration.

Secrets are resolved at load time into pydantic `SecretStr`, whose repr and str are masked.
Certificates are read, matched with their key and fingerprinted once.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from sync.config.values import GUID, FrozenModel, check_url, validation_context


class SecretRef(FrozenModel):
    """Where a secret comes from. Exactly one of env, file or credential."""

    env: str | None = Field(default=None, description="environment variable holding the secret")
    file: Path | None = Field(default=None, description="file holding the secret")
    credential: str | None = Field(
        default=None, description="systemd LoadCredential= name, read from $CREDENTIALS_DIRECTORY"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        given = [k for k in ("env", "file", "credential") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                'give exactly one of env = "VAR", file = "path" or credential = "name"'
            )
        return self


def checked_ca_bundle(value: Path | None, info: ValidationInfo) -> Path | None:
    """A `ca_bundle` key: relative to the configuration file, readable, holding PEM."""
    if value is None:
        return None
    base: Path = validation_context(info).get("base_dir", Path.cwd())
    path = value if value.is_absolute() else base / value
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read CA bundle {path}: {exc}") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError(f"{path} holds no PEM certificate")
    return path


def resolve_secret(ref: SecretRef, info: ValidationInfo) -> SecretStr:
    ctx = validation_context(info)
    environ: Mapping[str, str] = ctx.get("environ", {})
    base: Path = ctx.get("base_dir", Path.cwd())
    warnings: list[str] = ctx.setdefault("warnings", [])
    if not ctx.get("resolve_secrets", True):
        # Commands that never authenticate (status, migrate) must work without the secret,
        # e.g. an admin outside the systemd unit that holds the credential.
        return SecretStr("")
    if ref.env is not None:
        value = environ.get(ref.env)
        if not value:
            raise ValueError(
                f"environment variable {ref.env} is not set; export it, or point "
                'client_secret at a file with { file = "…" }'
            )
        return SecretStr(value.strip())
    if ref.credential is not None:
        cred_dir = environ.get("CREDENTIALS_DIRECTORY")
        if not cred_dir:
            raise ValueError(
                f"credential {ref.credential!r} needs $CREDENTIALS_DIRECTORY (systemd "
                'LoadCredential=); outside systemd use { file = "…" } or { env = "…" }'
            )
        path = Path(cred_dir) / ref.credential
    else:
        assert ref.file is not None
        path = ref.file if ref.file.is_absolute() else base / ref.file
    try:
        mode = path.stat().st_mode
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read secret file {path}: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(
            f"secret file {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
            f"run: chmod 600 {path}"
        )
    if not value:
        raise ValueError(f"secret file {path} is empty")
    return SecretStr(value)


class Certificate(FrozenModel):
    """A PEM certificate and its private key, checked to belong together."""

    cert: Path
    key: Path
    key_password: SecretRef | None = None
    send_x5c: bool = Field(
        default=False, description="send the chain (x5c) for subject-name/issuer authentication"
    )
    # Filled in by validation; never part of the file.
    thumbprint_sha1: str = ""
    thumbprint_sha256: str = ""
    certificate_pem: str = Field(default="", repr=False)
    private_key_pem: SecretStr = SecretStr("")

    @model_validator(mode="after")
    def _load(self, info: ValidationInfo) -> Certificate:
        if self.thumbprint_sha1:
            return self
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization

        base: Path = validation_context(info).get("base_dir", Path.cwd())
        cert_path = self.cert if self.cert.is_absolute() else base / self.cert
        key_path = self.key if self.key.is_absolute() else base / self.key
        password = resolve_secret(self.key_password, info) if self.key_password else None
        try:
            cert_bytes = cert_path.read_bytes()
        except OSError as exc:
            raise ValueError(
                f"cannot read certificate {cert_path}: {exc.strerror or exc}"
            ) from None
        try:
            key_bytes = key_path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read private key {key_path}: {exc.strerror or exc}") from None
        try:
            certificate = x509.load_pem_x509_certificate(cert_bytes)
        except ValueError:
            raise ValueError(f"{cert_path} is not a PEM certificate") from None
        try:
            key = serialization.load_pem_private_key(
                key_bytes,
                password=password.get_secret_value().encode() if password else None,
            )
        except (ValueError, TypeError):
            raise ValueError(
                f"{key_path} is not a readable PEM private key (wrong key_password?)"
            ) from None
        cert_pub = certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        key_pub = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if cert_pub != key_pub:
            raise ValueError(f"private key {key_path} does not belong to certificate {cert_path}")
        unencrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        object.__setattr__(self, "cert", cert_path)
        object.__setattr__(self, "key", key_path)
        object.__setattr__(self, "thumbprint_sha1", certificate.fingerprint(hashes.SHA1()).hex())  # noqa: S303 - x5t is SHA-1 by spec
        object.__setattr__(
            self, "thumbprint_sha256", certificate.fingerprint(hashes.SHA256()).hex()
        )
        object.__setattr__(self, "certificate_pem", cert_bytes.decode())
        object.__setattr__(self, "private_key_pem", SecretStr(unencrypted))
        return self


class AppRegistration(FrozenModel):
    """The Entra ID app registration dvmirror authenticates as."""

    client_id: str
    client_secret: SecretStr | None = None
    certificate: Certificate | None = None
    authority_host: str = "https://login.microsoftonline.com"
    ca_bundle: Path | None = None
    allow_insecure: bool = False

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str) -> str:
        if not GUID.match(value):
            raise ValueError(f"{value!r} is not an Application (client) ID; it looks like a GUID")
        return value.lower()

    @field_validator("client_secret", mode="before")
    @classmethod
    def _secret(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            raise ValueError(
                'do not write the secret into the file; use { env = "VAR" }, '
                '{ file = "path" } or { credential = "name" }'
            )
        if isinstance(value, dict):
            return resolve_secret(SecretRef.model_validate(value), info)
        return value

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return checked_ca_bundle(value, info)

    @model_validator(mode="before")
    @classmethod
    def _not_both(cls, data: Any) -> Any:
        # Before the fields: a missing certificate file would otherwise hide the conflict.
        if isinstance(data, dict) and "client_secret" in data and "certificate" in data:
            raise ValueError("both client_secret and certificate are set: keep exactly one of them")
        return data

    @model_validator(mode="after")
    def _one_credential(self) -> AppRegistration:
        if (self.client_secret is None) == (self.certificate is None):
            raise ValueError("give exactly one of client_secret or certificate")
        check_url(self.authority_host, allow_insecure=self.allow_insecure, what="authority_host")
        object.__setattr__(self, "authority_host", self.authority_host.rstrip("/"))
        return self
