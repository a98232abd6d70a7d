"""What every `dvmirror` command shares: the group's options (State), loading the
configuration with secret masking, the table console and running a coroutine with one-line
errors."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from sync.errors import ConfigError, DvmirrorError, ExitCode

PIPED_WIDTH = 180
DEFAULT_CONFIG_LOCATIONS = (Path("dvmirror.toml"), Path("/etc/dvmirror/dvmirror.toml"))

T = TypeVar("T")


class State:
    """What the group options give every command."""

    def __init__(self, config_path: Path | None, log_level: str | None, debug: bool) -> None:
        self.config_path = config_path
        self.log_level = log_level
        self.debug = debug

    def load(self, *, resolve_secrets: bool = True) -> Any:
        """Load the configuration (and configure logging from it)."""
        from sync.config.loading import load_config
        from sync.logs import configure_logging

        path = self.config_path
        if path is None:
            for candidate in DEFAULT_CONFIG_LOCATIONS:
                if candidate.is_file():
                    path = candidate
                    break
            else:
                raise ConfigError(
                    "no configuration: pass --config PATH or set DVMIRROR_CONFIG "
                    "(config/dvmirror.example.toml is a documented starting point)"
                )
        config = load_config(path, resolve_secrets=resolve_secrets)
        apps = {id(config.app_for(t)): config.app_for(t) for t in config.tenants}
        if config.console is not None:
            apps[id(config.console_app())] = config.console_app()
        secrets = [
            app.client_secret.get_secret_value()
            for app in apps.values()
            if app.client_secret is not None and app.client_secret.get_secret_value()
        ]
        secrets += [a.url.get_secret_value() for a in config.alerts if a.url.get_secret_value()]
        if config.console is not None and config.console.session_key.get_secret_value():
            secrets.append(config.console.session_key.get_secret_value())
        configure_logging(self.log_level or config.settings.daemon.log_level, secrets=secrets)
        for warning in config.warnings:
            click.echo(f"dvmirror: warning: {config.path}: {warning}", err=True)
        return config


def table_console() -> Any:
    """A rich console for tables: the terminal's width, or a wide page when piped or logged
    (rich would otherwise squeeze tables into 80 columns and cut GUIDs and errors)."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=PIPED_WIDTH)


def run_async(state: State, factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine, turning our errors into one line and an exit code."""
    try:
        return asyncio.run(factory())
    except KeyboardInterrupt:
        click.echo("dvmirror: interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except DvmirrorError:
        raise
    except Exception as exc:  # an unexpected failure still gets one line, not a traceback
        if state.debug:
            raise
        from sync.logs import mask_text

        click.echo(
            f"dvmirror: error: unexpected {type(exc).__name__}: {mask_text(str(exc))} "
            "(run with --debug for a traceback)",
            err=True,
        )
        sys.exit(ExitCode.FAILURES)
