"""The claims of the tokens a sign-in produces (pure): v2.0 id_tokens and API access tokens.

ID token ("ID token claims reference", v2.0): ``aud`` = the app's client id, ``iss`` =
``<authority host>/{tid}/v2.0``, ``iat``/``nbf``/``exp``, ``nonce`` (echoing the authorize
request), ``tid``, ``sub`` (pairwise: unique per user *and* app), ``ver`` "2.0", ``uti``; with
the ``profile`` scope also ``oid``, ``name`` and ``preferred_username``; ``roles`` only when the
user holds app roles on the app (no empty array); ``auth_time`` when ``max_age`` was requested.

API access token ("Access token claims reference", v2.0): ``aud`` is always the API's client
id, ``azp``/``azpacr`` name the caller and how it authenticated (1 secret, 2 certificate),
``oid``/``sub`` its service principal in that tenant, ``idtyp`` "app", ``roles`` the app roles
assigned to that service principal (absent when there are none).
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

PAIRWISE_SALT = b"dvmirror-simulator-pairwise"


def pairwise_subject(tenant_id: str, oid: str, client_id: str) -> str:
    """A stable 43-character subject, different for each app a user signs in to."""
    digest = hashlib.sha256(
        PAIRWISE_SALT + f"{tenant_id}:{oid}:{client_id}".lower().encode()
    ).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def id_token_claims(
    *,
    issuer: str,
    client_id: str,
    tenant_id: str,
    oid: str,
    name: str,
    upn: str,
    roles: Sequence[str],
    scopes: Sequence[str],
    nonce: str | None,
    now: int,
    lifetime: int,
    auth_time: int | None = None,
) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "aud": client_id,
        "iss": issuer,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
    }
    if nonce is not None:
        claims["nonce"] = nonce
    if "profile" in scopes:
        claims.update(name=name, oid=oid, preferred_username=upn)
    if "email" in scopes:
        claims["email"] = upn
    if roles:
        claims["roles"] = list(roles)
    if auth_time is not None:
        claims["auth_time"] = auth_time
    claims.update(
        sub=pairwise_subject(tenant_id, oid, client_id),
        tid=tenant_id,
        uti=uuid.uuid4().hex[:22],
        ver="2.0",
    )
    return claims


def app_token_claims(
    *,
    issuer: str,
    audience: str,
    tenant_id: str,
    client_id: str,
    principal_id: str,
    roles: Sequence[str],
    credential: str,
    now: int,
    lifetime: int,
) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "aud": audience,
        "iss": issuer,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "azp": client_id,
        "azpacr": "2" if credential == "certificate" else "1",
        "idtyp": "app",
        "oid": principal_id,
        "sub": principal_id,
        "tid": tenant_id,
        "uti": uuid.uuid4().hex[:22],
        "ver": "2.0",
    }
    if roles:
        claims["roles"] = list(roles)
    return claims


def user_token_claims(
    *,
    issuer: str,
    audience: str,
    tenant_id: str,
    client_id: str,
    oid: str,
    name: str,
    upn: str,
    scp: str,
    roles: Sequence[str],
    now: int,
    lifetime: int,
) -> dict[str, Any]:
    """A delegated (user) access token for a resource: ``scp`` and the user's ``roles``."""
    claims: dict[str, Any] = {
        "aud": audience,
        "iss": issuer,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "azp": client_id,
        "azpacr": "1",
        "idtyp": "user",
        "name": name,
        "oid": oid,
        "preferred_username": upn,
        "scp": scp,
        "sub": pairwise_subject(tenant_id, oid, audience),
        "tid": tenant_id,
        "uti": uuid.uuid4().hex[:22],
        "ver": "2.0",
    }
    if roles:
        claims["roles"] = list(roles)
    return claims
