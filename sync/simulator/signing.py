"""The authority's token-signing keys: one set for every tenant, as Entra publishes it.

Entra signs every token (id_tokens, access tokens) of every tenant with one of a small set of
RSA keys published at each tenant's ``jwks_uri``; each key comes with a self-signed certificate,
its ``kid`` and ``x5t`` are the base64url SHA-1 thumbprint of that certificate, and keys roll
over: a new key is published, later starts to sign, and the old one stays published for a while
("Signing key rollover"). `SigningKeys` models that: `rotate` adds a key and makes it the one
that signs (the old one stays published), `retire` unpublishes an old key, so a relying party's
cached JWKS meets an unknown ``kid`` and must refetch.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import RSAAlgorithm


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    """One RSA key with its self-signed certificate; `kid` is the certificate's thumbprint."""

    kid: str
    private_key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    @classmethod
    def generate(cls) -> SigningKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "accounts.accesscontrol.sim")])
        now = dt.datetime.now(dt.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .sign(key, hashes.SHA256())
        )
        thumbprint = _b64url(certificate.fingerprint(hashes.SHA1()))  # noqa: S303 - x5t is SHA-1
        return cls(kid=thumbprint, private_key=key, certificate=certificate)

    def jwk(self) -> dict[str, Any]:
        """The published entry: kty, use, kid, x5t, n, e and x5c, as Entra's keys carry."""
        public: dict[str, Any] = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        return {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": public["n"],
            "e": public["e"],
            "x5c": [base64.b64encode(der).decode()],
        }


class SigningKeys:
    """The published keys, oldest first, and the one that signs now."""

    def __init__(self) -> None:
        first = SigningKey.generate()
        self._published: dict[str, SigningKey] = {first.kid: first}
        self._active = first.kid

    @property
    def active(self) -> SigningKey:
        return self._published[self._active]

    def published(self) -> list[str]:
        return list(self._published)

    def get(self, kid: str) -> SigningKey | None:
        return self._published.get(kid)

    def rotate(self) -> SigningKey:
        """Publish a new key and sign with it from now on; the old keys stay published."""
        key = SigningKey.generate()
        self._published[key.kid] = key
        self._active = key.kid
        return key

    def retire(self, kid: str) -> bool:
        """Stop publishing a key (never the active one). False if it is not published."""
        if kid == self._active:
            raise ValueError(f"key {kid} signs now; rotate first, then retire the old one")
        return self._published.pop(kid, None) is not None

    def sign(self, claims: dict[str, Any], *, typ: str = "JWT") -> str:
        """An RS256 JWT signed by the active key, header ``typ``, ``alg`` and ``kid``."""
        key = self.active
        return jwt.encode(
            claims, key.private_key, algorithm="RS256", headers={"typ": typ, "kid": key.kid}
        )

    def jwks(self, issuer: str | None = None) -> dict[str, Any]:
        """The JWK set of every published key (Entra adds the issuer template to each)."""
        keys = []
        for key in self._published.values():
            entry = key.jwk()
            if issuer is not None:
                entry["issuer"] = issuer
            keys.append(entry)
        return {"keys": keys}
