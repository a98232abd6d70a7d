"""Seeded fault decisions for the simulated environments and Entra (pure).

Probabilities come from the scenario and may be changed at runtime through the admin API.
For each admitted request `FaultInjector.decide` draws at most one failure (502/503/504 with
or without ``Retry-After``, a SQL deadlock 500, a connection reset mid-body, a truncated
JSON body) and, independently, whether the response is slow. Early token expiry is decided
per token: once a token has been "expired early" every later request carrying it gets 401.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

FaultKind = Literal[
    "http_502", "http_503", "http_504", "sql_deadlock", "reset_mid_body", "truncated_json"
]
FAULT_KINDS: tuple[FaultKind, ...] = (
    "http_502",
    "http_503",
    "http_504",
    "sql_deadlock",
    "reset_mid_body",
    "truncated_json",
)
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
        if self.kind == "sql_deadlock":
            body = _error(
                "0x80044150",
                "Generic SQL error. CRM ErrorCode: -2147204784 Sql ErrorCode: -2146232060 "
                "Sql Number: 1205",
            )
            return (
                500,
                {**headers, "Content-Type": "application/json; odata.metadata=minimal"},
                body,
            )
        if self.kind == "http_503":
            body = _error("", "The service is temporarily unavailable. Please try again later.")
            return (
                503,
                {**headers, "Content-Type": "application/json; odata.metadata=minimal"},
                body,
            )
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
