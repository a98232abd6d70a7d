"""Signing users in: the OIDC authorization code flow with PKCE through MSAL, then our own checks.

MSAL's ConfidentialClientApplication (with the registration's secret or certificate) builds the
authorization request (`initiate_auth_code_flow`: state, nonce, PKCE S256) and redeems the code
(`acquire_token_by_auth_code_flow`: it checks the state and the nonce). MSAL is blocking, so it
runs in a thread. Scopes are `openid profile` only: no user token can reach Dataverse. MSAL does
not check the id_token's signature or claims, so `TokenValidator` does (tokens.py), and this
module adds what binds the token to this browser: the nonce of this browser's flow, and a code,
nonce or token id accepted once only. The id_token is dropped once it has been read.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from sync.config.credentials import AppRegistration
from sync.console.authz import Access, Directory, Principal
from sync.console.replay import ReplayGuard
from sync.console.tokens import LEEWAY_SECONDS, Identity, TokenRefused, TokenValidator

CODE_LIFETIME = 600.0
# MSAL adds offline_access to every request unless told not to: a console needs no refresh token.
EXCLUDED_SCOPES = ["offline_access"]
FLOW_KEYS = ("state", "redirect_uri", "scope", "code_verifier", "nonce", "claims_challenge")


class SignInRefused(Exception):
    """The sign-in cannot complete; `reason` is safe to show, `kind` picks the page."""

    def __init__(
        self, reason: str, *, kind: str = "refused", identity: Identity | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind  # refused | tenant | role
        self.identity = identity


@dataclass(frozen=True)
class SignedIn:
    principal: Principal
    access: Access


def nonce_claim(flow_nonce: str) -> str:
    """What MSAL sends as `nonce` (and Entra echoes in the id_token): SHA-256 of the flow's."""
    return hashlib.sha256(flow_nonce.encode("ascii")).hexdigest()


def _initiate(client: Any, redirect_uri: str, login_hint: str | None) -> dict[str, Any]:
    # The answer comes back as a query (a GET), not form_post: a cross-site POST from the
    # authority would not carry the SameSite=Lax session cookie that binds the flow to this
    # browser. The code is single-use and PKCE-bound, the callback answers with a redirect and
    # Referrer-Policy: no-referrer, and the console keeps no access log, so MSAL's advice
    # (a UserWarning on every call) is acknowledged here rather than followed.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="response_mode='form_post' is recommended")
        flow: dict[str, Any] = client.initiate_auth_code_flow(
            scopes=[],
            redirect_uri=redirect_uri,
            state=secrets.token_urlsafe(32),
            login_hint=login_hint,
            response_mode="query",
        )
    return flow


class SignIn:
    """One registration's sign-in; `authority` is `<authority_host>/organizations` by default."""

    def __init__(
        self,
        app: AppRegistration,
        *,
        redirect_uri: str,
        validator: TokenValidator,
        directory: Directory,
        replay: ReplayGuard,
        authority: str | None = None,
    ) -> None:
        self.app = app
        self.redirect_uri = redirect_uri
        self.validator = validator
        self.directory = directory
        self.replay = replay
        self.authority = authority or f"{app.authority_host}/organizations"
        self._msal: Any = None
        self._http: Any = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SignIn(authority={self.authority!r}, client_id={self.app.client_id!r})"

    async def _client(self) -> Any:
        async with self._lock:
            if self._msal is None:
                self._msal = await asyncio.to_thread(self._build)
            return self._msal

    def _build(self) -> Any:
        import msal

        from sync.dataverse.auth import client_credential, make_http_client

        self._http = make_http_client(self.app.ca_bundle)
        return msal.ConfidentialClientApplication(
            self.app.client_id,
            client_credential=client_credential(self.app),
            authority=self.authority,
            http_client=self._http,
            instance_discovery=False,
            exclude_scopes=EXCLUDED_SCOPES,
            token_cache=msal.TokenCache(),
        )

    async def close(self) -> None:
        """Close MSAL's HTTP connections (keep-alive sockets to the authority)."""
        if self._http is not None:
            await asyncio.to_thread(self._http.close)
            self._http = None
            self._msal = None

    async def start(self, *, login_hint: str | None = None) -> tuple[str, dict[str, Any]]:
        """(the URL to send the browser to, the flow to keep for the callback)."""
        client = await self._client()
        flow: dict[str, Any] = await asyncio.to_thread(
            _initiate, client, self.redirect_uri, login_hint or None
        )
        auth_uri = str(flow["auth_uri"])
        return auth_uri, {key: flow[key] for key in FLOW_KEYS if key in flow}

    async def finish(self, flow: Mapping[str, Any] | None, query: Mapping[str, str]) -> SignedIn:
        """Redeem the callback's code and decide who signed in, or raise SignInRefused."""
        if flow is None:
            raise SignInRefused("no sign-in is in progress in this browser (or it took too long)")
        state = query.get("state")
        if not state or not secrets.compare_digest(str(state), str(flow.get("state", ""))):
            raise SignInRefused("the sign-in answer's state does not match this browser's")
        if query.get("error"):
            description = str(query.get("error_description") or "").splitlines()[:1]
            raise SignInRefused(f"Entra ID refused: {query['error']} {' '.join(description)}")
        code = query.get("code")
        if not code:
            raise SignInRefused("the sign-in answer carries no code")
        digest = hashlib.sha256(code.encode()).hexdigest()
        if not self.replay.first_use("code", digest, until=self.replay.now() + CODE_LIFETIME):
            raise SignInRefused("this authorization code was already used")
        identity = await self._redeem(dict(flow), dict(query))
        if identity.nonce != nonce_claim(str(flow.get("nonce", ""))):
            raise SignInRefused("the id_token's nonce is not this browser's")
        until = identity.expires_at + LEEWAY_SECONDS
        if not self.replay.first_use("nonce", identity.nonce, until=until) or (
            identity.token_id and not self.replay.first_use("jti", identity.token_id, until=until)
        ):
            raise SignInRefused("this id_token was already used")
        return self.authorize(identity)

    def authorize(self, identity: Identity) -> SignedIn:
        """Tenant and role decisions, shared with bearer tokens."""
        if not self.directory.may_sign_in(identity.tid):
            raise SignInRefused(
                f"tenant {identity.tid} is not configured", kind="tenant", identity=identity
            )
        access = self.directory.access(identity.roles)
        if access is None:
            raise SignInRefused("no app role assigned", kind="role", identity=identity)
        principal = Principal(
            oid=identity.oid,
            tid=identity.tid,
            name=identity.name,
            username=identity.username,
            roles=tuple(
                r
                for r in identity.roles
                if r in (self.directory.operator_role, self.directory.viewer_role)
            ),
        )
        return SignedIn(principal, access)

    async def _redeem(self, flow: dict[str, Any], query: dict[str, str]) -> Identity:
        client = await self._client()
        try:
            result = await asyncio.to_thread(
                client.acquire_token_by_auth_code_flow, flow, query, scopes=[]
            )
        except (ValueError, RuntimeError) as exc:  # MSAL: state or nonce mismatch
            raise SignInRefused(f"MSAL refused the answer: {str(exc).split(':')[0]}") from None
        finally:
            await asyncio.to_thread(self._forget_accounts, client)
        if "error" in result:
            description = str(result.get("error_description") or "").splitlines()[:1]
            raise SignInRefused(
                f"Entra ID refused the code: {result['error']} {' '.join(description)}"
            )
        id_token = result.get("id_token")
        if not isinstance(id_token, str):
            raise SignInRefused("Entra ID answered no id_token")
        try:
            return await self.validator.validate(id_token, audiences=[self.app.client_id])
        except TokenRefused as exc:
            raise SignInRefused(exc.reason) from None

    @staticmethod
    def _forget_accounts(client: Any) -> None:
        """No user token stays in memory: MSAL's cache is emptied after each redemption."""
        for account in client.get_accounts():
            client.remove_account(account)

    def end_session_url(self, end_session_endpoint: str, post_logout: str) -> str:
        separator = "&" if "?" in end_session_endpoint else "?"
        return (
            end_session_endpoint + separator + urlencode({"post_logout_redirect_uri": post_logout})
        )
