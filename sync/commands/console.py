"""`dvmirror console` (the console alone, against the same store) and `dvmirror run` with the
console beside the daemon (same process, its own listener, next to /metrics).

The console alone never migrates the store (the daemon owns the schema): it checks that the
store is at the current revision and refuses to start otherwise, and then writes only resync
requests and audit rows.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from sync.config.model import Config
from sync.console.app import ConsoleServer, start_console
from sync.errors import ConfigError
from sync.logs import get_logger
from sync.store.migrate import current_revision, head_revision
from sync.store.open import open_store, redact_url

log = get_logger("dvmirror.console")


async def console_sidecar(config: Config, store: AsyncEngine) -> ConsoleServer:
    """What the daemon starts beside /metrics when [console] is configured."""
    return await start_console(config, store)


async def run_with_console(config: Config) -> int:
    """`dvmirror run`: the daemon, plus the console when [console] is configured."""
    from sync.runtime.daemon import Daemon

    sidecars: list[Any] = [console_sidecar] if config.console is not None else []
    return await Daemon(config, sidecars=sidecars).run()


async def run_console(config: Config) -> int:
    """Serve the console until SIGTERM/SIGINT; exit 2 without [console] or a migrated store."""
    if config.console is None:
        raise ConfigError(f"{config.path}: no [console] section: add one to serve the console")
    store = await open_store(config, migrate=False)
    try:
        revision = await current_revision(store)
        if revision != head_revision():
            raise ConfigError(
                f"store {redact_url(config.store_url)} is at revision {revision or 'none'}, "
                f"not {head_revision()}: run `dvmirror migrate` (or start `dvmirror run`) first"
            )
        server = await start_console(config, store)
        print(
            f"dvmirror: console on {server.url} (public URL {config.console.public_url})",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await server.stop()
            log.info("console_stopped")
    finally:
        await store.dispose()
    return 0
