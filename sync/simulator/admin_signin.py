"""The admin API's sign-in routes: signing keys, the authority's clock, redirect URIs, and
id_tokens minted on demand for a relying party's tests (plain HTTP on loopback, JSON).

- ``GET /signing-keys``: ``{"active": kid, "published": [kid, …]}``.
- ``POST /signing-keys``: publish a new key and sign with it from now on (the old one stays
  published, as in Entra's key rollover); answers the same shape plus ``"added": kid``.
- ``DELETE /signing-keys/{kid}``: stop publishing an old key (409 for the active one, 404 for
  an unknown one); tokens it signed no longer verify, and a cached JWKS meets an unknown kid.
- ``POST /clock`` ``{"advance": s}`` or ``{"offset": s}``: move the authority's clock (codes
  age, tokens are issued and checked at the shifted time; client assertions keep real time).
- ``POST /apps/{client_id}/redirect-uris`` ``{"uri": …}``: register one more redirect URI, as
  an operator would in the portal (same rules as the scenario's ``redirect_uris``).
- ``POST /id-tokens``: mint an id_token (forge.py). Body: ``tenant`` (name, id or domain),
  ``user`` (UPN), optional ``client_id`` (default: the scenario's first app), ``nonce``,
  ``claims`` (overrides; ``null`` removes one), ``signing`` (``active``, ``unknown-key``,
  ``forged``, ``none``, ``hs256-public-key``) and ``expires_in`` (seconds; negative for a
  token already expired). Answers ``{"id_token", "header", "claims"}``. Examples: wrong
  audience ``{"claims": {"aud": "<other app>"}}``; issuer of another tenant ``{"claims":
  {"iss": "<authority>/<other tid>/v2.0"}}``; expired ``{"expires_in": -600}``.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from sync.simulator.entra import Entra
from sync.simulator.forge import mint
from sync.simulator.scenario import check_redirect_uri


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        data = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {"__invalid__": True}
    return data if isinstance(data, dict) else {"__invalid__": True}


class SignInRoutes:
    def __init__(self, entra: Entra) -> None:
        self._entra = entra

    def _keys(self, **extra: Any) -> web.Response:
        keys = self._entra.tokens.keys
        return _json({"active": keys.active.kid, "published": keys.published(), **extra})

    async def list_keys(self, request: web.Request) -> web.Response:
        return self._keys()

    async def rotate(self, request: web.Request) -> web.Response:
        return self._keys(added=self._entra.tokens.keys.rotate().kid)

    async def retire(self, request: web.Request) -> web.Response:
        kid = request.match_info["kid"]
        try:
            retired = self._entra.tokens.keys.retire(kid)
        except ValueError as exc:
            return _json({"error": str(exc)}, 409)
        if not retired:
            return _json({"error": f"no published key {kid!r}"}, 404)
        return self._keys(retired=kid)

    async def clock(self, request: web.Request) -> web.Response:
        body = await _body(request)
        tokens = self._entra.tokens
        try:
            if "offset" in body:
                tokens.offset = float(body["offset"])
            elif "advance" in body:
                tokens.offset += float(body["advance"])
            else:
                return _json({"error": 'give {"advance": seconds} or {"offset": seconds}'}, 400)
        except (TypeError, ValueError):
            return _json({"error": "the clock takes a number of seconds"}, 400)
        return _json({"offset": tokens.offset})

    async def add_redirect_uri(self, request: web.Request) -> web.Response:
        client_id = request.match_info["client_id"].lower()
        uris = self._entra.redirect_uris.get(client_id)
        if uris is None:
            return _json({"error": f"no app {client_id!r}"}, 404)
        uri = (await _body(request)).get("uri")
        if not isinstance(uri, str):
            return _json({"error": 'give {"uri": "https://…"}'}, 400)
        try:
            check_redirect_uri(uri)
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        if uri not in uris:
            uris.append(uri)
        return _json({"client_id": client_id, "redirect_uris": uris})

    async def id_token(self, request: web.Request) -> web.Response:
        body = await _body(request)
        scenario = self._entra.scenario
        wanted = str(body.get("tenant", ""))
        named = next((t for t in scenario.tenants if t.name == wanted), None)
        tenant = named or scenario.tenant(wanted)
        if tenant is None:
            return _json({"error": f"no tenant {body.get('tenant')!r}"}, 404)
        found = scenario.find_user(str(body.get("user", "")), tenant)
        if found is None:
            return _json({"error": f"tenant {tenant.name} has no user {body.get('user')!r}"}, 404)
        app = scenario.app(str(body.get("client_id") or scenario.apps[0].client_id))
        if app is None:
            return _json({"error": f"no app {body.get('client_id')!r}"}, 404)
        claims = body.get("claims") or {}
        nonce = body.get("nonce")
        if not isinstance(claims, dict) or not isinstance(nonce, str | None):
            return _json({"error": "claims must be an object and nonce a string"}, 400)
        try:
            token, header, minted = mint(
                self._entra.tokens,
                tenant=tenant,
                user=found[1],
                app=app,
                nonce=nonce,
                overrides=claims,
                signing=str(body.get("signing", "active")),
                lifetime=int(body.get("expires_in", scenario.token_lifetime)),
            )
        except (TypeError, ValueError) as exc:
            return _json({"error": str(exc)}, 400)
        return _json({"id_token": token, "header": header, "claims": minted})


def add_signin_routes(app: web.Application, entra: Entra) -> None:
    """Register the sign-in routes on the admin application."""
    routes = SignInRoutes(entra)
    app.router.add_get("/signing-keys", routes.list_keys)
    app.router.add_post("/signing-keys", routes.rotate)
    app.router.add_delete("/signing-keys/{kid}", routes.retire)
    app.router.add_post("/clock", routes.clock)
    app.router.add_post("/apps/{client_id}/redirect-uris", routes.add_redirect_uri)
    app.router.add_post("/id-tokens", routes.id_token)
