"""`dvmirror demo --console`: the demo's configuration with a [console] on a loopback http URL,
who to sign in as (from the simulator's ready line), and waiting for Ctrl-C.

The demo scenario's web registration is the sync app itself, with loopback redirect URIs
(Entra, and the simulator, ignore a loopback URI's port), so the console only needs a free local
port and a session key of its own, written next to the simulator's files.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
from pathlib import Path
from typing import Any

CONSOLE_HOST = "127.0.0.1"
DEFAULT_CONSOLE_PORT = 8080


def pick_port(preferred: int) -> int:
    """`preferred` when it is free on the loopback address (0, or busy: an ephemeral port).

    The port is chosen before the console starts because the public URL, and so the redirect
    URI sent to the authority, names it."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock:
            try:
                sock.bind((CONSOLE_HOST, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError(f"no free port on {CONSOLE_HOST}")  # bind to port 0 does not fail in practice


def console_section(port: int, session_key_file: Path) -> str:
    """The [console] TOML for a loopback http console (no TLS: the cookie is not Secure)."""
    url = f"http://{CONSOLE_HOST}:{port}"
    return (
        "[console]\n"
        f'listen = "{CONSOLE_HOST}:{port}"\n'
        f'public_url = "{url}"\n'
        f"session_key = {{ file = {_toml_string(str(session_key_file))} }}\n\n"
    )


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_console_config(generated: Path, port: int) -> Path:
    """The simulator's generated configuration plus [console], as dvmirror-console.toml beside
    it; the session key is a fresh random secret in a 0600 file."""
    key_file = generated.parent / "console-session-key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_urlsafe(48))
    text = generated.read_text(encoding="utf-8")
    at = text.index("[[tenants]]")
    target = generated.parent / "dvmirror-console.toml"
    target.write_text(text[:at] + console_section(port, key_file) + text[at:], encoding="utf-8")
    return target


def sign_in_lines(ready: dict[str, Any]) -> list[str]:
    """One line per simulated user: upn, name, tenant and the web app's roles for them."""
    client_id = str(ready["client_id"])
    lines = []
    for tenant in ready["tenants"]:
        for user in tenant.get("users", []):
            roles = user.get("roles", {}).get(client_id) or []
            shown = ", ".join(roles) if roles else "no role (sees which role to assign)"
            lines.append(f"{user['upn']}  {user['name']}  [{tenant['name']}]  {shown}")
    return lines


async def wait_for_interrupt() -> None:
    """Until SIGINT (Ctrl-C) or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
