"""An independent OpenID Connect provider for the console's tests, written from Microsoft's
documentation of the identity platform (v2.0 endpoints), not from dvmirror's simulator.

It serves, per tenant (GUID or domain) and for `organizations`:
`/{tenant}/v2.0/.well-known/openid-configuration` (issuer `https://<host>/{tid}/v2.0`; for
`organizations` the documented `{tenantid}` template), `/{tenant}/discovery/v2.0/keys` (JWKS with
`kid`), `/{tenant}/oauth2/v2.0/authorize` (a `login_hint` naming a user answers at once with a
code; no picker), `/{tenant}/oauth2/v2.0/token` (`authorization_code`: client secret, single-use
code that expires after 10 minutes, redirect_uri match, PKCE S256; errors as `invalid_grant`
with AADSTS codes) and `/{tenant}/oauth2/v2.0/logout`.

Test knobs: `overrides` (claims to change in the next id_tokens), `signing` ("rs256", "other-key",
"none", "hs256-public"), `rotate()` (a new signing key and kid; the old one leaves the JWKS) and
`mint()` for bearer tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
import orjson
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

CODE_LIFETIME = 600


@dataclass(frozen=True)
class User:
    upn: str
    name: str
    oid: str
    tenant_id: str
    roles: tuple[str, ...] = ()


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    user: User
    expires: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class IdentityProvider:
    host: str  # https://127.0.0.1:<port>, set once listening
    clients: dict[str, str]  # client id -> secret
    tenants: dict[str, str]  # domain -> tenant id
    users: list[User]
    overrides: dict[str, Any] = field(default_factory=dict)
    signing: str = "rs256"
    codes: dict[str, _Code] = field(default_factory=dict)
    issued: int = 0
    keys_served: int = 0  # JWKS requests answered

    def __post_init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex
        self.other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    # -- knobs ------------------------------------------------------------------------------

    def rotate(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex

    def issuer(self, tid: str) -> str:
        return f"{self.host}/{tid}/v2.0"

    def sign(self, claims: dict[str, Any], signing: str | None = None) -> str:
        mode = signing or self.signing
        if mode == "rs256":
            return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})
        if mode == "other-key":
            return jwt.encode(claims, self.other_key, algorithm="RS256", headers={"kid": self.kid})
        payload = _b64(orjson.dumps(claims))
        if mode == "none":
            return f"{_b64(orjson.dumps({'alg': 'none', 'typ': 'JWT'}))}.{payload}."
        if mode == "hs256-public":  # the classic confusion: HMAC keyed with the public key PEM
            header = _b64(orjson.dumps({"alg": "HS256", "typ": "JWT", "kid": self.kid}))
            public = self.key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            mac = hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha256).digest()
            return f"{header}.{payload}.{_b64(mac)}"
        raise ValueError(mode)

    def user_claims(self, user: User, audience: str, nonce: str | None) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "ver": "2.0",
            "aud": audience,
            "iss": self.issuer(user.tenant_id),
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "tid": user.tenant_id,
            "oid": user.oid,
            "sub": hashlib.sha256(f"{user.oid}{audience}".encode()).hexdigest()[:43],
            "preferred_username": user.upn,
            "name": user.name,
            "uti": secrets.token_urlsafe(16),
        }
        if user.roles:
            claims["roles"] = list(user.roles)
        if nonce is not None:
            claims["nonce"] = nonce
        return claims

    def mint(self, user: User, audience: str, **changes: Any) -> str:
        """A bearer token for the console's API, as Entra would issue it for the app's API."""
        claims = {**self.user_claims(user, audience, None), "azp": "automation", **changes}
        return self.sign(claims)

    # -- HTTP -------------------------------------------------------------------------------

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._metadata)
        app.router.add_get("/{tenant}/discovery/v2.0/keys", self._keys)
        app.router.add_get("/{tenant}/oauth2/v2.0/authorize", self._authorize)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        app.router.add_get("/{tenant}/oauth2/v2.0/logout", self._logout)
        return app

    def _tid(self, name: str) -> str | None:
        if name in ("organizations", "common"):
            return "{tenantid}"
        if name in self.tenants.values():
            return name
        return self.tenants.get(name)

    async def _metadata(self, request: web.Request) -> web.Response:
        name = request.match_info["tenant"]
        tid = self._tid(name)
        if tid is None:
            return _error(400, "invalid_tenant", 90002, f"Tenant '{name}' not found.")
        base = f"{self.host}/{name}"
        return web.json_response(
            {
                "issuer": self.issuer(tid),
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "response_types_supported": ["code", "id_token", "code id_token"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "tenant_region_scope": "EU",
            }
        )

    async def _keys(self, _: web.Request) -> web.Response:
        self.keys_served += 1
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "kty": "RSA"})
        return web.json_response({"keys": [jwk]})

    async def _authorize(self, request: web.Request) -> web.Response:
        q = request.query
        client_id = q.get("client_id", "")
        if client_id not in self.clients:
            return _error(400, "unauthorized_client", 700016, "Application not found.")
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
            return _error(400, "invalid_request", 900144, "code + PKCE S256 expected.")
        user = next((u for u in self.users if u.upn == q.get("login_hint")), None)
        if user is None:
            return web.Response(text="pick a user (tests pass login_hint)", status=200)
        code = secrets.token_urlsafe(32)
        self.codes[code] = _Code(
            client_id,
            q.get("redirect_uri", ""),
            q.get("code_challenge", ""),
            q.get("nonce"),
            user,
            time.time() + CODE_LIFETIME,
        )
        query = urlencode({"code": code, "state": q.get("state", ""), "session_state": "x"})
        raise web.HTTPFound(f"{q.get('redirect_uri')}?{query}")

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        client_id = str(form.get("client_id", ""))
        if self.clients.get(client_id) != form.get("client_secret"):
            return _error(401, "invalid_client", 7000215, "Invalid client secret provided.")
        if form.get("grant_type") != "authorization_code":
            return _error(400, "unsupported_grant_type", 70003, "Only authorization_code here.")
        grant = self.codes.pop(str(form.get("code", "")), None)  # single use
        if grant is None or grant.expires < time.time():
            return _error(
                400, "invalid_grant", 54005, "OAuth2 Authorization code was already redeemed."
            )
        if grant.redirect_uri != form.get("redirect_uri") or grant.client_id != client_id:
            return _error(400, "invalid_grant", 50148, "The redirect URI does not match.")
        verifier = str(form.get("code_verifier", ""))
        if _b64(hashlib.sha256(verifier.encode()).digest()) != grant.challenge:
            return _error(400, "invalid_grant", 501481, "The Code_Verifier does not match.")
        claims = {**self.user_claims(grant.user, client_id, grant.nonce), **self.overrides}
        claims = {k: v for k, v in claims.items() if v is not None}
        self.issued += 1
        return web.json_response(
            {
                "token_type": "Bearer",
                "scope": "openid profile",
                "expires_in": 3600,
                "ext_expires_in": 3600,
                "access_token": secrets.token_urlsafe(24),
                "id_token": self.sign(claims),
            },
            headers={"Cache-Control": "no-store"},
        )

    async def _logout(self, request: web.Request) -> web.Response:
        return web.Response(
            text=f"signed out; back to {request.query.get('post_logout_redirect_uri')}"
        )


def _error(status: int, error: str, code: int, text: str) -> web.Response:
    return web.json_response(
        {
            "error": error,
            "error_description": f"AADSTS{code}: {text}",
            "error_codes": [code],
            "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
            "trace_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4()),
        },
        status=status,
    )
