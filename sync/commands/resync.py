"""`dvmirror resync --env E (--table T | --all)`: queue a full pass for the daemon to run.

It writes one row to dv_resync_requests (and its audit row, user `cli:<os user>`) and exits:
the daemon holding the environment's lease picks it up within a tick, reads the table(s)
completely, sweeps the rows it did not see, and goes on from the new delta link. No daemon
running: the request waits for one. A request like one still open is merged into it.
"""

from __future__ import annotations

import getpass
import os

from rich.console import Console

from sync.config.model import Config
from sync.config.tenants import Environment
from sync.config.values import TABLE_NAME
from sync.errors import ConfigError
from sync.store.open import open_store
from sync.store.requests import Actor, Queued, request_resync, unmirrored


def os_user() -> str:
    """The login name of whoever runs the command (the uid when the system has no name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def resolve_target(
    config: Config, env_name: str, table: str | None, every_table: bool
) -> tuple[Environment, str | None]:
    """The configured environment and the table (None: every table), or one clear
    ConfigError (exit 2) saying what to pass instead."""
    if (table is None) == (not every_table):
        raise ConfigError("resync: give --table T for one table, or --all for every table")
    environments = {env.name: env for _, env in config.environments()}
    environment = environments.get(env_name)
    if environment is None:
        known = ", ".join(sorted(environments)) or "none"
        raise ConfigError(
            f"resync: environment {env_name!r} is not in {config.path} (configured: {known})"
        )
    if table is None:
        return environment, None
    if not TABLE_NAME.match(table):
        raise ConfigError(f"resync: {table!r} is not a Dataverse table logical name")
    return environment, table  # whether it is mirrored: store.requests.unmirrored


def describe(queued: Queued) -> str:
    request = queued.request
    what = f"every table of {request.environment}" if request.table is None else request.target
    if queued.created:
        return f"queued resync #{request.id}: {what} (requested by {request.requested_by})"
    return (
        f"already queued: resync #{request.id} of {what} is {request.shown} (requested by "
        f"{request.requested_by} at {request.requested_at:%Y-%m-%d %H:%M:%SZ}); not queued twice"
    )


async def run_resync(
    config: Config, *, env: str, table: str | None, every_table: bool, console: Console
) -> int:
    """Validate, queue (or merge), say how to watch it. Returns the exit code (0)."""
    environment, target = resolve_target(config, env, table, every_table)
    engine = await open_store(config)
    try:
        reason = None if target is None else await unmirrored(engine, environment, target)
        if reason is not None:
            raise ConfigError(f"resync: {reason}")
        queued = await request_resync(
            engine, environment.name, target, actor=Actor(f"cli:{os_user()}")
        )
    finally:
        await engine.dispose()
    console.print(describe(queued), soft_wrap=True, highlight=False, markup=False)
    console.print(
        "the daemon holding the environment's lease runs it within a second (none running: it "
        "waits for one); watch it with `dvmirror status`",
        soft_wrap=True,
        highlight=False,
        markup=False,
    )
    return 0
