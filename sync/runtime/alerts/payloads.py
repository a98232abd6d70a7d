"""The body of an alert message in each format: plain JSON, a Teams card, a Slack message.

- `json`: one flat object with stable keys (`source`, `alert`, `kind`, `event`, …, `text`).
- `teams`: a message with one Adaptive Card attachment, as Teams incoming webhooks and the
  Workflows "post to a channel when a webhook request is received" flow accept.
- `slack`: incoming-webhook JSON: `text` (the notification fallback) and `blocks` (mrkdwn).
"""

from __future__ import annotations

from typing import Any

from sync.runtime.alerts.rules import Message

WHAT = {
    "table_parked": "is parked (its sync fails and is retried)",
    "lag_exceeded": "lags behind the source more than its threshold",
    "verify_mismatch": "does not match the source (verify found differences)",
    "auth_failed": "cannot sign in",
    "budget_exhausted": "has spent its daily request budget",
    "schema_type_change": "changed a column's type at the source",
}
ENDED = {
    "table_parked": "syncs again",
    "lag_exceeded": "has caught up",
    "verify_mismatch": "matches the source again",
    "auth_failed": "signs in again",
    "budget_exhausted": "has request budget again",
}


def subject(message: Message) -> str:
    if message.table:
        return f"table {message.table} of environment {message.environment}"
    return f"environment {message.environment}"


def summary(message: Message) -> str:
    """One line a person reads first."""
    who = subject(message)
    since = message.since.strftime("%Y-%m-%d %H:%M UTC")
    if message.kind == "recovered":
        return f"dvmirror: recovered: {who} {ENDED.get(message.event, 'recovered')} (since {since})"
    what = WHAT.get(message.event, message.event)
    if message.kind == "reminder":
        return f"dvmirror: still: {who} {what} (since {since})"
    return f"dvmirror: {who} {what}"


def as_json(message: Message) -> dict[str, Any]:
    return {
        "source": "dvmirror",
        "alert": message.alert,
        "kind": message.kind,
        "event": message.name,
        "condition": message.event,
        "tenant": message.tenant,
        "environment": message.environment,
        "table": message.table or None,
        "detail": message.detail,
        "since": message.since.isoformat(),
        "at": message.at.isoformat(),
        "text": summary(message),
    }


def _facts(message: Message) -> list[tuple[str, str]]:
    facts = [("Tenant", message.tenant), ("Environment", message.environment)]
    if message.table:
        facts.append(("Table", message.table))
    facts += [("Event", message.name), ("Since", message.since.isoformat())]
    if message.detail:
        facts.append(("Detail", message.detail))
    return facts


def as_teams(message: Message) -> dict[str, Any]:
    color = "Good" if message.kind == "recovered" else "Attention"
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {
                "type": "TextBlock",
                "text": summary(message),
                "weight": "Bolder",
                "color": color,
                "wrap": True,
            },
            {
                "type": "FactSet",
                "facts": [{"title": k, "value": v} for k, v in _facts(message)],
            },
        ],
    }
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": card,
            }
        ],
    }


def _slack_escape(text: str) -> str:
    # Slack reads &, < and > as markup (<!channel> would ping everyone).
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def as_slack(message: Message) -> dict[str, Any]:
    lines = "\n".join(f"*{k}:* {_slack_escape(v)}" for k, v in _facts(message))
    text = _slack_escape(summary(message))
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "section", "text": {"type": "mrkdwn", "text": lines[:2900]}},
        ],
    }


def render(message: Message, fmt: str) -> dict[str, Any]:
    if fmt == "teams":
        return as_teams(message)
    if fmt == "slack":
        return as_slack(message)
    return as_json(message)
