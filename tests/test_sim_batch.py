"""$batch in the simulated Web API: the multipart format (pure), then over real HTTPS — parts
answer exactly what the same direct GET answers, errors end the batch, the limits count a batch
as one request with its operations' execution time, and faults hit operations like requests."""

from __future__ import annotations

import email
import email.policy
import re
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync.simulator.batch import resolve_target
from sync.simulator.multipart import (
    MAX_OPERATIONS,
    BatchError,
    parse_batch,
    render_batch,
    render_part,
)
from sync.simulator.protocol import ApiError
from tests.simfixtures import (
    _no_ca_env,  # noqa: F401 - registers the no_ca_env fixture
    admin,
    environment,
    running_simulator,
    token_for,
    user_stats,
)
from tests.test_sim_http import api, bearer, session

PROTECTION_SCENARIO = Path(__file__).parent / "scenarios" / "protection.toml"
DATETIME_PATH = (
    "EntityDefinitions(LogicalName='{}')/Attributes/Microsoft.Dynamics.CRM.DateTimeAttributeMetadata"
    "?$select=LogicalName,DateTimeBehavior"
)
pytestmark = pytest.mark.usefixtures("no_ca_env")


def batch_body(
    boundary: str, requests: list[str | tuple[str, dict[str, str]]], newline: str = "\r\n"
) -> bytes:
    """A batch of GETs (target, or (target, headers)) written the way clients write them."""
    out = []
    for item in requests:
        target, headers = (item, {}) if isinstance(item, str) else item
        lines = [
            f"--{boundary}",
            "Content-Type: application/http",
            "Content-Transfer-Encoding: binary",
            "",
            f"GET {target} HTTP/1.1",
            "Accept: application/json",
            *(f"{name}: {value}" for name, value in headers.items()),
            "",
            "",
        ]
        out.append(newline.join(lines))
    return ("".join(out) + f"--{boundary}--{newline}").encode()


def parse_response(content_type: str, body: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """(status, headers, body) of each part, read with the stdlib MIME parser."""
    message = email.message_from_bytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body, policy=email.policy.HTTP
    )
    assert isinstance(message, EmailMessage) and message.is_multipart()
    parts = []
    for part in message.iter_parts():
        assert part.get_content_type() == "application/http"
        assert part["Content-Transfer-Encoding"] == "binary"
        raw = part.get_payload(decode=True)
        assert isinstance(raw, bytes)
        head, _, content = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode().split("\r\n")
        version, status, _reason = status_line.split(" ", 2)
        assert version == "HTTP/1.1"
        headers = dict(line.split(": ", 1) for line in header_lines)
        parts.append((int(status), headers, content))
    return parts


# -- the wire format (pure) ---------------------------------------------------------------


def test_parses_what_the_airbyte_connector_sends() -> None:
    """A quoted boundary, CRLF lines and /api/data paths (Airbyte 1.0.2's DateTimeBehavior batch)."""
    boundary = f"batch_{uuid.uuid4()}"
    targets = [f"/api/data/v9.2/{DATETIME_PATH.format(t)}" for t in ("account", "contact")]
    ops = parse_batch(f'multipart/mixed; boundary="{boundary}"', batch_body(boundary, targets))
    assert [(op.method, op.target, op.headers) for op in ops] == [
        ("GET", target, {"Accept": "application/json"}) for target in targets
    ]


def test_parses_lf_lines_relative_targets_headers_and_content_ids() -> None:
    """LF-only lines, relative targets, part headers (Prefer) and Content-ID are read as written."""
    body = batch_body(
        "b", ["WhoAmI", ("accounts?$select=name", {"Prefer": "odata.maxpagesize=2"})], "\n"
    ).replace(b"binary\n\nGET accounts", b"binary\nContent-ID: 7\n\nGET accounts")
    ops = parse_batch("multipart/mixed;boundary=b", body)
    assert [op.target for op in ops] == ["WhoAmI", "accounts?$select=name"]
    assert ops[1].headers["Prefer"] == "odata.maxpagesize=2"
    assert (ops[0].content_id, ops[1].content_id) == (None, "7")


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ("application/json", b"{}", "needs Content-Type multipart/mixed"),
        ("multipart/mixed", b"--x--\r\n", "needs Content-Type multipart/mixed"),
        ("multipart/mixed; boundary=x", b"--x\r\n\r\nGET WhoAmI HTTP/1.1\r\n", "closing delimiter"),
        ("multipart/mixed; boundary=x", b"--x--\r\n", "holds no operations"),
        (
            "multipart/mixed; boundary=x",
            b"--x\r\nContent-Type: multipart/mixed; boundary=changeset_1\r\n\r\n"
            b"--changeset_1--\r\n--x--\r\n",
            "Operation 1 of the batch is a change set; the simulator is read-only",
        ),
        (
            "multipart/mixed; boundary=x",
            batch_body("x", ["WhoAmI"]).replace(b"GET WhoAmI", b"POST accounts"),
            "Operation 1 of the batch is POST accounts; the simulator is read-only",
        ),
        (
            "multipart/mixed; boundary=x",
            batch_body("x", ["WhoAmI"]).replace(b" HTTP/1.1", b""),
            "Operation 1 of the batch has no valid request line",
        ),
    ],
)
def test_refused_batches(content_type: str, body: bytes, message: str) -> None:
    """Malformed batches, change sets and writes are refused whole, with a message saying why."""
    with pytest.raises(BatchError, match=re.escape(message)):
        parse_batch(content_type, body)


def test_at_most_1000_operations() -> None:
    """1,000 operations are fine; 1,001 are refused with the documented limit in the message."""
    assert (
        len(parse_batch("multipart/mixed; boundary=x", batch_body("x", ["WhoAmI"] * 1000))) == 1000
    )
    with pytest.raises(BatchError) as refused:
        parse_batch("multipart/mixed; boundary=x", batch_body("x", ["WhoAmI"] * 1001))
    assert str(refused.value) == (
        "The batch holds 1001 operations; a batch request can contain at most 1000."
    )
    assert (refused.value.status, refused.value.code, MAX_OPERATIONS) == (400, "0x0", 1000)


def test_rendered_response_is_standard_multipart() -> None:
    """batchresponse_<guid> boundary, application/http parts with full responses, readable by
    the stdlib MIME parser and by the blank-line split Airbyte's connector uses."""
    parts = [
        render_part(200, {"OData-Version": "4.0"}, b'{"value":[]}'),
        render_part(404, {"OData-Version": "4.0"}, b'{"error":{}}', content_id="2"),
    ]
    content_type, body = render_batch(parts)
    boundary = content_type.removeprefix("multipart/mixed; boundary=")
    assert re.fullmatch(r"batchresponse_[0-9a-f-]{36}", boundary)
    assert [(s, b) for s, _, b in parse_response(content_type, body)] == [
        (200, b'{"value":[]}'),
        (404, b'{"error":{}}'),
    ]
    assert b"Content-ID: 2\r\n" in body and body.endswith(f"--{boundary}--\r\n".encode())
    chunks = [c for c in body.decode().split(f"--{boundary}") if c.strip() not in ("", "--")]
    sections = re.split(r"(?:\r\n\r\n|\n\n)", chunks[0], maxsplit=2)
    assert sections[1].startswith("HTTP/1.1 200 OK") and sections[2].strip() == '{"value":[]}'


def test_targets_resolve_like_urls_of_the_service() -> None:
    """Absolute URLs of this environment, /api/data paths and relative targets all resolve;
    another host is that operation's 400, another API version its 404."""
    url = "https://127.0.0.1:9443"
    assert resolve_target(f"{url}/api/data/v9.1/accounts?$top=1", url, "v9.2") == (
        "v9.1",
        "accounts",
        "$top=1",
    )
    assert resolve_target("/api/data/v9.2/WhoAmI", url, "v9.0") == ("v9.2", "WhoAmI", "")
    assert resolve_target("accounts%28x%29", url, "v9.0") == ("v9.0", "accounts%28x%29", "")
    with pytest.raises(ApiError) as other_host:
        resolve_target("https://elsewhere/api/data/v9.2/accounts", url, "v9.2")
    assert other_host.value.status == 400
    with pytest.raises(ApiError) as other_version:
        resolve_target("/api/data/v8.2/accounts", url, "v9.2")
    assert (other_version.value.status, other_version.value.code) == (404, "0x8006088a")


# -- over HTTPS -----------------------------------------------------------------------------


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator("auth", tmp_path_factory.mktemp("sim-batch")) as ready:
        yield ready


@pytest.fixture(scope="module", name="limits_sim")
def _limits_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(
        PROTECTION_SCENARIO, tmp_path_factory.mktemp("sim-batch-limits")
    ) as ready:
        yield ready


async def send_batch(
    sim: dict[str, Any],
    env: str,
    requests: list[str | tuple[str, dict[str, str]]],
    token: str,
    **headers: str,
) -> tuple[int, dict[str, str], bytes]:
    boundary = f"batch_{uuid.uuid4()}"
    sent = {"Content-Type": f'multipart/mixed; boundary="{boundary}"', **headers}
    async with (
        session(sim) as http,
        http.post(
            api(sim, env, "$batch"),
            data=batch_body(boundary, requests),
            headers=bearer(token, **sent),
        ) as response,
    ):
        return response.status, dict(response.headers), await response.read()


async def direct(
    sim: dict[str, Any], env: str, target: str, token: str, **headers: str
) -> tuple[int, bytes]:
    async with (
        session(sim) as http,
        http.get(api(sim, env, target), headers=bearer(token, **headers)) as response,
    ):
        return response.status, await response.read()


async def test_parts_answer_what_direct_gets_answer(sim: dict[str, Any]) -> None:
    """DateTimeBehavior metadata (as Airbyte asks), a paged read with Prefer, WhoAmI and a record
    count: each part has the status and JSON body the same direct GET gets."""
    token = token_for(sim, "contoso_prod")
    url = environment(sim, "contoso_prod")["url"]
    paged = ("accounts?$select=name&$orderby=accountid", {"Prefer": "odata.maxpagesize=4"})
    requests: list[str | tuple[str, dict[str, str]]] = [
        f"/api/data/v9.2/{DATETIME_PATH.format('account')}",
        f"{url}/api/data/v9.2/{DATETIME_PATH.format('contact')}",
        paged,
        "WhoAmI()",
        "RetrieveTotalRecordCount(EntityNames=@p1)?@p1=%5B%27account%27%5D",
        "$metadata",
    ]
    status, headers, body = await send_batch(sim, "contoso_prod", requests, token)
    assert status == 200
    assert re.fullmatch(
        r"multipart/mixed; boundary=batchresponse_[0-9a-f-]{36}", headers["Content-Type"]
    )
    assert headers["OData-Version"] == "4.0"
    assert "x-ms-ratelimit-burst-remaining-xrm-requests" in headers
    parts = parse_response(headers["Content-Type"], body)
    assert [p[0] for p in parts] == [200] * 6
    behaviours = {
        item["LogicalName"]: item["DateTimeBehavior"]["Value"]
        for item in orjson.loads(parts[1][2])["value"]
    }
    assert (behaviours["createdon"], behaviours["birthdate"]) == ("UserLocal", "DateOnly")
    for target, part in zip(
        [DATETIME_PATH.format("account"), DATETIME_PATH.format("contact"), paged[0], "WhoAmI()"],
        parts[:4],
        strict=True,
    ):
        prefer = paged[1] if target == paged[0] else {}
        direct_status, direct_body = await direct(sim, "contoso_prod", target, token, **prefer)
        assert (part[0], orjson.loads(part[2])) == (direct_status, orjson.loads(direct_body))
    assert parts[2][1]["Preference-Applied"] == "odata.maxpagesize=4"
    assert parts[2][1]["Content-Type"] == "application/json; odata.metadata=minimal"
    assert all(re.fullmatch(r"[0-9a-f-]{36}", p[1]["REQ_ID"]) for p in parts)
    assert orjson.loads(parts[4][2])["EntityRecordCountCollection"]["Keys"] == ["account"]
    assert parts[5][1]["Content-Type"] == "application/xml" and parts[5][2].startswith(b"<?xml")


async def test_first_failure_ends_the_batch_unless_continue_on_error(sim: dict[str, Any]) -> None:
    """A 404 part ends the batch with status 404 (earlier parts kept); a denied table is that
    part's 403; with odata.continue-on-error every operation runs and the batch is 200."""
    token = token_for(sim, "contoso_prod")
    requests: list[str | tuple[str, dict[str, str]]] = ["WhoAmI", "nosuchset", "contacts", "WhoAmI"]
    status, headers, body = await send_batch(sim, "contoso_prod", requests, token)
    parts = parse_response(headers["Content-Type"], body)
    assert status == 404
    assert [p[0] for p in parts] == [200, 404]
    assert orjson.loads(parts[1][2]) == {
        "error": {
            "code": "0x8006088a",
            "message": "Resource not found for the segment 'nosuchset'.",
        }
    }
    status, headers, body = await send_batch(
        sim, "contoso_prod", requests, token, Prefer="odata.continue-on-error"
    )
    parts = parse_response(headers["Content-Type"], body)
    assert (status, headers["Preference-Applied"]) == (200, "odata.continue-on-error")
    assert [p[0] for p in parts] == [200, 404, 403, 200]
    assert orjson.loads(parts[2][2])["error"]["code"] == "0x80040220"


async def test_token_and_impersonation_rules(sim: dict[str, Any]) -> None:
    """No token: 401 for the batch. The batch's token serves every part (a part's own
    Authorization is ignored); an impersonation header on a part is that part's 403."""
    token = token_for(sim, "contoso_prod")
    boundary = "batch_x"
    async with (
        session(sim) as http,
        http.post(
            api(sim, "contoso_prod", "$batch"),
            data=batch_body(boundary, ["WhoAmI"]),
            headers={"Content-Type": f"multipart/mixed; boundary={boundary}"},
        ) as response,
    ):
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer authorization_uri=")
    requests: list[str | tuple[str, dict[str, str]]] = [
        ("WhoAmI", {"Authorization": "Bearer garbage"}),
        ("WhoAmI", {"CallerObjectId": str(uuid.uuid4())}),
    ]
    status, headers, body = await send_batch(
        sim, "contoso_prod", requests, token, Prefer="odata.continue-on-error"
    )
    parts = parse_response(headers["Content-Type"], body)
    assert (status, [p[0] for p in parts]) == (200, [200, 403])
    assert orjson.loads(parts[1][2])["error"]["code"] == "0x8004A110"


async def test_refused_batches_over_https(sim: dict[str, Any]) -> None:
    """Over 1,000 operations, a write, a non-multipart body: 400 JSON; GET $batch: 405."""
    token = token_for(sim, "contoso_prod")
    status, headers, body = await send_batch(sim, "contoso_prod", ["WhoAmI"] * 1001, token)
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    assert orjson.loads(body)["error"] == {
        "code": "0x0",
        "message": "The batch holds 1001 operations; a batch request can contain at most 1000.",
    }
    async with session(sim) as http:
        async with http.post(
            api(sim, "contoso_prod", "$batch"),
            data=b"{}",
            headers=bearer(token, **{"Content-Type": "application/json"}),
        ) as response:
            assert response.status == 400
        async with http.get(api(sim, "contoso_prod", "$batch"), headers=bearer(token)) as response:
            assert response.status == 405


async def test_batch_is_one_request_for_the_request_count(limits_sim: dict[str, Any]) -> None:
    """count_env allows 3 requests per 2 s: a batch of 5 operations plus 2 GETs pass, the next
    batch is refused whole with the 429 JSON body and Retry-After (no multipart)."""
    token = token_for(limits_sim, "count_env")
    admin(limits_sim, "POST", "/stats/reset")
    status, _, _ = await send_batch(limits_sim, "count_env", ["WhoAmI"] * 5, token)
    assert status == 200
    for _ in range(2):
        assert (await direct(limits_sim, "count_env", "WhoAmI", token))[0] == 200
    status, headers, body = await send_batch(limits_sim, "count_env", ["WhoAmI"], token)
    assert status == 429
    assert int(headers["Retry-After"]) >= 1
    assert orjson.loads(body)["error"]["code"] == "0x80072322"
    stats = user_stats(limits_sim, "count_env")
    assert (stats["batches"], stats["batch_operations"], stats["admitted"]) == (1, 5, 3)
    tenant = admin(limits_sim, "GET", "/stats")["tenants"]["contoso"]["requests"]
    assert tenant == 4 - 1 + 5  # 4 requests, but entitlements count the operations, not the batch


async def test_batch_spends_its_operations_execution_time(limits_sim: dict[str, Any]) -> None:
    """execution_env: 50 ms per 30 s, 30 ms per operation. One batch of 2 operations spends
    60 ms, so the next request is throttled with 0x80072321."""
    token = token_for(limits_sim, "execution_env")
    status, _, _ = await send_batch(limits_sim, "execution_env", ["WhoAmI", "WhoAmI"], token)
    assert status == 200
    status, body = await direct(limits_sim, "execution_env", "WhoAmI", token)
    assert (status, orjson.loads(body)["error"]["code"]) == (429, "0x80072321")


async def test_faults_hit_operations_like_requests(limits_sim: dict[str, Any]) -> None:
    """A SQL timeout drawn for an operation is its 500 part and ends the batch; a 503 drawn for
    one fails the whole batch exchange, as it would fail a direct GET."""
    token = token_for(limits_sim, "faulty_env")

    def switch(kind: str, rate: float) -> None:
        admin(limits_sim, "POST", "/faults", {"environment": "faulty_env", kind: rate})

    switch("sql_timeout", 1.0)
    status, headers, body = await send_batch(
        limits_sim, "faulty_env", ["accounts", "WhoAmI"], token
    )
    switch("sql_timeout", 0.0)
    parts = parse_response(headers["Content-Type"], body)
    assert status == 500 and len(parts) == 1
    assert orjson.loads(parts[0][2])["error"]["code"] == "0x80044151"
    switch("http_503", 1.0)
    status, headers, body = await send_batch(limits_sim, "faulty_env", ["WhoAmI"], token)
    switch("http_503", 0.0)
    assert status == 503 and headers["Content-Type"].startswith("application/json")
    status, _, _ = await send_batch(limits_sim, "faulty_env", ["WhoAmI"], token)
    assert status == 200
