"""The `[console]` section: where the web console listens, how it signs users in, who sees what.

Validated like the rest of the file (one clear line per problem). The session key is a secret
named as client secrets are (env, file or credential) and must hold at least 32 bytes; the
redirect URI the Entra registration needs is `<public_url>/auth/callback`.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr, ValidationInfo, field_validator, model_validator

from sync.config.credentials import AppRegistration, SecretRef, resolve_secret
from sync.config.values import (
    DOMAIN,
    GUID,
    FrozenModel,
    is_loopback_host,
    validation_context,
)

MIN_SESSION_KEY_BYTES = 32
CALLBACK_PATH = "/auth/callback"
APP_ROLE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$"


def check_listen(value: str, *, key: str) -> str:
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536 or not host:
        raise ValueError(f"{key} {value!r} is not host:port, e.g. 127.0.0.1:8080")
    return value.strip()


class ConsoleSettings(FrozenModel):
    """The web console (issue 22). Absent: `dvmirror run` serves no console."""

    listen: str = "127.0.0.1:8080"
    public_url: str
    tls_cert: Path | None = None
    tls_key: Path | None = None
    session_key: SecretStr
    admin_tenants: tuple[str, ...] = ()
    operator_role: str = "Mirror.Operator"
    viewer_role: str = "Mirror.Viewer"
    app: AppRegistration | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return check_listen(value, key="listen")

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"{value!r} is not an absolute https URL, like https://mirror.example")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError(f"{value!r} must be a plain origin and path (no credentials, ?, #)")
        if parts.scheme == "http" and not is_loopback_host(parts.hostname):
            raise ValueError(
                f"{value!r} must use https (plain http only for a loopback address, e.g. "
                "http://127.0.0.1:8080 beside a local simulator)"
            )
        return value.rstrip("/")

    @field_validator("session_key", mode="before")
    @classmethod
    def _session_key(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            raise ValueError(
                'do not write the session key into the file; use { env = "VAR" }, '
                '{ file = "path" } or { credential = "name" }'
            )
        if isinstance(value, dict):
            secret = resolve_secret(SecretRef.model_validate(value), info)
            resolving = validation_context(info).get("resolve_secrets", True)
            if resolving and len(secret.get_secret_value().encode()) < MIN_SESSION_KEY_BYTES:
                raise ValueError(
                    f"the session key must hold at least {MIN_SESSION_KEY_BYTES} bytes; make "
                    "one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
                )
            return secret
        return value

    @field_validator("admin_tenants")
    @classmethod
    def _admin_tenants(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not (GUID.match(item) or DOMAIN.match(item)):
                raise ValueError(f"{item!r} is neither a tenant GUID nor a verified domain")
        return tuple(item.lower() for item in value)

    @field_validator("operator_role", "viewer_role")
    @classmethod
    def _role(cls, value: str) -> str:
        if not re.match(APP_ROLE, value):
            raise ValueError(f"{value!r} is not an app role value, like Mirror.Operator")
        return value

    @model_validator(mode="after")
    def _tls_and_roles(self, info: ValidationInfo) -> ConsoleSettings:
        if self.operator_role == self.viewer_role:
            raise ValueError("operator_role and viewer_role must differ")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither (behind a proxy)")
        if self.tls_cert is not None and self.tls_key is not None:
            base: Path = validation_context(info).get("base_dir", Path.cwd())
            cert = self.tls_cert if self.tls_cert.is_absolute() else base / self.tls_cert
            key = self.tls_key if self.tls_key.is_absolute() else base / self.tls_key
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                context.load_cert_chain(cert, key)
            except (OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
                raise ValueError(
                    f"tls_cert {cert} / tls_key {key}: cannot load them as a matching PEM "
                    f"certificate and key ({reason})"
                ) from None
            object.__setattr__(self, "tls_cert", cert)
            object.__setattr__(self, "tls_key", key)
        return self

    @property
    def redirect_uri(self) -> str:
        return self.public_url + CALLBACK_PATH

    @property
    def secure_cookie(self) -> bool:
        """Secure cookies, except on a loopback http URL (a browser would never send them)."""
        return urlsplit(self.public_url).scheme == "https"

    def tls_context(self) -> ssl.SSLContext | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        return context
