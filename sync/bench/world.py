"""The simulated world of `dvmirror bench --scenario …`, generated from a scenario's parameters.

A base scenario (a bundled name such as ``latency`` or ``throttled``, or a file) gives the
service protection limits, faults and tables of its environments. The bench turns it into its
own world:

- its first environment is the *tables* part (every table read at once), a second one, if any,
  the *big table* part (split into key ranges by dvmirror);
- three application users in every environment, one for the plain reader, one for dvmirror
  into SQLite and one for dvmirror into PostgreSQL (`--postgres`): Dataverse's limits are per
  user, so no side eats another's budget, and all read the very same rows;
- `--rows-scale s` (0 < s ≤ 1) shrinks every table, the page size and the per-request time by
  s, keeping the per-row time: every chain has as many pages as at full scale, each taking s
  times as long, so a run takes about s times as long and the ceiling in rows/s stays the same
  (unless the request count binds: it allows s times fewer rows per second).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sync.errors import ConfigError
from sync.simulator.protection import MAX_PAGE, Limits
from sync.simulator.scenario import EnvironmentSpec, Scenario, load_scenario, resolve_scenario

MIRROR_APP = "d5a1e0b0-0000-4000-8000-00000000d001"  # dvmirror's application user
READER_APP = "d5a1e0b0-0000-4000-8000-00000000d002"  # the plain reader's
POSTGRES_APP = "d5a1e0b0-0000-4000-8000-00000000d003"  # dvmirror's into PostgreSQL
APPS = (MIRROR_APP, READER_APP, POSTGRES_APP)
TENANT_ID = "d5a1e0b0-0000-4000-8000-0000000000b1"
TENANT = "bench"


@dataclass(frozen=True)
class Part:
    """One side-by-side comparison: the same tables read by the plain reader and by dvmirror."""

    key: str  # "tables" or "big"
    environment: str
    tables: tuple[tuple[str, int], ...]  # (logical name, rows)
    limits: Limits
    split_rows: int | None  # set in dvmirror's config for this part (None: the default)

    @property
    def rows(self) -> int:
        return sum(rows for _, rows in self.tables)

    @property
    def title(self) -> str:
        if len(self.tables) > 1:
            return f"{len(self.tables)} tables at once"
        return f"{self.tables[0][0]} ({self.rows:,} rows)"


@dataclass(frozen=True)
class World:
    """The scenario the bench runs, and what it compares."""

    name: str
    scale: float
    page_size: int
    scenario: Scenario
    parts: tuple[Part, ...]

    def scenario_toml(self) -> str:
        return toml_document(self.scenario.model_dump(mode="json"))


def base_scenario(name_or_path: str | Path) -> tuple[str, Scenario]:
    """The bundled scenario of that name (latency, throttled, …) or the scenario file."""
    path = resolve_scenario(name_or_path)
    return path.stem, load_scenario(path)


def scaled_limits(limits: Limits, scale: float) -> Limits:
    """Per-request time × scale; the per-row time and the budgets unchanged."""
    return limits.model_copy(update={"base_ms": limits.base_ms * scale})


def build_world(name_or_path: str | Path, *, scale: float = 1.0) -> World:
    """The bench's world for a base scenario, shrunk by `scale` (0 < scale ≤ 1)."""
    if not 0 < scale <= 1:
        raise ConfigError(f"--rows-scale must be above 0 and at most 1, not {scale}")
    name, base = base_scenario(name_or_path)
    environments = [env for tenant in base.tenants for env in tenant.environments][:2]
    page_size = max(1, round(MAX_PAGE * scale))
    parts: list[Part] = []
    specs: list[dict[str, Any]] = []
    for key, env in zip(("tables", "big"), environments, strict=False):
        part, spec = _part(key, env, scale)
        parts.append(part)
        specs.append(spec)
    scenario = Scenario.model_validate(
        {
            "seed": base.seed,
            "token_lifetime": 7200,
            "apps": [{"client_id": app, "home_tenant": TENANT} for app in APPS],
            "tenants": [
                {
                    "name": TENANT,
                    "tenant_id": TENANT_ID,
                    "domain": "bench.onmicrosoft.com",
                    "environments": specs,
                }
            ],
        }
    )
    return World(name, scale, page_size, scenario, tuple(parts))


def _part(key: str, env: EnvironmentSpec, scale: float) -> tuple[Part, dict[str, Any]]:
    limits = scaled_limits(env.limits, scale)
    tables = tuple((t.name, max(1, round(t.rows * scale))) for t in env.tables)
    split_rows = None
    if key == "big":
        # Above split_rows, dvmirror reads a table as key ranges; the default (200,000) would
        # leave a 200,000-row table whole, so the bench sets it to half the largest table.
        split_rows = max(1, max(rows for _, rows in tables) // 2)
    spec = {
        "name": env.name,
        "application_users": list(APPS),
        "change_tracking_retention_days": env.change_tracking_retention_days,
        "limits": limits.model_dump(mode="json"),
        "faults": env.faults.model_dump(mode="json"),
        "tables": [
            {**t.model_dump(mode="json"), "rows": rows}
            for t, (_, rows) in zip(env.tables, tables, strict=True)
        ],
    }
    return Part(key, env.name, tables, limits, split_rows), spec


def mirror_config(
    ready: Mapping[str, Any],
    part: Part,
    data_dir: Path,
    *,
    page_size: int,
    store_url: str | None = None,
    client_id: str = MIRROR_APP,
) -> str:
    """A dvmirror configuration for one part: that application user, a fresh data dir, and a
    store (by default an SQLite file in the data dir; `store_url`, e.g. an empty PostgreSQL
    database, otherwise). Nothing else differs between the stores."""
    app = next(a for a in ready["apps"] if a["client_id"] == client_id)
    env = next(
        e for t in ready["tenants"] for e in t["environments"] if e["name"] == part.environment
    )
    environment: dict[str, Any] = {
        "name": part.environment,
        "url": env["url"],
        "tables": [name for name, _ in part.tables],
        "page_size": page_size,
    }
    if part.split_rows is not None:
        environment["split_rows"] = part.split_rows
    document = {
        "app": {
            "client_id": client_id,
            "client_secret": {"file": app["secret_file"]},
            "authority_host": ready["authority_host"],
            "ca_bundle": ready["ca_file"],
        },
        "store": {"url": store_url or sqlite_url(data_dir)},
        "daemon": {"data_dir": str(data_dir), "metrics_listen": "127.0.0.1:0"},
        "tenants": [{"name": TENANT, "tenant_id": TENANT_ID, "environments": [environment]}],
    }
    return toml_document(document)


def sqlite_url(data_dir: Path) -> str:
    """The SQLite store of a bench data directory."""
    return f"sqlite+aiosqlite:///{data_dir / 'mirror.db'}"


def toml_document(data: Mapping[str, Any]) -> str:
    """TOML for nested mappings, lists of mappings and scalars (None values are left out)."""
    lines: list[str] = []
    _emit(lines, (), data, array=False)
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_tables(value: Any) -> bool:
    return isinstance(value, list | tuple) and bool(value) and isinstance(value[0], Mapping)


def _emit(lines: list[str], path: Sequence[str], table: Mapping[str, Any], *, array: bool) -> None:
    if path:
        name = ".".join(path)
        lines += ["", f"[[{name}]]" if array else f"[{name}]"]
    nested = []
    for key, value in table.items():
        if value is None:
            continue
        if isinstance(value, Mapping) or _is_tables(value):
            nested.append((key, value))
        else:
            lines.append(f"{key} = {_literal(value)}")
    for key, value in nested:
        if isinstance(value, Mapping):
            _emit(lines, (*path, key), value, array=False)
        else:
            for item in value:
                _emit(lines, (*path, key), item, array=True)


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    raise TypeError(f"no TOML literal for {type(value).__name__}")
