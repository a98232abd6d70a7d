"""Response headers and the small rules that keep the console's pages safe (pure where it can).

Every response gets a CSP of `default-src 'self'` with `frame-ancestors 'none'` (no inline
scripts or styles are needed anywhere), `Referrer-Policy: no-referrer` and `nosniff`; every
response but the static stylesheet gets `Cache-Control: no-store`. `next=` is followed only
to a path of this origin.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

CSP = (
    "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
    "object-src 'none'"
)
STATIC_PREFIX = "/static/"


def safe_next(value: str | None) -> str:
    """A same-origin path to go to after sign-in, or "/" for anything else."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    if any(ord(ch) < 0x20 or ch == "\\" for ch in value):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """aiohttp's on_response_prepare hook: runs for every answer, errors and redirects too."""
    headers = response.headers
    headers["Content-Security-Policy"] = CSP
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    if not request.path.startswith(STATIC_PREFIX):
        headers["Cache-Control"] = "no-store"
        headers["Pragma"] = "no-cache"
