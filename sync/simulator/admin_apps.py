"""The admin API's app-registration routes: add and revoke an app's client secrets.

An operator rotates a client secret the way Entra lets them: add a new secret (the app then
holds two), switch the client to it, delete the old one. Tokens issued before the deletion stay
valid until they expire; from the deletion on, the old secret gets AADSTS7000215.

``POST /apps/{client_id}/secrets`` adds a random secret, written to a new 0600 file beside the
app's first one, and answers ``{"secret_file": path, "secret_id": id}`` — never the value (the
file holds it); ``DELETE /apps/{client_id}/secrets/{secret_id}`` revokes one. 404 for an
unknown app or secret id, 400 for an app that signs in with a certificate.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from sync.simulator.credentials import AppCredential
from sync.simulator.entra import Entra


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AppRoutes:
    """The handlers, over the authority's app credentials."""

    def __init__(self, entra: Entra) -> None:
        self._entra = entra

    def _secret_app(self, request: web.Request) -> AppCredential:
        client_id = request.match_info["client_id"]
        credential = self._entra.credential(client_id)
        if credential is None:
            raise _Refused(404, f"no app {client_id!r}")
        if credential.kind != "secret":
            raise _Refused(400, f"app {client_id} signs in with a certificate, not a secret")
        return credential

    async def add_secret(self, request: web.Request) -> web.Response:
        try:
            credential = self._secret_app(request)
        except _Refused as refused:
            return _json({"error": str(refused)}, refused.status)
        secret_id, path = credential.add_secret()
        return _json({"secret_file": str(path), "secret_id": secret_id})

    async def revoke_secret(self, request: web.Request) -> web.Response:
        try:
            credential = self._secret_app(request)
        except _Refused as refused:
            return _json({"error": str(refused)}, refused.status)
        secret_id = request.match_info["secret_id"]
        if not credential.revoke_secret(secret_id):
            return _json({"error": f"app {credential.client_id} has no secret {secret_id!r}"}, 404)
        return _json({"revoked": secret_id.lower(), "live": sorted(credential.live_secrets)})


def add_app_routes(app: web.Application, entra: Entra) -> None:
    """Register the app-registration routes on the admin application."""
    routes = AppRoutes(entra)
    app.router.add_post("/apps/{client_id}/secrets", routes.add_secret)
    app.router.add_delete("/apps/{client_id}/secrets/{secret_id}", routes.revoke_secret)
