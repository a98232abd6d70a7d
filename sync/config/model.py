"""Typed, frozen configuration, loaded once from one TOML file.

The models validate everything (URLs, names, intervals, secrets, certificates) into frozen
objects; `sync.config.loading.load_config()` reads the file, overlays `DVMIRROR_<SECTION>__<KEY>`
environment variables and turns any problem into one `ConfigError` line naming the file, the
key path and the fix. Nothing here reads `os.environ` at import time: the environment is passed
in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import model_validator

from sync.config.alerts import Alert
from sync.config.console import ConsoleSettings
from sync.config.credentials import AppRegistration
from sync.config.daemon import Daemon
from sync.config.store import Store
from sync.config.tenants import Environment, Tenant
from sync.config.values import RESERVED_SCHEMAS, FrozenModel
from sync.errors import ConfigError

# The section models live in their own modules (sync.config.tenants, .store, .daemon, ...);
# the ones `Settings` and `Config` are built from stay importable from here.
__all__ = [
    "Alert",
    "AppRegistration",
    "Config",
    "ConsoleSettings",
    "Daemon",
    "Environment",
    "KeyPathError",
    "Settings",
    "Store",
    "Tenant",
]


class Settings(FrozenModel):
    """The whole configuration file."""

    app: AppRegistration | None = None
    store: Store = Store()
    daemon: Daemon = Daemon()
    console: ConsoleSettings | None = None
    tenants: tuple[Tenant, ...]
    alerts: tuple[Alert, ...] = ()

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        tenant_names: set[str] = set()
        env_names: dict[str, str] = {}
        for ti, tenant in enumerate(self.tenants):
            if tenant.name in tenant_names:
                raise KeyPathError(f"tenants[{ti}].name", f"duplicate tenant name {tenant.name!r}")
            tenant_names.add(tenant.name)
            if tenant.app is None and self.app is None:
                raise KeyPathError(
                    f"tenants[{ti}]",
                    "no [app] registration: add a top-level [app] or a [tenants.app] for it",
                )
            for ei, env in enumerate(tenant.environments):
                where = f"tenants[{ti}].environments[{ei}].name"
                if env.name in env_names:
                    raise KeyPathError(
                        where,
                        f"duplicate environment name {env.name!r} (also {env_names[env.name]})",
                    )
                env_names[env.name] = where
                if self.store.postgres and (
                    env.name in RESERVED_SCHEMAS or env.name.startswith("pg_")
                ):
                    raise KeyPathError(
                        where,
                        f"{env.name!r} is a reserved schema name in a PostgreSQL store "
                        "(each environment is a schema of its name): rename the environment",
                    )
        self._check_alerts(tenant_names)
        if self.console is not None and self.console.app is None and self.app is None:
            raise KeyPathError(
                "console", "no registration to sign users in with: add [console.app] or [app]"
            )
        return self

    def _check_alerts(self, tenant_names: set[str]) -> None:
        alert_names: set[str] = set()
        for ai, alert in enumerate(self.alerts):
            if not alert.name:
                object.__setattr__(alert, "name", f"alert{ai + 1}")
            if alert.name in alert_names:
                raise KeyPathError(f"alerts[{ai}].name", f"duplicate alert name {alert.name!r}")
            alert_names.add(alert.name)
            for tenant in alert.tenants or ():
                if tenant not in tenant_names:
                    known = ", ".join(sorted(tenant_names))
                    raise KeyPathError(
                        f"alerts[{ai}].tenants",
                        f"no tenant named {tenant!r} (known: {known})",
                    )


class KeyPathError(ValueError):
    """A cross-field error that knows its own key path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class Config:
    """What the rest of dvmirror uses: validated settings plus where they came from."""

    path: Path
    settings: Settings
    data_dir: Path
    store_url: str
    warnings: tuple[str, ...] = ()

    @property
    def tenants(self) -> tuple[Tenant, ...]:
        return self.settings.tenants

    def app_for(self, tenant: Tenant) -> AppRegistration:
        app = tenant.app or self.settings.app
        assert app is not None  # guaranteed by Settings._cross_checks
        return app

    @property
    def alerts(self) -> tuple[Alert, ...]:
        return self.settings.alerts

    @property
    def console(self) -> ConsoleSettings | None:
        return self.settings.console

    def console_app(self) -> AppRegistration:
        """The registration users sign in to the console with ([console.app], else [app])."""
        console = self.settings.console
        app = (console.app if console else None) or self.settings.app
        assert app is not None  # guaranteed by Settings._cross_checks
        return app

    def environments(self) -> list[tuple[Tenant, Environment]]:
        return [(t, e) for t in self.tenants for e in t.environments]

    def tenant(self, name: str) -> Tenant:
        for tenant in self.tenants:
            if tenant.name == name:
                return tenant
        known = ", ".join(t.name for t in self.tenants)
        raise ConfigError(f"{self.path}: no tenant named {name!r} (known: {known})")
