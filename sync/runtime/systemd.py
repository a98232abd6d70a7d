"""The systemd notify protocol (sd_notify), without extra dependencies.

systemd passes a datagram unix socket in $NOTIFY_SOCKET (a path, or an abstract-namespace name
when it starts with "@"); we send newline-separated KEY=VALUE states to it: READY=1 once
migrations and the first token succeeded, STATUS=… for `systemctl status`, WATCHDOG=1 from the
scheduler loop, STOPPING=1 on shutdown. Outside systemd (no $NOTIFY_SOCKET) every call is a
no-op. The environment is read on each call, never at import, so tests and re-execs see the
current value.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from sync.logs import get_logger

log = get_logger(__name__)


def _address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # abstract namespace: leading NUL, not a file
    if value.startswith("/"):
        return value
    return None  # vsock:… and other forms are not supported; treat as absent


def notify(*states: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send states like "READY=1" to systemd. False when not under systemd or the send failed."""
    env = os.environ if environ is None else environ
    target = env.get("NOTIFY_SOCKET", "")
    address = _address(target) if target else None
    if address is None or not states:
        return False
    message = "\n".join(states).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as exc:
        # systemd stopped listening, or the socket is not ours to use: carry on without it.
        log.debug("sd_notify_failed", error=exc.strerror or str(exc))
        return False
    return True


def ready(status: str | None = None, *, environ: Mapping[str, str] | None = None) -> bool:
    """Tell systemd start-up finished (Type=notify units count as started from here)."""
    states = ["READY=1"]
    if status:
        states.append(f"STATUS={_one_line(status)}")
    return notify(*states, environ=environ)


def status(text: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Set the one-line status shown by `systemctl status`."""
    return notify(f"STATUS={_one_line(text)}", environ=environ)


def watchdog(*, environ: Mapping[str, str] | None = None) -> bool:
    """Keep-alive ping; send at least every `watchdog_interval()` seconds."""
    return notify("WATCHDOG=1", environ=environ)


def stopping(status: str | None = None, *, environ: Mapping[str, str] | None = None) -> bool:
    """Tell systemd shutdown began (stops the watchdog from firing during the drain)."""
    states = ["STOPPING=1"]
    if status:
        states.append(f"STATUS={_one_line(status)}")
    return notify(*states, environ=environ)


def reloading(*, environ: Mapping[str, str] | None = None) -> bool:
    """Tell systemd a reload (SIGHUP) is in progress; send ready() when it is done."""
    return notify("RELOADING=1", environ=environ)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None without a watchdog.

    Like sd_watchdog_enabled(): $WATCHDOG_PID, when set, must be our pid, otherwise the
    watchdog belongs to another process (a parent that exec'd us without clearing it).
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2


def _one_line(text: str) -> str:
    # A newline would start a new KEY=VALUE assignment in the datagram.
    return " ".join(text.split())
