"""Authorization codes: issued by the authorize endpoint, redeemed once at the token endpoint.

As the authorization code flow documents it: a code is opaque, short-lived ("typically they
expire after about 10 minutes": AADSTS70008), single-use (a second redemption is AADSTS54005),
bound to the client that asked for it, to its exact ``redirect_uri`` (AADSTS500112) and to the
PKCE ``code_challenge`` (S256: BASE64URL(SHA256(code_verifier)), RFC 7636; a wrong verifier is
AADSTS501481). It must be redeemed against the tenant it was acquired for, or the /common-style
authority it was acquired through (AADSTS700005). A failed PKCE check burns the code too, so a
stolen code cannot be tried against many verifiers. Codes are kept in memory only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from sync.simulator import aadsts

CODE_LIFETIME = 600.0
VERIFIER_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def s256(verifier: str) -> str:
    """The S256 code challenge of a verifier (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True)
class Grant:
    """What a code stands for: who signed in to which app, and how it was asked for."""

    client_id: str
    redirect_uri: str
    authority: str  # the {tenant} path segment of the authorize request, lower-case
    tenant_id: str  # the tenant the user signed in to
    user_oid: str
    scopes: tuple[str, ...]
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int
    max_age: int | None = None


@dataclass
class _Entry:
    grant: Grant
    issued_at: float
    redeemed: bool = field(default=False)


class CodeStore:
    """Outstanding codes; `redeem` applies every check of the token endpoint's code grant."""

    def __init__(self, clock: Callable[[], float], *, lifetime: float = CODE_LIFETIME) -> None:
        self._clock = clock
        self._lifetime = lifetime
        self._codes: dict[str, _Entry] = {}

    def issue(self, grant: Grant) -> str:
        now = self._clock()
        # Redeemed and expired codes are forgotten an hour after issue (replays stay 54005).
        self._codes = {c: e for c, e in self._codes.items() if now - e.issued_at < 3600}
        code = "1.A" + secrets.token_urlsafe(48)
        self._codes[code] = _Entry(grant, now)
        return code

    def redeem(
        self,
        code: str,
        *,
        client_id: str,
        redirect_uri: str,
        code_verifier: str | None,
        authority: str,
        tenant_ids: tuple[str, ...],
    ) -> Grant:
        """The grant behind `code`, once; raises the `aadsts.EntraError` Entra would send.

        `authority` is the token request's {tenant} segment and `tenant_ids` the tenant ids it
        names (empty for organizations/common)."""
        entry = self._codes.get(code)
        if entry is None:
            raise aadsts.code_invalid("The code is unknown or malformed.")
        grant = entry.grant
        if entry.redeemed:
            raise aadsts.code_redeemed()
        if grant.client_id != client_id:
            raise aadsts.code_invalid("The code was issued to another client.")
        if self._clock() - entry.issued_at > self._lifetime:
            raise aadsts.code_expired()
        if authority != grant.authority and grant.tenant_id not in tenant_ids:
            raise aadsts.code_other_tenant()
        if redirect_uri != grant.redirect_uri:
            raise aadsts.code_reply_mismatch()
        entry.redeemed = True  # from here on, a failure still burns the code
        if grant.code_challenge is not None and not _verifier_matches(grant, code_verifier):
            raise aadsts.pkce_mismatch()
        return grant


def _verifier_matches(grant: Grant, verifier: str | None) -> bool:
    if verifier is None or not 43 <= len(verifier) <= 128 or set(verifier) - VERIFIER_ALPHABET:
        return False
    expected = s256(verifier) if grant.code_challenge_method == "S256" else verifier
    return hmac.compare_digest(expected, grant.code_challenge or "")
