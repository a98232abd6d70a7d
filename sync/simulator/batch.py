"""``POST /api/data/v9.x/$batch``: several GET operations in one HTTP request (read-only).

The wire format is multipart.py's; "S-batch" below is "Execute batch operations using the Web
API" (learn.microsoft.com/power-apps/developer/data-platform/webapi/
execute-batch-operations-using-web-api, 01/2023). What happens to a batch, in order, and why:

1. Authentication and the application user are checked once, for the batch, exactly as for a
   direct request (401 / 403 ``0x80072560``): the batch request's bearer token applies to every
   operation, and ``Authorization`` headers inside parts are ignored. Impersonation headers on
   the batch apply to the batch; on a part, to that operation. Each operation reads only its
   own part's headers (``Prefer: odata.maxpagesize``, annotations, …); of the batch request's
   ``Prefer`` only ``odata.continue-on-error`` means something (it is about the batch).
2. A malformed batch, more than 1,000 operations, a change set or any non-GET operation is a
   400 for the whole batch before anything runs (multipart.py lists the texts).
3. Service protection: the batch is **one request** for the request-count and concurrency
   limits and its **operations' combined execution time** counts against the execution-time
   limit. Reference 6.1: "``$batch`` reduces request count … but not execution time"; S10
   (api-limits): a batch "will avoid the number of requests limit. However, you will need to be
   prepared for the execution time limit", and "You could send fewer requests by bundling them
   in batch operations. The combined execution time limit will counter this." So a throttled
   batch is refused whole, at admission, with the ordinary 429 JSON body and ``Retry-After``
   (reference 6.2/6.3), never a multipart reply. The limits are evaluated at admission only, as
   for every request ("can be exceeded for a while before enforcement kicks in"); a long batch
   then makes the next requests wait. (The 24-hour entitlement counts every operation, 6.6:
   ``/stats`` reports ``batch_operations``.)
4. Each operation then takes the path of a direct GET (dataverse_http `operate`): the
   per-table privilege check (403 ``0x80040220`` as that operation's answer), the injected
   faults drawn for it, the model, and its modelled execution time spent as a real delay. A
   gateway fault (502/503/504) drawn for any operation fails the whole HTTP exchange, as it
   would for a direct GET; a transport fault (reset, truncated body) hits the batch response.
5. Operations run in order. Without ``Prefer: odata.continue-on-error`` the first operation
   that fails (status >= 400) ends the batch: its error part (the reference 2.5 body) is the
   last part and its status is the batch's status (S-batch "Handling errors": "the batch fails
   on the first request in the batch … HTTP/1.1 400 BadRequest"); the parts of the operations
   that succeeded before it are kept (OData 4.0: the responses processed so far). With the
   preference every operation runs, the status is 200 and ``Preference-Applied`` echoes it.
6. The reply: ``200 OK``, ``Content-Type: multipart/mixed; boundary=batchresponse_<guid>``,
   one part per operation holding its full HTTP response (status line, the headers a direct
   GET gets from the model plus a ``REQ_ID``, JSON body), with the rate-limit headers and the
   affinity cookie on the batch response.

Operation targets may be absolute URLs of this environment, ``/api/data/v9.x/…`` paths or
relative to the service root (the batch's own version); another host is a 400 for that
operation, another API version a 404.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from aiohttp import web
from multidict import CIMultiDict

from sync.simulator.multipart import (
    BatchError,
    BatchOperation,
    parse_batch,
    render_batch,
    render_part,
)
from sync.simulator.operation import JSON_TYPE, Caller, Cost, Outcome, error_body
from sync.simulator.protection import Throttle
from sync.simulator.protocol import ApiError, ApiRequest, not_found_segment

if TYPE_CHECKING:
    from sync.simulator.dataverse_http import EnvironmentServer

CONTINUE_ON_ERROR = "odata.continue-on-error"
TRANSPORT_FAULTS = frozenset({"reset_mid_body", "truncated_json"})
_VERSIONS = frozenset({"v9.0", "v9.1", "v9.2"})
_API_PATH = re.compile(r"^/api/data/(?P<version>[^/]+)(?:/(?P<tail>.*))?$")


def resolve_target(target: str, environment_url: str, version: str) -> tuple[str, str, str]:
    """(API version, raw path after it, raw query) an operation addresses; ApiError (that
    operation's answer) for another host or an unknown API version."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        root = urlsplit(environment_url)
        if (parts.scheme.lower(), parts.netloc.lower()) != (
            root.scheme.lower(),
            root.netloc.lower(),
        ):
            raise ApiError(
                400,
                "0x0",
                f"The URI '{target}' of a batch operation does not address this service "
                f"('{environment_url}/').",
            )
    if not parts.path.startswith("/"):
        return version, parts.path, parts.query
    found = _API_PATH.match(parts.path)
    if found is None:
        raise not_found_segment(parts.path.strip("/").split("/")[0])
    if found["version"] not in _VERSIONS:
        raise not_found_segment(found["version"])
    return found["version"], found["tail"] or "", parts.query


def _answer(error: ApiError) -> Outcome:
    response = error.response()
    return Outcome(response.status, dict(response.headers), response.body)


async def _run(
    server: EnvironmentServer, caller: Caller, operation: BatchOperation, version: str, cost: Cost
) -> Outcome:
    """One operation, checked and run the way a direct GET is."""
    env = server.runtime
    try:
        api_version, path, query = resolve_target(operation.target, env.url, version)
    except ApiError as error:
        return _answer(error)
    refusal = server.refusal(caller, CIMultiDict(operation.headers), unquote(path))
    if refusal is not None:
        status, body = refusal
        return Outcome(status, {"Content-Type": JSON_TYPE, "OData-Version": "4.0"}, body)
    request = ApiRequest(
        method="GET",
        path=path,
        raw_query=query,
        headers=operation.headers,
        base_url=f"{env.url}/api/data/{api_version}",
        user_id=caller.user_id,
        business_unit_id=env.business_unit_id,
        organization_id=env.organization_id,
    )
    return await server.operate(request, cost)


async def serve_batch(
    server: EnvironmentServer, request: web.Request, caller: Caller, headers: dict[str, str]
) -> web.StreamResponse:
    """Answer a ``$batch`` request of an authenticated, authorised caller."""
    env = server.runtime
    if request.method != "POST":
        message = f"The requested resource does not support http method '{request.method}'."
        return server.json_reply(405, headers, error_body("0x80060888", message), caller.server)
    try:
        operations = parse_batch(request.headers.get("Content-Type"), await request.read())
    except BatchError as exc:
        env.rejections["400_batch"] += 1
        return server.json_reply(exc.status, headers, error_body(exc.code, str(exc)), caller.server)
    admission = env.protection.admit(caller.app_id, caller.server)
    if isinstance(admission, Throttle):
        return server.throttled(admission, caller, headers)
    env.protection.count_batch(caller.app_id, len(operations))
    prefer = ", ".join(request.headers.getall("Prefer", []))
    keep_going = CONTINUE_ON_ERROR in prefer.lower()
    parts: list[bytes] = []
    cost, status, wire_fault = Cost(), 200, None
    try:
        for operation in operations:
            outcome = await _run(server, caller, operation, request.match_info["version"], cost)
            if outcome.gateway:
                status = outcome.status
                headers.update(outcome.headers)
                return server.reply(status, headers, outcome.body, caller.server)
            if outcome.fault in TRANSPORT_FAULTS:
                wire_fault = outcome.fault
            part_headers = {"REQ_ID": str(uuid.uuid4()), **outcome.headers}
            parts.append(
                render_part(outcome.status, part_headers, outcome.body, operation.content_id)
            )
            if outcome.status >= 400 and not keep_going:
                status = outcome.status
                break
        content_type, payload = render_batch(parts)
        headers.update(env.protection.rate_headers(caller.app_id, caller.server))
        headers.update({"Content-Type": content_type, "OData-Version": "4.0"})
        if keep_going:
            headers["Preference-Applied"] = CONTINUE_ON_ERROR
        return await server.send(
            request, status, headers, payload, server=caller.server, fault=wire_fault
        )
    finally:
        env.protection.finish(
            admission, rows=cost.rows, execution_seconds=cost.execution, status=status
        )
