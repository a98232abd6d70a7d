"""SQL timeout and query-throttling faults: the exact bodies the reference gives (sections 6.5, 8,
10), scenario-configurable rates, draws of older kinds unchanged, and the answers over HTTPS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from sync.simulator.faults import FaultDecision, FaultInjector, FaultRates
from tests.simfixtures import (
    _no_ca_env,  # noqa: F401 - registers the no_ca_env fixture
    admin,
    running_simulator,
    token_for,
)
from tests.test_sim_http import api, bearer, session

PROTECTION_SCENARIO = Path(__file__).parent / "scenarios" / "protection.toml"
JSON_TYPE = "application/json; odata.metadata=minimal"
SQL_TIMEOUT_BODY = {
    "error": {
        "code": "0x80044151",
        "message": (
            "SQL timeout expired. CRM ErrorCode: -2147204783 Sql ErrorCode: -2146232060 "
            "Sql Number: -2"
        ),
    }
}
QUERY_THROTTLING_BODY = {
    "error": {
        "code": "0x80048544",
        "message": "This query cannot be executed because it conflicts with query throttling.",
    }
}


def test_sql_timeout_is_500_with_the_documented_body() -> None:
    """sql_timeout answers 500, code 0x80044151 (-2147204783), message with Sql Number: -2."""
    failure = FaultDecision(kind="sql_timeout").error_response()
    assert failure is not None
    status, headers, body = failure
    assert status == 500
    assert headers == {"Content-Type": JSON_TYPE, "OData-Version": "4.0"}
    assert orjson.loads(body) == SQL_TIMEOUT_BODY
    assert int("0x80044151", 16) - 2**32 == -2147204783


def test_query_throttling_is_400_without_retry_after() -> None:
    """query_throttling answers 400, code 0x80048544 (-2147187388), S33's message, no Retry-After."""
    failure = FaultDecision(kind="query_throttling").error_response()
    assert failure is not None
    status, headers, body = failure
    assert status == 400
    assert "Retry-After" not in headers
    assert orjson.loads(body) == QUERY_THROTTLING_BODY
    assert int("0x80048544", 16) - 2**32 == -2147187388


def test_sql_deadlock_body_is_unchanged() -> None:
    """The older SQL fault keeps its documented 0x80044150 / Sql Number: 1205 body."""
    failure = FaultDecision(kind="sql_deadlock").error_response()
    assert failure is not None
    assert failure[0] == 500
    assert orjson.loads(failure[2])["error"] == {
        "code": "0x80044150",
        "message": (
            "Generic SQL error. CRM ErrorCode: -2147204784 Sql ErrorCode: -2146232060 "
            "Sql Number: 1205"
        ),
    }


@pytest.mark.parametrize("kind", ["sql_timeout", "query_throttling"])
def test_rates_come_from_the_scenario_and_are_drawn(kind: str) -> None:
    """A rate of 1 draws the kind every time (never with Retry-After); rates are validated."""
    injector = FaultInjector(FaultRates.model_validate({kind: 1.0}), seed=3)
    decisions = [injector.decide() for _ in range(20)]
    assert {d.kind for d in decisions} == {kind}
    assert all(d.retry_after is None for d in decisions)
    assert injector.counts[kind] == 20
    with pytest.raises(ValidationError):
        FaultRates.model_validate({kind: 0.6, "sql_deadlock": 0.5})
    assert injector.update({kind: 0.0}).model_dump()[kind] == 0.0


def test_new_kinds_leave_older_draws_alone() -> None:
    """Turning the new kinds on changes only requests that drew no fault before."""
    old = {"http_503": 0.2, "sql_deadlock": 0.2, "truncated_json": 0.1, "slow": 0.1}
    new = {**old, "sql_timeout": 0.15, "query_throttling": 0.15}
    before = FaultInjector(FaultRates.model_validate(old), seed=11)
    after = FaultInjector(FaultRates.model_validate(new), seed=11)
    pairs = [(before.decide(), after.decide()) for _ in range(500)]
    for was, now in pairs:
        assert now.delay == was.delay
        if was.kind is not None:
            assert now == was
        else:
            assert now.kind in (None, "sql_timeout", "query_throttling")
    assert {now.kind for _, now in pairs} >= {"sql_timeout", "query_throttling"}


# -- over HTTPS ---------------------------------------------------------------------------


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(PROTECTION_SCENARIO, tmp_path_factory.mktemp("sim-faults-sql")) as ready:
        yield ready


@pytest.mark.usefixtures("no_ca_env")
async def test_sql_faults_over_https(sim: dict[str, Any]) -> None:
    """Switched on through the admin API, each fault answers a real request with its exact body."""
    token = token_for(sim, "faulty_env")
    url = api(sim, "faulty_env", "accounts?$select=name")
    expectations = {
        "sql_timeout": (500, SQL_TIMEOUT_BODY),
        "query_throttling": (400, QUERY_THROTTLING_BODY),
    }
    async with session(sim) as http:
        for kind, (status, body) in expectations.items():
            admin(sim, "POST", "/faults", {"environment": "faulty_env", kind: 1.0})
            async with http.get(url, headers=bearer(token)) as response:
                assert response.status == status
                assert response.headers["Content-Type"] == JSON_TYPE
                assert "Retry-After" not in response.headers
                assert "x-ms-ratelimit-burst-remaining-xrm-requests" in response.headers
                assert orjson.loads(await response.read()) == body
            admin(sim, "POST", "/faults", {"environment": "faulty_env", kind: 0.0})
        async with http.get(url, headers=bearer(token)) as response:
            assert response.status == 200
    stats = admin(sim, "GET", "/stats")
    faults = next(e["faults"] for e in stats["environments"] if e["environment"] == "faulty_env")
    assert faults["sql_timeout"] == 1 and faults["query_throttling"] == 1
