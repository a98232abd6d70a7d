"""What the HTTPS layer passes between authorisation, one operation and the reply.

Shared by dataverse_http.py (direct requests) and batch.py (the operations of a ``$batch``).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

JSON_TYPE = "application/json; odata.metadata=minimal"


@dataclass(frozen=True)
class Caller:
    """An authenticated, authorised request's identity and target."""

    app_id: str
    user_id: str
    server: int


def error_body(code: str, message: str) -> bytes:
    """The Web API error body ``{"error":{"code","message"}}`` (reference 2.5)."""
    return orjson.dumps({"error": {"code": code, "message": message}})


#: Injected faults that replace the whole HTTP exchange (a gateway answers, not Dataverse).
GATEWAY_FAULTS = frozenset({"http_502", "http_503", "http_504"})


@dataclass
class Cost:
    """What a request has cost so far (a batch's operations add up), for service protection.

    Charged before the modelled time is spent, so a client that hangs up mid-wait still pays."""

    rows: int = 0
    execution: float = 0.0  # modelled seconds


@dataclass(frozen=True)
class Outcome:
    """One operation's reply and a transport fault still to apply on the wire."""

    status: int
    headers: dict[str, str]
    body: bytes
    fault: str | None = None
    injected: bool = False  # an injected failure replaced the model's reply

    @property
    def gateway(self) -> bool:
        """True when a gateway failure replaced the reply: it fails the whole HTTP exchange."""
        return self.injected and self.fault in GATEWAY_FAULTS
