"""The console's session: an aiohttp-session encrypted cookie, keyed from `session_key`.

The Fernet key is derived from the configured secret with HKDF (so the secret may be any
string of 32 bytes or more), and a separate CSRF key from the same secret. A signed-in session
holds oid, tid, name, username, roles and its absolute expiry, plus the time it was last used
(for the idle limit); never a token. During a sign-in, and only then, it holds the MSAL flow.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sync.console.authz import Principal

COOKIE_NAME = "dvmirror_console"
ABSOLUTE_SECONDS = 8 * 3600
IDLE_SECONDS = 3600
FLOW_SECONDS = 600  # a sign-in must come back within ten minutes (the code's own lifetime)
SIGNED_IN_KEYS = ("oid", "tid", "name", "username", "roles", "expires", "seen")


def derive_key(secret: str, purpose: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=f"dvmirror console {purpose}".encode(),
    ).derive(secret.encode())


def cookie_storage(secret: str, *, secure: bool) -> EncryptedCookieStorage:
    fernet = Fernet(base64.urlsafe_b64encode(derive_key(secret, "session cookie")))
    return EncryptedCookieStorage(
        fernet,
        cookie_name=COOKIE_NAME,
        max_age=ABSOLUTE_SECONDS,
        secure=secure,
        httponly=True,
        samesite="Lax",
    )


class SessionPolicy:
    """Starts, reads and ends signed-in sessions; expiry is judged by the injected clock."""

    def __init__(self, secret: str, *, clock: Callable[[], float] = time.time) -> None:
        self._csrf_key = derive_key(secret, "csrf")
        self.clock = clock

    def sign_in(self, session: MutableMapping[str, Any], principal: Principal) -> None:
        now = self.clock()
        session.clear()
        session.update(
            {
                "oid": principal.oid,
                "tid": principal.tid,
                "name": principal.name,
                "username": principal.username,
                "roles": list(principal.roles),
                "expires": now + ABSOLUTE_SECONDS,
                "seen": now,
            }
        )

    def current(self, session: MutableMapping[str, Any]) -> Principal | None:
        """The signed-in user, or None (not signed in, idle for an hour, or past 8 hours)."""
        if not all(key in session for key in SIGNED_IN_KEYS):
            return None
        now = self.clock()
        try:
            expires, seen = float(session["expires"]), float(session["seen"])
        except (TypeError, ValueError):
            session.clear()
            return None
        if now >= expires or now - seen >= IDLE_SECONDS:
            session.clear()
            return None
        session["seen"] = now
        return Principal(
            oid=str(session["oid"]),
            tid=str(session["tid"]),
            name=str(session["name"]),
            username=str(session["username"]),
            roles=tuple(str(r) for r in session["roles"]),
        )

    def csrf_token(self, session: Mapping[str, Any]) -> str:
        """Bound to this session: its user and its absolute expiry (a new sign-in changes it)."""
        material = f"{session.get('oid')}|{session.get('tid')}|{session.get('expires')}"
        return hmac.new(self._csrf_key, material.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: Mapping[str, Any], presented: str | None) -> bool:
        if not presented or "expires" not in session:
            return False
        return hmac.compare_digest(self.csrf_token(session), presented)

    def start_flow(self, session: MutableMapping[str, Any], flow: Mapping[str, Any]) -> None:
        """Keep the MSAL flow (state, nonce, PKCE verifier) for the sign-in's duration only."""
        session.clear()
        session["flow"] = dict(flow)
        session["flow_started"] = self.clock()

    def take_flow(self, session: MutableMapping[str, Any]) -> dict[str, Any] | None:
        """The pending flow, removed from the session (a callback can use it once)."""
        flow = session.pop("flow", None)
        started = session.pop("flow_started", None)
        if not isinstance(flow, dict) or not isinstance(started, int | float):
            return None
        if self.clock() - started > FLOW_SECONDS:
            return None
        return flow
