"""Which state changes produce which alert messages: pure, tested with plain values and a clock.

The monitor (runtime.alerts.monitor) looks at what the daemon knows and hands `decide` an
`Observation`: the conditions that hold now (a parked table, an environment whose sign-in fails,
each table's lag, …) and the `(environment, event)` pairs it could see at all. `decide` compares
them with each alert's stored `AlertState`s and returns the messages to send and the states to
store:

- a condition that starts holding: one `raised` message;
- while it holds: a `reminder` every `repeat`;
- once it ends: one `recovered` message, if the alert lists `recovered` (only for pairs that
  were observed: an environment not looked at, e.g. held by another daemon, recovers nothing);
- `schema_type_change` is a one-off: one message per change (its marker), never reminded.

Dedupe is by key (alert, environment, table, event): a restart reads the stored states back and
sends nothing that was sent already. While an environment's sign-in fails, its tables' parked
conditions are folded into the one `auth_failed` message (every table is parked by it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from sync.config.alerts import ONE_OFF_EVENTS, STATE_EVENTS, Alert
from sync.store.alerts import AlertKey, AlertState

Kind = Literal["raised", "reminder", "recovered", "event"]


@dataclass(frozen=True)
class Condition:
    """Something that holds now, in one environment (table '' for the whole environment)."""

    event: str
    environment: str
    tenant: str
    table: str = ""
    detail: str = ""
    # lag_exceeded: the table's lag in seconds (each alert compares it with its threshold).
    value: float | None = None
    # One-off events: which occurrence (a new marker is a new message) and when it happened.
    marker: str = ""
    at: datetime | None = None


@dataclass(frozen=True)
class Observation:
    conditions: tuple[Condition, ...]
    # (environment, event) pairs the monitor could see: absent conditions there have ended.
    observed: frozenset[tuple[str, str]]
    tenants: Mapping[str, str] = field(default_factory=dict)  # environment → tenant


@dataclass(frozen=True)
class Rule:
    """What `decide` needs of one [[alerts]] entry."""

    name: str
    events: frozenset[str]
    tenants: frozenset[str] | None = None
    repeat: timedelta = timedelta(hours=6)
    lag_threshold: float | None = None

    @classmethod
    def of(cls, alert: Alert) -> Rule:
        return cls(
            name=alert.name,
            events=frozenset(alert.events),
            tenants=frozenset(alert.tenants) if alert.tenants is not None else None,
            repeat=timedelta(seconds=alert.repeat),
            lag_threshold=alert.lag_threshold,
        )


@dataclass(frozen=True)
class Message:
    alert: str
    kind: Kind
    event: str  # the condition's event (for `recovered`: the event that ended)
    environment: str
    tenant: str
    table: str
    detail: str
    since: datetime
    at: datetime

    @property
    def name(self) -> str:
        """The event as receivers see it: `recovered` for a recovery."""
        return "recovered" if self.kind == "recovered" else self.event


@dataclass(frozen=True)
class Decision:
    messages: tuple[Message, ...]
    updates: dict[AlertKey, AlertState]


def fold_auth(observation: Observation) -> Observation:
    """While an environment's sign-in fails, its tables' `table_parked` is not a separate
    message (nor a recovery): the one `auth_failed` message covers them."""
    failing = {c.environment for c in observation.conditions if c.event == "auth_failed"}
    if not failing:
        return observation
    return replace(
        observation,
        conditions=tuple(
            c
            for c in observation.conditions
            if not (c.event == "table_parked" and c.environment in failing)
        ),
        observed=frozenset(
            (env, event)
            for env, event in observation.observed
            if not (event == "table_parked" and env in failing)
        ),
    )


def _holds(rule: Rule, condition: Condition) -> bool:
    if condition.event not in rule.events:
        return False
    if rule.tenants is not None and condition.tenant not in rule.tenants:
        return False
    if condition.event == "lag_exceeded":
        threshold = rule.lag_threshold
        return threshold is not None and condition.value is not None and condition.value > threshold
    return True


def decide(
    rules: Iterable[Rule],
    observation: Observation,
    states: Mapping[AlertKey, AlertState],
    now: datetime,
) -> Decision:
    observation = fold_auth(observation)
    messages: list[Message] = []
    updates: dict[AlertKey, AlertState] = {}
    for rule in rules:
        holding: set[AlertKey] = set()
        for condition in observation.conditions:
            if not _holds(rule, condition):
                continue
            key = AlertKey(rule.name, condition.environment, condition.table, condition.event)
            holding.add(key)
            before = states.get(key)
            if condition.event in ONE_OFF_EVENTS:
                _one_off(
                    rule, key, condition, before=before, now=now, messages=messages, updates=updates
                )
            else:
                _state(
                    rule, key, condition, before=before, now=now, messages=messages, updates=updates
                )
        for key, before in states.items():
            if (
                key.alert != rule.name
                or key in holding
                or not before.active
                or key.event not in STATE_EVENTS
                or (key.environment, key.event) not in observation.observed
            ):
                continue
            updates[key] = replace(before, active=False, since=now)
            if "recovered" in rule.events and key.event in rule.events:
                tenant = observation.tenants.get(key.environment, "")
                if rule.tenants is None or tenant in rule.tenants:
                    messages.append(
                        _message(
                            rule,
                            "recovered",
                            key=key,
                            tenant=tenant,
                            detail=before.detail,
                            since=before.since,
                            now=now,
                        )
                    )
    return Decision(tuple(messages), updates)


def _message(
    rule: Rule,
    kind: Kind,
    *,
    key: AlertKey,
    tenant: str,
    detail: str,
    since: datetime,
    now: datetime,
) -> Message:
    return Message(
        rule.name, kind, key.event, key.environment, tenant, key.table, detail, since, now
    )


def _state(
    rule: Rule,
    key: AlertKey,
    condition: Condition,
    *,
    before: AlertState | None,
    now: datetime,
    messages: list[Message],
    updates: dict[AlertKey, AlertState],
) -> None:
    if before is None or not before.active:
        updates[key] = AlertState(True, now, now, detail=condition.detail)
        messages.append(
            _message(
                rule,
                "raised",
                key=key,
                tenant=condition.tenant,
                detail=condition.detail,
                since=now,
                now=now,
            )
        )
    elif before.last_sent_at is None or now - before.last_sent_at >= rule.repeat:
        updates[key] = replace(before, last_sent_at=now, detail=condition.detail)
        messages.append(
            _message(
                rule,
                "reminder",
                key=key,
                tenant=condition.tenant,
                detail=condition.detail,
                since=before.since,
                now=now,
            )
        )


def _one_off(
    rule: Rule,
    key: AlertKey,
    condition: Condition,
    *,
    before: AlertState | None,
    now: datetime,
    messages: list[Message],
    updates: dict[AlertKey, AlertState],
) -> None:
    if before is not None and before.marker == condition.marker:
        return
    happened = condition.at or now
    updates[key] = AlertState(
        False, happened, now, marker=condition.marker, detail=condition.detail
    )
    # First sight of an old change (alerts just configured): recorded, not announced.
    if before is None and now - happened > rule.repeat:
        return
    messages.append(
        _message(
            rule,
            "event",
            key=key,
            tenant=condition.tenant,
            detail=condition.detail,
            since=happened,
            now=now,
        )
    )
