"""The HTTPS face of one simulated Dataverse environment.

Everything between the socket and SIM-B's pure `DataverseModel` lives here, in the order a
real environment applies it: the bearer token (absent → 401 with the bearer challenge;
expired, forged or minted for another environment → 401), the application user (none → 403
``0x80072560``), impersonation headers (403 ``0x8004A110`` unless the app user may act on
behalf of others), per-table privilege denial (403 ``0x80040220``), service protection
(429), injected faults, and finally the model. The modelled execution time
(``base_ms + per_row_ms × rows × share of the table's columns selected``, protection.py) is
spent as a real delay (less the time the model itself took), so concurrency limits bite, and a
key-only page is served far faster than full rows. The model runs on its environment's own
worker thread: a large page never blocks the event loop (other environments, ``/stats``, the
protection accounting), and one thread per environment serializes every read and change of it.
Every response carries ``x-ms-service-request-id``, ``REQ_ID`` and the ``ARRAffinity``
cookie; every authenticated one also the rate-limit headers. ``POST …/$batch`` takes the same
road up to the application user, then batch.py runs each of its operations through `operate`,
the path a direct GET's model call takes (faults, model, modelled execution time).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import orjson
from aiohttp import web
from multidict import CIMultiDict

from sync.simulator.batch import serve_batch
from sync.simulator.faults import FaultInjector
from sync.simulator.operation import JSON_TYPE, Caller, Cost, Outcome, error_body
from sync.simulator.protection import ServiceProtection, Throttle
from sync.simulator.scenario import EnvironmentSpec, TenantSpec
from sync.simulator.templates import TEMPLATES
from sync.simulator.tokens import AccessClaims, InvalidToken, TokenAuthority
from sync.simulator.webapi import ApiRequest, ApiResponse, DataverseModel

MAX_BODY = 64 * 1024 * 1024  # a $batch of 1,000 GETs of up to 64 KB each fits
#: GET URL length limit (reference 2.1): 32 KB; the server accepts longer request lines so
#: that it can answer this limit itself.
MAX_URL_LENGTH = 32_768
MAX_REQUEST_LINE = 70_000
ID_NAMESPACE = uuid.UUID("0b8f5c1e-6d4a-4f3b-9a27-5e1c2d3f4a5b")
IMPERSONATION_HEADERS = ("CallerObjectId", "MSCRMCallerID")
IMPERSONATION_DENIED = "User does not have the privilege to act on behalf another user."
T = TypeVar("T")


def stable_id(*parts: str) -> str:
    """A GUID that is the same in every run for the same names."""
    return str(uuid.uuid5(ID_NAMESPACE, ":".join(parts)))


# A continuation page's query (a nextLink) carries a $skiptoken (`$` raw or %24-encoded).
_CONTINUATION = "skiptoken="


@dataclass
class EnvironmentRuntime:
    """One running environment: its spec, URL, model and protection state."""

    tenant: TenantSpec
    spec: EnvironmentSpec
    url: str
    authority_host: str
    model: DataverseModel
    protection: ServiceProtection
    faults: FaultInjector
    rejections: Counter[str] = field(default_factory=Counter)
    worker: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="dataverse-model")
    )

    @property
    def name(self) -> str:
        return self.spec.name

    async def run_model(self, call: Callable[[], T]) -> T:
        """Run `call` (which uses the model) on this environment's single model thread.

        Every use of the model goes through here (except `table_for_entity_set`, which reads
        the fixed entity-set names), so requests, churn, new columns, token expiry and row
        dumps see the model one at a time, and none of them holds up the event loop.
        """
        return await asyncio.get_running_loop().run_in_executor(self.worker, call)

    def close(self) -> None:
        """Stop the model thread (pending calls are cancelled)."""
        self.worker.shutdown(wait=False, cancel_futures=True)

    @property
    def organization_id(self) -> str:
        return stable_id("organization", self.spec.name)

    @property
    def business_unit_id(self) -> str:
        return stable_id("businessunit", self.spec.name)

    def user_id(self, client_id: str) -> str:
        """The systemuserid of the app's application user here."""
        return stable_id("systemuser", self.spec.name, client_id)

    def affinity(self, server: int) -> str:
        return hashlib.sha256(f"{self.spec.name}:{server}".encode()).hexdigest()

    def server_for(self, cookie: str | None) -> int | None:
        if not cookie:
            return None
        for server in range(self.protection.limits.servers):
            if self.affinity(server) == cookie:
                return server
        return None


def _raw_tail(request: web.Request) -> str:
    """The still percent-encoded path after ``/api/data/v9.x/`` (the model decodes it)."""
    raw = request.rel_url.raw_path
    prefix = f"/api/data/{request.match_info['version']}"
    return raw[len(prefix) :].lstrip("/") if raw.startswith(prefix) else raw


def _timed(
    handle: Callable[[ApiRequest], ApiResponse], request: ApiRequest
) -> Callable[[], tuple[ApiResponse, float]]:
    """A call answering `request` that also says how many seconds the answer took."""

    def call() -> tuple[ApiResponse, float]:
        started = time.perf_counter()
        response = handle(request)
        return response, time.perf_counter() - started

    return call


class EnvironmentServer:
    """The aiohttp application serving one environment's Web API."""

    def __init__(self, runtime: EnvironmentRuntime, tokens: TokenAuthority) -> None:
        self._env = runtime
        self._tokens = tokens

    @property
    def runtime(self) -> EnvironmentRuntime:
        """The environment this server answers for."""
        return self._env

    def application(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", r"/api/data/{version:v9\.[0-2]}{tail:(/.*)?}", self._handle)
        if self._env.spec.requests_per_connection is not None:
            self._served_on: dict[int, int] = {}
            app.on_response_prepare.append(self._close_after_quota)
        return app

    async def _close_after_quota(self, request: web.Request, response: web.StreamResponse) -> None:
        """`Connection: close` on a connection's last allowed response (before it is sent)."""
        quota = self._env.spec.requests_per_connection
        key = id(request.transport)
        served = self._served_on.get(key, 0) + 1
        if quota is not None and served >= quota:
            response.force_close()
            self._served_on.pop(key, None)
        else:
            self._served_on[key] = served

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        headers: dict[str, str] = {"x-ms-service-request-id": request_id, "REQ_ID": request_id}
        if len(request.raw_path) > MAX_URL_LENGTH:  # before anything else, as the front end does
            self._env.rejections["414_url_too_long"] += 1
            return web.Response(
                status=414,
                headers=headers,
                text=f"The request URL is longer than {MAX_URL_LENGTH} characters.",
            )
        claims = self._authenticate(request, headers)
        if isinstance(claims, web.Response):
            return claims
        caller = self._authorize(request, claims.app_id, headers)
        if isinstance(caller, web.Response):
            return caller
        if request.match_info["tail"].strip("/") in ("$batch", "%24batch"):
            return await serve_batch(self, request, caller, headers)
        return await self._serve(request, caller, headers)

    def _authenticate(
        self, request: web.Request, headers: dict[str, str]
    ) -> AccessClaims | web.Response:
        """The token's claims, or the 401 a real environment would send."""
        env = self._env
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            env.rejections["401_no_token"] += 1
            return self._unauthorized(headers)
        try:
            claims = self._tokens.verify(token.strip(), audience=env.url)
        except InvalidToken as exc:
            env.rejections["401_invalid_token"] += 1
            return self._unauthorized(headers, exc.reason)
        if claims.tenant_id != env.tenant.tenant_id:
            env.rejections["401_invalid_token"] += 1
            return self._unauthorized(headers, "the access token belongs to another tenant")
        if env.faults.token_expired_early(claims.token_id):
            env.rejections["401_expired_early"] += 1
            return self._unauthorized(headers, "the access token has expired")
        return claims

    def _authorize(
        self, request: web.Request, app_id: str, headers: dict[str, str]
    ) -> Caller | web.Response:
        """Who the request runs as here, or the 403 that says why it may not."""
        env = self._env
        if app_id not in env.spec.application_users:
            env.rejections["403_not_member"] += 1
            body = error_body("0x80072560", "The user is not a member of the organization.")
            return self.json_reply(403, headers, body)
        server = env.protection.choose_server(env.server_for(request.cookies.get("ARRAffinity")))
        headers.update(env.protection.rate_headers(app_id, server))
        user_id = env.user_id(app_id)
        caller = Caller(app_id=app_id, user_id=user_id, server=server)
        refusal = self.refusal(caller, request.headers, request.match_info["tail"].lstrip("/"))
        if refusal is not None:
            status, body = refusal
            return self.json_reply(status, headers, body, server)
        return caller

    def refusal(
        self, caller: Caller, headers: Mapping[str, str], tail: str
    ) -> tuple[int, bytes] | None:
        """The 403 (status, body) for impersonating without the privilege or reading a denied
        table, else None. Checked for each request, and for each operation of a batch."""
        env = self._env
        impersonating = any(headers.get(h) for h in IMPERSONATION_HEADERS)
        if impersonating and caller.app_id not in env.spec.impersonation_allowed:
            env.rejections["403_impersonation"] += 1
            return 403, error_body("0x8004A110", IMPERSONATION_DENIED)
        denied = self._denied_table(tail)
        if denied is not None:
            env.rejections["403_privilege"] += 1
            return 403, error_body("0x80040220", self._privilege_message(denied, caller.user_id))
        return None

    async def _serve(
        self, request: web.Request, caller: Caller, headers: dict[str, str]
    ) -> web.StreamResponse:
        """Service protection, then the operation; the modelled time is really spent."""
        env = self._env
        app_id, server = caller.app_id, caller.server
        admission = env.protection.admit(app_id, server)
        if isinstance(admission, Throttle):
            return self.throttled(admission, caller, headers)
        outcome, cost = Outcome(500, {}, b""), Cost()
        try:
            api_request = self._api_request(request, caller.user_id)
            outcome = await self.operate(api_request, cost)
            if outcome.status == 200 and _CONTINUATION in api_request.raw_query:
                env.protection.note_continuation(app_id, request.rel_url.raw_path_qs)
            if outcome.injected:
                headers.update(outcome.headers)
                return self.reply(outcome.status, headers, outcome.body, server)
            headers.update(env.protection.rate_headers(app_id, server))
            merged = {**outcome.headers, **headers}
            return await self.send(
                request, outcome.status, merged, outcome.body, server=server, fault=outcome.fault
            )
        finally:
            env.protection.finish(
                admission, rows=cost.rows, execution_seconds=cost.execution, status=outcome.status
            )

    def throttled(
        self, throttle: Throttle, caller: Caller, headers: dict[str, str]
    ) -> web.Response:
        """The 429 for a refused request (a batch is refused whole)."""
        env = self._env
        headers.update(env.protection.rate_headers(caller.app_id, caller.server))
        headers["Retry-After"] = str(throttle.retry_after)
        return self.json_reply(429, headers, orjson.dumps(throttle.body()), caller.server)

    async def operate(self, api_request: ApiRequest, cost: Cost) -> Outcome:
        """One admitted operation: injected faults, else the model on the environment's thread,
        its modelled execution time (less the model's own time) charged to `cost` and spent as
        a real delay."""
        env = self._env
        decision = env.faults.decide()
        if decision.delay:
            await asyncio.sleep(decision.delay)
        failure = decision.error_response()
        if failure is not None:
            status, extra, body = failure
            return Outcome(status, extra, body, fault=decision.kind, injected=True)
        api_response, spent = await env.run_model(_timed(env.model.handle, api_request))
        execution = env.protection.limits.execution_time(
            api_response.rows_served, api_response.columns_selected, api_response.columns_total
        )
        cost.rows += api_response.rows_served
        cost.execution += execution
        await asyncio.sleep(max(0.0, execution - spent))  # the model's own work counts
        body, headers = api_response.body, dict(api_response.headers)
        return Outcome(api_response.status, headers, body, decision.kind)

    def _api_request(self, request: web.Request, user_id: str) -> ApiRequest:
        env = self._env
        joined: CIMultiDict[str] = CIMultiDict()
        for name in request.headers:
            if name not in joined:
                joined[name] = ", ".join(request.headers.getall(name))
        return ApiRequest(
            method=request.method,
            path=_raw_tail(request),
            raw_query=request.rel_url.raw_query_string,
            headers=joined,
            base_url=f"{env.url}/api/data/{request.match_info['version']}",
            user_id=user_id,
            business_unit_id=env.business_unit_id,
            organization_id=env.organization_id,
        )

    def _denied_table(self, tail: str) -> str | None:
        segment = tail.split("/", 1)[0].split("(", 1)[0]
        if not segment:
            return None
        table = self._env.model.table_for_entity_set(segment)
        if table is None:
            return None
        spec = next((t for t in self._env.spec.tables if t.name == table), None)
        return table if spec is not None and spec.denied else None

    def _privilege_message(self, table: str, user_id: str) -> str:
        template = TEMPLATES.get(table)
        schema = template.schema_name if template else table
        otc = template.object_type_code if template else 10000
        privilege_id = stable_id("privilege", "read", table)
        return (
            f"Principal user (Id={user_id}, type=8, roleCount=1, privilegeCount=0, "
            f"accessMode=4, MetadataCachePrivilegesCount=0, businessUnitId="
            f"{self._env.business_unit_id}), is missing prvRead{schema} privilege "
            f"(Id={privilege_id}) on OTC={otc} for entity '{table}'. context.Caller={user_id}"
        )

    def _unauthorized(self, headers: Mapping[str, str], reason: str | None = None) -> web.Response:
        env = self._env
        authorize = f"{env.authority_host}/{env.tenant.tenant_id}/oauth2/authorize"
        challenge = f"Bearer authorization_uri={authorize}, resource_id={env.url}/"
        response = web.Response(status=401, headers={**headers, "WWW-Authenticate": challenge})
        if reason:
            response.headers["x-ms-diagnostics"] = reason  # never the token itself
        return response

    def json_reply(
        self, status: int, headers: Mapping[str, str], body: bytes, server: int | None = None
    ) -> web.Response:
        """A JSON reply (error bodies, 429s) with the OData headers and the affinity cookie."""
        return self.reply(
            status, {**headers, "Content-Type": JSON_TYPE, "OData-Version": "4.0"}, body, server
        )

    def reply(
        self, status: int, headers: Mapping[str, str], body: bytes, server: int | None
    ) -> web.Response:
        """A complete reply with the affinity cookie."""
        response = web.Response(status=status, body=body, headers=headers)
        self._cookie(response, server)
        return response

    def _cookie(self, response: web.StreamResponse, server: int | None) -> None:
        if server is not None:
            response.set_cookie(
                "ARRAffinity", self._env.affinity(server), path="/", secure=True, httponly=True
            )

    async def send(
        self,
        request: web.Request,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        *,
        server: int,
        fault: str | None,
    ) -> web.StreamResponse:
        """Send a reply, truncated or cut mid-body when that transport fault was drawn."""
        if fault == "truncated_json" and len(body) > 2:
            body = body[: max(1, len(body) * 3 // 5)]
        if fault != "reset_mid_body" or len(body) < 2:
            return self.reply(status, headers, body, server)
        # Promise the whole body, send part of it, then drop the connection.
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(body)
        self._cookie(response, server)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        if request.transport is not None:
            request.transport.abort()
        return response  # aiohttp's write_eof meets the closed transport and gives up quietly
