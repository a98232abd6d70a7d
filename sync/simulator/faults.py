"""Seeded fault decisions for the simulated environments and Entra (pure).

Probabilities come from the scenario and may be changed at runtime through the admin API.
For each admitted request `FaultInjector.decide` draws at most one failure (502/503/504 with
or without ``Retry-After``, a SQL deadlock 500, a SQL timeout 500, a query-throttling error,
a connection reset mid-body, a truncated JSON body) and, independently, whether the response
is slow. Early token expiry is decided per token: once a token has been "expired early" every
later request carrying it gets 401. New kinds are drawn after the older ones, so adding them
(at rate 0) leaves every existing scenario's draws unchanged.

The error bodies, as the reference gives them (codes are the hex form the Web API sends):

- ``sql_deadlock``: HTTP 500, ``0x80044150`` "Generic SQL error. CRM ErrorCode: -2147204784
  Sql ErrorCode: -2146232060 Sql Number: 1205" (reference 8, S42).
- ``sql_timeout``: HTTP 500, ``0x80044151`` (-2147204783) "SQL timeout expired. CRM
  ErrorCode: -2147204783 Sql ErrorCode: -2146232060 Sql Number: -2" (reference 8 and 10;
  the full text is S42's "Error Message"). HTTP 500 as SQL errors come in practice (8, [OBS]).
- ``query_throttling``: HTTP **400**, ``0x80048544`` (-2147187388) "This query cannot be
  executed because it conflicts with query throttling." (reference 6.5, S33), no
  ``Retry-After`` (S33 documents none). The status is [UNCONFIRMED] in the reference; the
  simulator picks 400, what the Web API sends for organization-service faults it has no
  specific status for (the batch doc's validation error 0x80044331 is a 400), and the
  choice that breaks a client deciding "transient" by status alone: only the code says
  "retry later, slower". S33's other manifestation, a delay before the query runs, is the
  ``slow`` fault.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

FaultKind = Literal[
    "http_502",
    "http_503",
    "http_504",
    "sql_deadlock",
    "reset_mid_body",
    "truncated_json",
    "sql_timeout",
    "query_throttling",
]
#: Draw order (the Literal's order); new kinds go last so existing scenarios draw exactly what
#: they drew before.
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
#: Kinds that are an error of the operation itself (the query failed in SQL), not of transport.
OPERATION_ERRORS: frozenset[FaultKind] = frozenset(
    {"sql_deadlock", "sql_timeout", "query_throttling"}
)
JSON_TYPE = "application/json; odata.metadata=minimal"
SQL_DEADLOCK = (
    "0x80044150",
    "Generic SQL error. CRM ErrorCode: -2147204784 Sql ErrorCode: -2146232060 Sql Number: 1205",
)
SQL_TIMEOUT = (
    "0x80044151",
    "SQL timeout expired. CRM ErrorCode: -2147204783 Sql ErrorCode: -2146232060 Sql Number: -2",
)
QUERY_THROTTLING = (
    "0x80048544",
    "This query cannot be executed because it conflicts with query throttling.",
)
_OPERATION_ERRORS: dict[str, tuple[int, tuple[str, str]]] = {
    "sql_deadlock": (500, SQL_DEADLOCK),
    "sql_timeout": (500, SQL_TIMEOUT),
    "query_throttling": (400, QUERY_THROTTLING),
}
Probability = Field(default=0.0, ge=0.0, le=1.0)


class FaultRates(BaseModel):
    """Per-request fault probabilities of one environment (0 = never, 1 = always)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    http_502: float = Probability
    http_503: float = Probability
    http_504: float = Probability
    sql_deadlock: float = Probability
    reset_mid_body: float = Probability
    truncated_json: float = Probability
    sql_timeout: float = Probability
    query_throttling: float = Probability
    slow: float = Probability
    slow_seconds: float = Field(default=2.0, ge=0.0, le=600.0)
    early_token_expiry: float = Probability
    retry_after_share: float = Field(
        default=0.5, ge=0.0, le=1.0, description="share of 5xx answers carrying Retry-After"
    )

    @model_validator(mode="after")
    def _at_most_one(self) -> FaultRates:
        total = sum(getattr(self, kind) for kind in FAULT_KINDS)
        if total > 1.0 + 1e-9:
            raise ValueError(f"failure probabilities add up to {total:g}; they must not exceed 1")
        return self


class EntraFaultRates(BaseModel):
    """Faults of the simulated token endpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    http_503: float = Probability
    retry_after: int = Field(default=2, ge=1, le=3600)
    slow: float = Probability
    slow_seconds: float = Field(default=2.0, ge=0.0, le=600.0)


@dataclass(frozen=True)
class FaultDecision:
    """What to do to one response."""

    kind: FaultKind | None = None
    retry_after: int | None = None
    delay: float = 0.0

    def error_response(self) -> tuple[int, dict[str, str], bytes] | None:
        """Status, headers and body of a failure that replaces the real answer."""
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if self.kind in _OPERATION_ERRORS:
            status, (code, message) = _OPERATION_ERRORS[self.kind]
            extra = {"Content-Type": JSON_TYPE, "OData-Version": "4.0"}
            return status, {**headers, **extra}, _error(code, message)
        if self.kind == "http_503":
            body = _error("", "The service is temporarily unavailable. Please try again later.")
            return 503, {**headers, "Content-Type": JSON_TYPE}, body
        if self.kind in ("http_502", "http_504"):
            status = 502 if self.kind == "http_502" else 504
            title = "502 Bad Gateway" if status == 502 else "504 Gateway Timeout"
            html = f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
            return status, {**headers, "Content-Type": "text/html"}, html.encode()
        return None


def _error(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


class FaultInjector:
    """Draws fault decisions from one seeded random stream."""

    def __init__(self, rates: FaultRates, seed: int) -> None:
        self._rates = rates
        self._random = random.Random(seed)
        self._expired_tokens: set[str] = set()
        self.counts: Counter[str] = Counter()

    @property
    def rates(self) -> FaultRates:
        return self._rates

    def update(self, changes: dict[str, Any]) -> FaultRates:
        """Change some probabilities at runtime (validated like the scenario)."""
        self._rates = FaultRates.model_validate({**self._rates.model_dump(), **changes})
        return self._rates

    def decide(self) -> FaultDecision:
        rates = self._rates
        delay = rates.slow_seconds if self._random.random() < rates.slow else 0.0
        if delay:
            self.counts["slow"] += 1
        draw = self._random.random()
        for kind in FAULT_KINDS:
            draw -= getattr(rates, kind)
            if draw < 0:
                self.counts[kind] += 1
                retry_after = None
                if kind.startswith("http_") and self._random.random() < rates.retry_after_share:
                    retry_after = self._random.randint(1, 3)
                return FaultDecision(kind=kind, retry_after=retry_after, delay=delay)
        return FaultDecision(delay=delay)

    def token_expired_early(self, token_id: str) -> bool:
        """Whether this token is (from now on) treated as expired before its exp."""
        if token_id in self._expired_tokens:
            return True
        if (
            self._rates.early_token_expiry
            and self._random.random() < self._rates.early_token_expiry
        ):
            self._expired_tokens.add(token_id)
            self.counts["early_token_expiry"] += 1
            return True
        return False

    def reset_counts(self) -> None:
        self.counts.clear()


class EntraFaultInjector:
    """Seeded faults of the token endpoint."""

    def __init__(self, rates: EntraFaultRates, seed: int) -> None:
        self.rates = rates
        self._random = random.Random(seed)

    def update(self, changes: dict[str, Any]) -> EntraFaultRates:
        self.rates = EntraFaultRates.model_validate({**self.rates.model_dump(), **changes})
        return self.rates

    def unavailable(self) -> bool:
        return self._random.random() < self.rates.http_503

    def delay(self) -> float:
        return self.rates.slow_seconds if self._random.random() < self.rates.slow else 0.0
