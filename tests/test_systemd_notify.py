"""systemd notify protocol against a real unix datagram socket, as systemd would listen."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sync.runtime import systemd as notify


@pytest.fixture(name="listener")
def _listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for systemd's notify socket."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def receive(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_status_watchdog_stopping_reach_the_socket(
    listener: tuple[socket.socket, str],
) -> None:
    """Each helper sends its KEY=VALUE lines as one datagram."""
    sock, path = listener
    env = {"NOTIFY_SOCKET": path}

    assert notify.ready("syncing 3 environments", environ=env)
    assert receive(sock) == ["READY=1", "STATUS=syncing 3 environments"]
    assert notify.status("2 tables parked", environ=env)
    assert receive(sock) == ["STATUS=2 tables parked"]
    assert notify.watchdog(environ=env)
    assert receive(sock) == ["WATCHDOG=1"]
    assert notify.reloading(environ=env)
    assert receive(sock) == ["RELOADING=1"]
    assert notify.stopping("draining", environ=env)
    assert receive(sock) == ["STOPPING=1", "STATUS=draining"]


def test_status_newlines_cannot_inject_states(listener: tuple[socket.socket, str]) -> None:
    """A newline in a status text is flattened, so it cannot smuggle in another assignment."""
    sock, path = listener
    notify.status("bad\nREADY=1", environ={"NOTIFY_SOCKET": path})
    assert receive(sock) == ["STATUS=bad READY=1"]


def test_environment_is_read_at_call_time(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an explicit environ, $NOTIFY_SOCKET is looked up on each call."""
    sock, path = listener
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.watchdog() is False
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify.watchdog() is True
    assert receive(sock) == ["WATCHDOG=1"]


def test_abstract_namespace_socket() -> None:
    """A NOTIFY_SOCKET starting with "@" addresses Linux's abstract namespace."""
    name = f"dvmirror-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert notify.ready(environ={"NOTIFY_SOCKET": f"@{name}"})
        assert receive(sock) == ["READY=1"]


def test_no_socket_is_a_no_op() -> None:
    """Outside systemd nothing is sent and nothing fails."""
    assert notify.ready("x", environ={}) is False
    assert notify.watchdog(environ={"NOTIFY_SOCKET": ""}) is False


def test_vanished_socket_is_not_fatal(tmp_path: Path) -> None:
    """If the socket path is gone, the call reports False instead of raising."""
    assert notify.watchdog(environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "60000000"}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    """The ping interval is half of $WATCHDOG_USEC, and only when the watchdog is ours."""
    assert notify.watchdog_interval(environ) == expected
