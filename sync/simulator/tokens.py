"""Access tokens the simulated Entra issues and the simulated environments accept.

Tokens are RS256 JWTs signed with the authority's current key (signing.py: one published set
for every tenant, rotated through the admin API). They carry the claims Dataverse relies on:
``aud`` (the environment URL taken from the requested scope), ``tid``, ``appid``/``azp`` (the
client id), ``oid`` (the service principal in that tenant), ``iss``, ``exp``, ``nbf``, ``iat``.
`TokenAuthority.verify` is what an environment calls before anything else; a token minted
for one environment is rejected by every other, and a token whose key is no longer published
is rejected too. The authority's clock has an offset (admin API) so that tests can age
authorization codes and tokens without waiting.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from sync.simulator.signing import SigningKeys

OID_NAMESPACE = uuid.UUID("5f6a2d35-8d3b-4a52-9f63-3d1e2b7c9a10")


class InvalidToken(Exception):
    """The bearer token cannot be accepted; `reason` is safe to show (no token text)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AccessClaims:
    """What an environment learns from a valid token."""

    audience: str
    tenant_id: str
    app_id: str
    object_id: str
    token_id: str
    issued_at: float
    expires_at: float


def normalise_resource(url: str) -> str:
    """``https://Org.example:443//`` and ``https://org.example`` name the same resource."""
    return url.strip().rstrip("/").lower()


def service_principal_id(tenant_id: str, app_id: str) -> str:
    """The stable object id of an app's service principal in one tenant."""
    return str(uuid.uuid5(OID_NAMESPACE, f"{tenant_id.lower()}:{app_id.lower()}"))


class TokenAuthority:
    """Signs access tokens and verifies them; one per simulator run."""

    def __init__(self, issuer_host: str, *, clock: Callable[[], float] = time.time) -> None:
        self._issuer_host = issuer_host.rstrip("/")
        self._clock = clock
        self.offset = 0.0  # seconds added to the clock (admin API: age codes and tokens)
        self.keys = SigningKeys()

    def now(self) -> float:
        return self._clock() + self.offset

    def issuer(self, tenant_id: str) -> str:
        return f"{self._issuer_host}/{tenant_id}/v2.0"

    def sign(self, claims: dict[str, Any]) -> str:
        """Any token's claims, signed RS256 by the active key (header typ, alg, kid)."""
        return self.keys.sign(claims)

    def issue(self, *, audience: str, tenant_id: str, app_id: str, lifetime: int) -> str:
        """Mint a token for `app_id` in `tenant_id`, valid for `lifetime` seconds."""
        now = int(self.now())
        claims: dict[str, Any] = {
            "aud": normalise_resource(audience),
            "iss": self.issuer(tenant_id),
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "tid": tenant_id,
            "appid": app_id,
            "azp": app_id,
            "oid": service_principal_id(tenant_id, app_id),
            "sub": service_principal_id(tenant_id, app_id),
            "idtyp": "app",
            "ver": "2.0",
            "uti": uuid.uuid4().hex,
        }
        return self.sign(claims)

    def verify(self, token: str, *, audience: str) -> AccessClaims:
        """Return the claims of a token valid for `audience`, or raise `InvalidToken`."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("the bearer token is not a JWT") from None
        key = self.keys.get(str(header.get("kid")))
        if key is None or header.get("alg") != "RS256":
            raise InvalidToken("the bearer token was not issued by this authority")
        try:
            claims = self._decode_with_clock(token, audience, key.private_key.public_key())
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the access token has expired") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("the access token was issued for another resource") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"the access token is invalid ({type(exc).__name__})") from None
        return AccessClaims(
            audience=str(claims["aud"]),
            tenant_id=str(claims["tid"]),
            app_id=str(claims["appid"]),
            object_id=str(claims["oid"]),
            token_id=str(claims.get("uti", "")),
            issued_at=float(claims["iat"]),
            expires_at=float(claims["exp"]),
        )

    def _decode_with_clock(
        self, token: str, audience: str, public_key: rsa.RSAPublicKey
    ) -> dict[str, Any]:
        """Verify signature and audience with PyJWT, time claims with the injected clock."""
        claims: dict[str, Any] = jwt.decode(
            token,
            public_key,
            algorithms=["RS256"],
            audience=normalise_resource(audience),
            options={
                "require": ["exp", "nbf", "iat", "aud", "tid", "appid", "oid"],
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
        now = self.now()
        if now >= float(claims["exp"]):
            raise jwt.ExpiredSignatureError("expired")
        if now < float(claims["nbf"]):
            raise jwt.ImmatureSignatureError("not yet valid")
        return claims

    def jwks(self) -> dict[str, Any]:
        """The published signing keys as a JWK set (served at every tenant's jwks_uri)."""
        return self.keys.jwks(issuer=f"{self._issuer_host}/{{tenantid}}/v2.0")
