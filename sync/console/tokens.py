"""Validating Entra ID tokens (id_tokens from the sign-in, bearer tokens for the JSON API).

Everything cryptographic is PyJWT's: the signature is checked with RS256 only (so `none` and
HS256 signed with the public key are refused), against the keys at the jwks_uri of the token's
own tenant (from that tenant's OpenID configuration on the authority host). Keys are cached;
a `kid` the cache does not know refetches the set, so a key rotation is survived, but at most
once per KID_REFETCH_INTERVAL per jwks_uri: tokens with made-up kids cannot make us hammer
the authority (a real rotation right after such a token waits out the interval). `aud`
must be the client id (or, for bearer tokens, the App ID URI), `iss` the issuer template filled
in with the token's own `tid`, as Microsoft documents for multi-tenant apps; exp/nbf allow at
most five minutes of clock skew. What the token says about the user becomes an `Identity`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import jwt

from sync.config.values import GUID

ALGORITHMS = ("RS256",)
LEEWAY_SECONDS = 300  # the documented clock skew allowance; never more
KID_REFETCH_INTERVAL = 300.0  # seconds between refetches for an unknown kid
METADATA_TTL = 3600.0
FETCH_TIMEOUT = 10.0
TENANT_PLACEHOLDERS = ("{tenantid}", "{tenant}")


class TokenRefused(Exception):
    """A token that cannot be accepted; `reason` is safe to show and log (no token text)."""

    def __init__(self, reason: str, *, tenant_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tenant_id = tenant_id


@dataclass(frozen=True)
class Identity:
    """Who a valid token names."""

    oid: str
    tid: str
    name: str
    username: str
    roles: tuple[str, ...]
    nonce: str | None
    token_id: str | None  # jti, or Entra's uti
    expires_at: float


@dataclass
class _Cached:
    value: dict[str, Any]
    fetched_at: float


class DiscoveryClient:
    """Fetches OpenID configurations and JWK sets from the authority host, and caches them."""

    def __init__(
        self,
        authority_host: str,
        *,
        ssl_context: ssl.SSLContext | bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.authority_host = authority_host.rstrip("/")
        self._ssl = ssl_context
        self._clock = clock
        self._metadata: dict[str, _Cached] = {}
        self._keys: dict[str, _Cached] = {}
        self._kid_refetched_at: dict[str, float] = {}  # jwks_uri -> when, for an unknown kid
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _get_json(self, url: str) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT),
                connector=aiohttp.TCPConnector(ssl=self._ssl),
            )
        try:
            async with self._session.get(url) as response:
                if response.status != 200:
                    raise TokenRefused(f"{url} answered HTTP {response.status}")
                document = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise TokenRefused(f"cannot read {url}: {type(exc).__name__}") from None
        if not isinstance(document, dict):
            raise TokenRefused(f"{url} did not answer a JSON object")
        return document

    async def metadata(self, tenant: str) -> dict[str, Any]:
        """The OpenID configuration of one tenant (GUID or domain), cached for an hour."""
        cached = self._metadata.get(tenant)
        if cached is not None and self._clock() - cached.fetched_at < METADATA_TTL:
            return cached.value
        where = quote(tenant, safe=".-")
        url = f"{self.authority_host}/{where}/v2.0/.well-known/openid-configuration"
        document = await self._get_json(url)
        for key in ("issuer", "jwks_uri", "authorization_endpoint"):
            if not isinstance(document.get(key), str):
                raise TokenRefused(f"{url} has no {key}")
        self._metadata[tenant] = _Cached(document, self._clock())
        return document

    async def signing_key(self, jwks_uri: str, kid: str) -> jwt.PyJWK:
        """The key `kid` of a JWK set; an unknown kid refetches the set (rotation), at most
        once per KID_REFETCH_INTERVAL per jwks_uri."""
        async with self._lock:
            cached = self._keys.get(jwks_uri)
            key = _find(cached.value, kid) if cached else None
            now = self._clock()
            if key is None and cached is not None:
                last = self._kid_refetched_at.get(jwks_uri)
                if last is not None and now - last < KID_REFETCH_INTERVAL:
                    raise TokenRefused(f"no signing key {kid!r} at the tenant's jwks_uri")
                self._kid_refetched_at[jwks_uri] = now
            if key is None:
                document = await self._get_json(jwks_uri)
                self._keys[jwks_uri] = _Cached(document, self._clock())
                key = _find(document, kid)
        if key is None:
            raise TokenRefused(f"no signing key {kid!r} at the tenant's jwks_uri")
        return key

    async def tenant_id_of(self, tenant: str) -> str:
        """A tenant's directory GUID: itself, or read from its domain's OpenID configuration."""
        if GUID.match(tenant):
            return tenant.lower()
        issuer = str((await self.metadata(tenant))["issuer"])
        for part in issuer.rstrip("/").split("/"):
            if GUID.match(part):
                return part.lower()
        raise TokenRefused(f"the OpenID configuration of {tenant} names no tenant id")


def _find(document: Mapping[str, Any], kid: str) -> jwt.PyJWK | None:
    for entry in document.get("keys") or ():
        if isinstance(entry, dict) and entry.get("kid") == kid:
            try:
                return jwt.PyJWK.from_dict(entry)
            except jwt.PyJWTError:
                return None
    return None


def expected_issuer(template: str, tenant_id: str) -> str:
    """Microsoft's multi-tenant rule: the issuer with `{tenantid}` replaced by the token's tid."""
    issuer = template
    for placeholder in TENANT_PLACEHOLDERS:
        issuer = issuer.replace(placeholder, tenant_id)
    return issuer


class TokenValidator:
    """Validates a JWT from Entra ID for the given audiences, or raises TokenRefused."""

    def __init__(self, discovery: DiscoveryClient) -> None:
        self.discovery = discovery

    async def validate(
        self,
        token: str,
        *,
        audiences: Collection[str],
        tenant_allowed: Callable[[str], bool] | None = None,
    ) -> Identity:
        """The token's identity, or TokenRefused. With `tenant_allowed`, a token of another
        tenant is refused before anything is fetched for it (bearer tokens from anyone)."""
        try:
            header = jwt.get_unverified_header(token)
            # Read unverified only to learn which tenant's issuer and keys to check against;
            # nothing from it is trusted: the verified decode below pins RS256, aud and iss.
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise TokenRefused("not a JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise TokenRefused(f"signing algorithm {alg!r} is not accepted (RS256 only)")
        if not isinstance(kid, str) or not kid:
            raise TokenRefused("the token names no signing key (kid)")
        tid = unverified.get("tid")
        if not isinstance(tid, str) or not GUID.match(tid):
            raise TokenRefused("the token carries no tenant id (tid)")
        tid = tid.lower()
        if tenant_allowed is not None and not tenant_allowed(tid):
            raise TokenRefused(f"tenant {tid} is not configured", tenant_id=tid)
        metadata = await self.discovery.metadata(tid)
        issuer = expected_issuer(str(metadata["issuer"]), tid)
        if tid not in issuer.lower():
            raise TokenRefused(f"the issuer of tenant {tid} does not name it", tenant_id=tid)
        key = await self.discovery.signing_key(str(metadata["jwks_uri"]), kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                audience=list(audiences),
                issuer=issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "nbf", "iat", "iss", "aud", "tid", "oid"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRefused("the token has expired", tenant_id=tid) from None
        except jwt.ImmatureSignatureError:
            raise TokenRefused("the token is not valid yet (nbf)", tenant_id=tid) from None
        except jwt.InvalidAudienceError:
            raise TokenRefused(
                "the token was issued for another application", tenant_id=tid
            ) from None
        except jwt.InvalidIssuerError:
            raise TokenRefused(
                "the token's issuer does not match its tenant (iss and tid differ)", tenant_id=tid
            ) from None
        except jwt.InvalidSignatureError:
            raise TokenRefused("the token's signature does not verify", tenant_id=tid) from None
        except jwt.PyJWTError as exc:
            raise TokenRefused(
                f"the token is invalid ({type(exc).__name__})", tenant_id=tid
            ) from None
        return _identity(claims, tid)


def _identity(claims: Mapping[str, Any], tid: str) -> Identity:
    roles = claims.get("roles") or []
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise TokenRefused("the roles claim is not a list of strings", tenant_id=tid)
    token_id = claims.get("jti") or claims.get("uti")
    nonce = claims.get("nonce")
    return Identity(
        oid=str(claims["oid"]).lower(),
        tid=tid,
        name=str(claims.get("name") or claims.get("preferred_username") or claims["oid"]),
        username=str(claims.get("preferred_username") or ""),
        roles=tuple(roles),
        nonce=str(nonce) if nonce is not None else None,
        token_id=str(token_id) if token_id else None,
        expires_at=float(claims["exp"]),
    )
