"""Which running environment groups a reload restarts (`sync.runtime.scheduler.group_key`, pure)."""

from __future__ import annotations

from pathlib import Path

from sync.config.loading import load_config
from sync.config.model import Config
from sync.runtime.scheduler import group_key

BASE = """
[app]
client_id = "11111111-2222-3333-4444-555555555555"
client_secret = {{ env = "SECRET" }}

[store]
url = "sqlite+aiosqlite:///{db}"

[[tenants]]
name = "contoso"
tenant_id = "contoso.onmicrosoft.com"

[[tenants.environments]]
name = "prod"
url = "https://prod.crm.dynamics.com"
tables = ["account"]

[[tenants.environments]]
name = "sandbox"
url = "https://sandbox.crm.dynamics.com"
tables = {sandbox_tables}
"""


def config(tmp_path: Path, *, sandbox_tables: str = '["account"]', secret: str = "s1") -> Config:
    path = tmp_path / "dvmirror.toml"
    path.write_text(BASE.format(db=tmp_path / "m.db", sandbox_tables=sandbox_tables))
    return load_config(path, environ={"SECRET": secret})


def keys(config: Config) -> dict[str, tuple[object, ...]]:
    return {env.name: group_key(config, tenant, env) for tenant, env in config.environments()}


def test_changing_one_environment_restarts_only_that_one(tmp_path: Path) -> None:
    """Adding a table to one environment leaves its sibling in the same tenant running."""
    before = keys(config(tmp_path))
    after = keys(config(tmp_path, sandbox_tables='["account", "contact"]'))
    assert before["prod"] == after["prod"]
    assert before["sandbox"] != after["sandbox"]


def test_a_new_secret_restarts_the_tenants_groups(tmp_path: Path) -> None:
    """A rotated client secret (same file text, new value) restarts every group that uses it."""
    before = keys(config(tmp_path, secret="s1"))
    after = keys(config(tmp_path, secret="s2"))
    assert before["prod"] != after["prod"]
    assert before["sandbox"] != after["sandbox"]
    assert keys(config(tmp_path, secret="s1")) == before
