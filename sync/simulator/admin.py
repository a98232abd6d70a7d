"""The simulator's admin API: plain HTTP on loopback, no auth, JSON via orjson.

Tests, the demo and benchmarks use it to change the simulated world while a client runs
(churn rows, restore deleted rows under their ids, add or delete a column, expire delta tokens,
make pages hostile, change fault rates or limits) and to read what happened (`GET /stats`: per
application user and environment, requests, 429s by code, Retry-After violations, peak
concurrency, rows served and the throughput ceiling the limits allow; `GET …/rows`: the
table's current rows as JSON lines, streamed, never built in memory). App secrets:
admin_apps.py; signing keys, the authority's clock, redirect URIs and minted id_tokens:
admin_signin.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from functools import partial
from itertools import islice
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from sync.simulator.admin_apps import add_app_routes
from sync.simulator.admin_signin import add_signin_routes
from sync.simulator.dataverse_http import EnvironmentRuntime
from sync.simulator.entra import Entra
from sync.simulator.optionsets import relabel
from sync.simulator.protection import Limits

ROWS_PER_WRITE = 500
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _row_counts(runtime: EnvironmentRuntime, tables: list[str]) -> list[int]:
    return [runtime.model.row_count(table) for table in tables]


def _next_lines(rows: Iterator[dict[str, Any]]) -> bytes:
    """The next rows of a dump as JSON lines (b"" at the end); runs on the model thread."""
    return b"".join(orjson.dumps(row) + b"\n" for row in islice(rows, ROWS_PER_WRITE))


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AdminServer:
    """Routes over the running environments and the authority."""

    def __init__(self, runtimes: Mapping[str, EnvironmentRuntime], entra: Entra) -> None:
        self._runtimes = runtimes
        self._entra = entra

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        table = "/environments/{env}/tables/{table}"
        app.router.add_get("/", self._summary)
        app.router.add_get("/stats", self._stats)
        app.router.add_post("/stats/reset", self._reset)
        app.router.add_post("/faults", self._faults)
        app.router.add_post("/environments/{env}/limits", self._limits)
        app.router.add_post("/environments/{env}/throttle", self._throttle)
        app.router.add_get("/environments/{env}/arrivals", self._arrivals)
        app.router.add_post("/environments/{env}/record-count-snapshot", self._count_snapshot)
        app.router.add_get(f"{table}/rows", self._rows)
        app.router.add_post(f"{table}/churn", self._churn)
        app.router.add_post(f"{table}/columns", self._columns)
        app.router.add_delete(f"{table}/columns/{{column}}", self._remove_column)
        app.router.add_post(f"{table}/restore", self._restore)
        app.router.add_post(f"{table}/expire-delta-tokens", self._expire)
        app.router.add_post(f"{table}/hostile", self._hostile)
        app.router.add_post(f"{table}/relabel", self._relabel)
        app.router.add_post("/environments/{env}/solutions/{solution}", self._solution)
        add_app_routes(app, self._entra)
        add_signin_routes(app, self._entra)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except AdminError as exc:
            return _json({"error": str(exc)}, exc.status)
        except ValidationError as exc:
            return _json({"error": exc.errors(include_url=False)[0]["msg"]}, 400)
        except (KeyError, ValueError, TypeError) as exc:
            return _json({"error": f"{type(exc).__name__}: {exc}"}, 400)

    # -- helpers ---------------------------------------------------------------------------

    def _env(self, request: web.Request) -> EnvironmentRuntime:
        name = request.match_info["env"]
        runtime = self._runtimes.get(name)
        if runtime is None:
            raise AdminError(404, f"no environment {name!r} (known: {', '.join(self._runtimes)})")
        return runtime

    def _table(self, request: web.Request) -> tuple[EnvironmentRuntime, str]:
        runtime = self._env(request)
        table = request.match_info["table"]
        if table not in runtime.model.tables:  # the scenario's tables and intersect tables
            raise AdminError(404, f"environment {runtime.name!r} has no table {table!r}")
        return runtime, table

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw:
            return {}
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise AdminError(400, "the body is not JSON") from None
        if not isinstance(data, dict):
            raise AdminError(400, "the body must be a JSON object")
        return data

    # -- reads -----------------------------------------------------------------------------

    async def _summary(self, request: web.Request) -> web.Response:
        environments = []
        for r in self._runtimes.values():
            names = [t.name for t in r.spec.tables]
            counts = await r.run_model(partial(_row_counts, r, names))
            environments.append(
                {
                    "name": r.name,
                    "tenant": r.tenant.name,
                    "url": r.url,
                    "tables": dict(zip(names, counts, strict=True)),
                }
            )
        return _json({"environments": environments})

    async def _stats(self, request: web.Request) -> web.Response:
        users: list[dict[str, Any]] = []
        environments: list[dict[str, Any]] = []
        for runtime in self._runtimes.values():
            limits = runtime.protection.limits
            ceiling = limits.ceiling_rows_per_second()
            for client_id, stats in runtime.protection.users().items():
                entry = stats.as_dict()
                page = round(stats.rows_served / stats.admitted) if stats.admitted else 0
                entry.update(
                    environment=runtime.name,
                    tenant=runtime.tenant.name,
                    client_id=client_id,
                    user_id=runtime.user_id(client_id),
                    ceiling_rows_per_second=round(ceiling, 1),
                    observed_page=page,
                    ceiling_rows_per_second_observed_page=(
                        round(limits.ceiling_rows_per_second(page), 1) if page else None
                    ),
                )
                users.append(entry)
            environments.append(
                {
                    "environment": runtime.name,
                    "tenant": runtime.tenant.name,
                    "limits": limits.model_dump(),
                    "ceiling_rows_per_second": round(ceiling, 1),
                    "rejections": dict(runtime.rejections),
                    "faults": dict(runtime.faults.counts),
                }
            )
        # Power Platform request entitlements are per tenant; report-only, since start or reset.
        # Each operation inside a $batch counts, not the batch itself (reference 6.6).
        tenants: dict[str, int] = {}
        for entry in users:
            spent = entry["requests"] - entry["batches"] + entry["batch_operations"]
            tenants[entry["tenant"]] = tenants.get(entry["tenant"], 0) + spent
        return _json(
            {
                "users": users,
                "environments": environments,
                "tenants": {name: {"requests": count} for name, count in tenants.items()},
                "entra": self._entra.stats.as_dict(),
            }
        )

    async def _rows(self, request: web.Request) -> web.StreamResponse:
        runtime, table = self._table(request)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        rows = await runtime.run_model(partial(runtime.model.dump_rows, table, exact=True))
        while chunk := await runtime.run_model(partial(_next_lines, rows)):
            await response.write(chunk)
        await response.write_eof()
        return response

    # -- changes ---------------------------------------------------------------------------

    async def _reset(self, request: web.Request) -> web.Response:
        """Forget counters AND the protection windows, so a benchmark starts clean."""
        for runtime in self._runtimes.values():
            runtime.protection.reset()
            runtime.faults.reset_counts()
            runtime.rejections.clear()
        self._entra.stats.tokens_issued.clear()
        self._entra.stats.errors.clear()
        return _json({"reset": True})

    async def _faults(self, request: web.Request) -> web.Response:
        """``{"environment": name?, <rate>: p, ...}`` or ``{"entra": {<rate>: p}}``."""
        body = await self._body(request)
        result: dict[str, Any] = {}
        entra_changes = body.pop("entra", None)
        if entra_changes is not None:
            result["entra"] = self._entra.faults.update(dict(entra_changes)).model_dump()
        name = body.pop("environment", None)
        if body:
            targets = list(self._runtimes.values())
            if name is not None:
                if name not in self._runtimes:
                    raise AdminError(404, f"no environment {name!r}")
                targets = [self._runtimes[name]]
            for runtime in targets:
                result[runtime.name] = runtime.faults.update(body).model_dump()
        return _json(result)

    async def _limits(self, request: web.Request) -> web.Response:
        runtime = self._env(request)
        body = await self._body(request)
        limits = Limits.model_validate({**runtime.protection.limits.model_dump(), **body})
        runtime.protection.set_limits(limits)
        return _json(limits.model_dump())

    async def _count_snapshot(self, request: web.Request) -> web.Response:
        """``{"refresh": true, "max_age_seconds": n}``: retake RetrieveTotalRecordCount's
        snapshot now, and/or let it grow `n` seconds old before the service renews it."""
        runtime = self._env(request)
        body = await self._body(request)
        age = body.get("max_age_seconds")
        if age is not None and (not isinstance(age, int) or age < 0):
            raise AdminError(400, "max_age_seconds must be a whole number of seconds >= 0")
        refresh = bool(body.get("refresh", False))
        call = partial(runtime.model.count_snapshot, refresh=refresh, max_age_seconds=age)
        return _json(await runtime.run_model(call))

    async def _solution(self, request: web.Request) -> web.Response:
        """``{"add": "table"}`` or ``{"remove": "table"}``: change one Entity component of the
        solution (as a maker adding or removing a table in the solution explorer)."""
        runtime = self._env(request)
        name = request.match_info["solution"]
        body = await self._body(request)
        if name not in runtime.model.solutions.members:
            raise AdminError(404, f"environment {runtime.name!r} has no solution {name!r}")
        if len(body) != 1 or next(iter(body)) not in ("add", "remove"):
            raise AdminError(400, 'send {"add": "<table>"} or {"remove": "<table>"}')
        action, table = next(iter(body.items()))
        if table not in runtime.model.tables:  # the scenario's tables and intersect tables
            raise AdminError(404, f"environment {runtime.name!r} has no table {table!r}")
        call = partial(runtime.model.solutions.change, name, table, add=action == "add")
        return _json({"solution": name, "tables": await runtime.run_model(call)})

    async def _throttle(self, request: web.Request) -> web.Response:
        """``{"seconds": s, "client_id": id?}``: refuse that user's (everyone's) requests for
        `s` seconds from now, with 429s as if a limit had been hit."""
        runtime = self._env(request)
        body = await self._body(request)
        seconds = float(body["seconds"])
        if not 0 < seconds <= 3600:
            raise AdminError(400, "seconds must be in (0, 3600]")
        runtime.protection.throttle_now(body.get("client_id"), seconds)
        return _json({"throttled_for": seconds})

    async def _arrivals(self, request: web.Request) -> web.Response:
        """Arrival times of one user's requests and the 429s it was sent (simulator clock,
        seconds), for checking that nothing arrived inside a Retry-After window."""
        runtime = self._env(request)
        client_id = request.query.get("client_id", "")
        stats = runtime.protection.users().get(client_id)
        if stats is None:
            raise AdminError(404, f"no requests from {client_id!r} in {runtime.name!r}")
        return _json(
            {
                "arrivals": stats.arrivals,
                "arrival_slack": stats.arrival_slack,
                "refusals": stats.refusals,
            }
        )

    async def _churn(self, request: web.Request) -> web.Response:
        runtime, table = self._table(request)
        body = await self._body(request)
        churn = partial(
            runtime.model.churn,
            table,
            creates=int(body.get("creates", 0)),
            updates=int(body.get("updates", 0)),
            deletes=int(body.get("deletes", 0)),
            seed=int(body.get("seed", 0)),
        )
        return _json(await runtime.run_model(churn))

    async def _columns(self, request: web.Request) -> web.Response:
        runtime, table = self._table(request)
        spec = await self._body(request)
        return _json(await runtime.run_model(partial(runtime.model.add_column, table, spec)))

    async def _remove_column(self, request: web.Request) -> web.Response:
        runtime, table = self._table(request)
        remove = partial(runtime.model.remove_column, table, request.match_info["column"])
        return _json(await runtime.run_model(remove))

    async def _restore(self, request: web.Request) -> web.Response:
        """``{"count": n}``: the n most recently deleted rows come back with their ids."""
        runtime, table = self._table(request)
        count = int((await self._body(request)).get("count", 1))
        return _json(await runtime.run_model(partial(runtime.model.restore, table, count)))

    async def _expire(self, request: web.Request) -> web.Response:
        runtime, table = self._table(request)
        await runtime.run_model(partial(runtime.model.expire_change_tracking, table))
        return _json({"expired": table})

    async def _hostile(self, request: web.Request) -> web.Response:
        runtime, table = self._table(request)
        kind = (await self._body(request)).get("kind")
        await runtime.run_model(partial(runtime.model.set_hostile, table, kind))
        return _json({"table": table, "hostile": kind})

    async def _relabel(self, request: web.Request) -> web.Response:
        """``{"column": c, "value": v, "label": text}``: option v of c gets a new (English)
        label; a metadata change only, no row's versionnumber moves."""
        runtime, table = self._table(request)
        body = await self._body(request)
        column, value, text = body.get("column"), body.get("value"), body.get("label")
        if not isinstance(column, str) or type(value) is not int or not isinstance(text, str):
            raise AdminError(400, 'relabel needs {"column": str, "value": int, "label": str}')
        call = partial(relabel, runtime.model.tables[table], column, value, text)
        return _json(await runtime.run_model(call))
