"""Id_tokens minted on demand, genuine or deliberately bad, for a relying party's refusal tests.

`mint` starts from the id_token the simulator would issue to `user` for `app` (claims.py),
applies claim overrides (a value of ``None`` removes the claim) and signs it one of these ways:

- ``active``: the current signing key; a valid token, unless the overrides spoil it
  (``aud``, ``iss`` not matching ``tid``, ``exp`` in the past, a foreign ``nonce``, …);
- ``unknown-key``: a fresh RSA key under a ``kid`` no JWKS has ever published;
- ``forged``: a fresh RSA key under the *active* key's ``kid`` (the signature cannot verify);
- ``none``: header ``alg: none`` and an empty signature (RFC 7519 unsecured JWT);
- ``hs256-public-key``: HS256 whose HMAC secret is the active public key's PEM, the classic
  algorithm-confusion forgery (PyJWT refuses to build it, so it is assembled here).

The last three are built by hand on purpose: they are what an attacker would send.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sync.simulator.claims import id_token_claims
from sync.simulator.identities import UserSpec, user_roles
from sync.simulator.scenario import AppSpec, TenantSpec
from sync.simulator.tokens import TokenAuthority

SIGNINGS = ("active", "unknown-key", "forged", "none", "hs256-public-key")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(
    tokens: TokenAuthority,
    *,
    tenant: TenantSpec,
    user: UserSpec,
    app: AppSpec,
    nonce: str | None,
    overrides: Mapping[str, Any],
    signing: str,
    lifetime: int,
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The token, its header and its claims."""
    if signing not in SIGNINGS:
        raise ValueError(f"signing must be one of {', '.join(SIGNINGS)}")
    claims = id_token_claims(
        issuer=tokens.issuer(tenant.tenant_id),
        client_id=app.client_id,
        tenant_id=tenant.tenant_id,
        oid=user.oid,
        name=user.name,
        upn=user.upn,
        roles=user_roles(user, app),
        scopes=("openid", "profile"),
        nonce=nonce,
        now=int(tokens.now()),
        lifetime=lifetime,
    )
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    active = tokens.keys.active
    if signing == "active":
        header = {"typ": "JWT", "alg": "RS256", "kid": active.kid}
        return tokens.sign(claims), header, claims
    if signing in ("unknown-key", "forged"):
        kid = active.kid if signing == "forged" else _b64url(secrets.token_bytes(20))
        header = {"typ": "JWT", "alg": "RS256", "kid": kid}
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        token = jwt.encode(claims, key, algorithm="RS256", headers={"typ": "JWT", "kid": kid})
        return token, header, claims
    header = {"typ": "JWT", "alg": "none" if signing == "none" else "HS256", "kid": active.kid}
    signing_input = f"{_b64url(orjson.dumps(header))}.{_b64url(orjson.dumps(claims))}"
    if signing == "none":
        return signing_input + ".", header, claims
    secret = active.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}", header, claims
