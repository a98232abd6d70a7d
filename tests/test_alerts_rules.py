"""Alert rules, pure: which observations produce which messages, reminders, recoveries, dedupe."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sync.runtime.alerts.observe import EnvironmentView, TypeChange, observe
from sync.runtime.alerts.payloads import as_slack, as_teams, render
from sync.runtime.alerts.rules import Condition, Observation, Rule, decide
from sync.store.alerts import AlertKey, AlertState

T0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
ALL = frozenset(
    {
        "table_parked",
        "lag_exceeded",
        "auth_failed",
        "budget_exhausted",
        "schema_type_change",
        "verify_mismatch",
        "recovered",
    }
)
RULE = Rule("ops", ALL, repeat=timedelta(hours=6), lag_threshold=3600)
OBSERVED = frozenset(
    ("prod", e) for e in ("table_parked", "lag_exceeded", "auth_failed", "budget_exhausted")
)


def parked(table: str = "account") -> Condition:
    return Condition("table_parked", "prod", "contoso", table, "HTTP 500")


def obs(*conditions: Condition) -> Observation:
    return Observation(tuple(conditions), OBSERVED, {"prod": "contoso"})


class Run:
    """Feeds observations through decide with the stored states, like the monitor does."""

    def __init__(self, *rules: Rule) -> None:
        self.rules = rules or (RULE,)
        self.states: dict[AlertKey, AlertState] = {}

    def step(self, observation: Observation, now: datetime) -> list[tuple[str, str, str]]:
        decision = decide(self.rules, observation, self.states, now)
        self.states.update(decision.updates)
        return [(m.kind, m.name, m.table) for m in decision.messages]


def test_one_message_per_state_change_then_reminders_then_recovered() -> None:
    run = Run()
    assert run.step(obs(parked()), T0) == [("raised", "table_parked", "account")]
    assert run.step(obs(parked()), T0 + timedelta(minutes=1)) == []
    assert run.step(obs(parked()), T0 + timedelta(hours=5, minutes=59)) == []
    assert run.step(obs(parked()), T0 + timedelta(hours=6)) == [
        ("reminder", "table_parked", "account")
    ]
    assert run.step(obs(parked()), T0 + timedelta(hours=7)) == []
    assert run.step(obs(), T0 + timedelta(hours=8)) == [("recovered", "recovered", "account")]
    assert run.step(obs(), T0 + timedelta(hours=9)) == []
    # It fails again: a new raise.
    assert run.step(obs(parked()), T0 + timedelta(hours=10)) == [
        ("raised", "table_parked", "account")
    ]


def test_stored_state_survives_a_restart() -> None:
    first = Run()
    first.step(obs(parked()), T0)
    restarted = Run()
    restarted.states = dict(first.states)  # what dv_alert_state gives back
    assert restarted.step(obs(parked()), T0 + timedelta(minutes=5)) == []


def test_unobserved_environment_does_not_recover() -> None:
    run = Run()
    run.step(obs(parked()), T0)
    elsewhere = Observation((), frozenset(), {})  # held by another daemon now
    assert run.step(elsewhere, T0 + timedelta(minutes=1)) == []
    assert all(s.active for s in run.states.values())


def test_recovered_only_when_listed() -> None:
    rule = Rule("quiet", frozenset({"table_parked"}))
    run = Run(rule)
    assert run.step(obs(parked()), T0) == [("raised", "table_parked", "account")]
    assert run.step(obs(), T0 + timedelta(minutes=1)) == []
    assert not next(iter(run.states.values())).active


def test_lag_uses_each_alerts_threshold() -> None:
    strict = Rule("strict", frozenset({"lag_exceeded"}), lag_threshold=60)
    loose = Rule("loose", frozenset({"lag_exceeded"}), lag_threshold=7200)
    lag = Condition("lag_exceeded", "prod", "contoso", "contact", "", value=600)
    decision = decide((strict, loose), obs(lag), {}, T0)
    assert [(m.alert, m.name) for m in decision.messages] == [("strict", "lag_exceeded")]


def test_tenant_filter_and_event_filter() -> None:
    other = Rule("fabrikam_only", ALL, tenants=frozenset({"fabrikam"}))
    only_auth = Rule("auth", frozenset({"auth_failed"}))
    decision = decide((other, only_auth), obs(parked()), {}, T0)
    assert decision.messages == ()


def test_auth_failure_folds_the_parked_tables_into_one_message() -> None:
    run = Run()
    auth = Condition("auth_failed", "prod", "contoso", "", "AADSTS7000215: invalid secret")
    assert run.step(obs(auth, parked("account"), parked("contact")), T0) == [
        ("raised", "auth_failed", "")
    ]
    # Signed in again and the tables sync: one recovery, for the environment.
    assert run.step(obs(), T0 + timedelta(minutes=2)) == [("recovered", "recovered", "")]


def test_type_change_is_one_off_and_old_ones_are_not_announced() -> None:
    run = Run()
    change = Condition(
        "schema_type_change",
        "prod",
        "contoso",
        "account",
        "revenue is now text",
        marker="m1",
        at=T0,
    )
    assert run.step(obs(change), T0 + timedelta(minutes=1)) == [
        ("event", "schema_type_change", "account")
    ]
    assert run.step(obs(change), T0 + timedelta(hours=7)) == []  # never reminded
    newer = Condition("schema_type_change", "prod", "contoso", "account", "", marker="m2", at=T0)
    assert run.step(obs(newer), T0 + timedelta(hours=1)) == [
        ("event", "schema_type_change", "account")
    ]
    fresh = Run()
    old = Condition("schema_type_change", "prod", "contoso", "x", "", marker="m", at=T0)
    assert fresh.step(obs(old), T0 + timedelta(days=30)) == []
    assert fresh.states  # remembered, so it is not announced later either


def test_observe_from_plain_values() -> None:
    view = EnvironmentView(
        "prod",
        "contoso",
        ("account",),
        attempted=True,
        budget_renews_at=T0 + timedelta(hours=1),
    )
    changes = [
        TypeChange(
            "prod", "account", "revenue", "text", T0, old_type="numeric", kept_as="revenue__numeric"
        ),
        TypeChange("prod", "contact", "x", "text", T0),  # not configured: ignored
    ]
    observation = observe([view], [], changes, None, T0)
    events = sorted((c.event, c.table) for c in observation.conditions)
    assert events == [("budget_exhausted", ""), ("schema_type_change", "account")]
    assert ("prod", "verify_mismatch") not in observation.observed  # not wired: no recovery
    assert "revenue__numeric" in observation.conditions[1].detail


def test_payload_formats() -> None:
    message = decide((RULE,), obs(parked()), {}, T0).messages[0]
    card = as_teams(message)
    assert card["type"] == "message"
    attachment = card["attachments"][0]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert attachment["content"]["type"] == "AdaptiveCard"
    slack = as_slack(
        decide(
            (RULE,), obs(Condition("table_parked", "prod", "c", "t", "<!channel> & co")), {}, T0
        ).messages[0]
    )
    assert slack["text"].startswith("dvmirror: table t")
    assert "<!channel>" not in str(slack["blocks"])
    plain = render(message, "json")
    assert plain["event"] == "table_parked" and plain["table"] == "account"
