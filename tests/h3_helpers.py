"""Helpers for helper H3's tests: dvmirror configurations written from a simulator ready line."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sync.config.loading import load_config
from sync.config.model import Config


def app_entry(ready: Mapping[str, Any], client_id: str | None = None) -> dict[str, Any]:
    wanted = client_id or ready["client_id"]
    return dict(next(a for a in ready["apps"] if a["client_id"] == wanted))


def write_config(
    directory: Path,
    ready: Mapping[str, Any],
    *,
    environments: Iterable[str] | None = None,
    client_id: str | None = None,
    secret: str | None = None,
    send_x5c: bool = False,
    extra_tenants: Iterable[tuple[str, str, str]] = (),
    page_size: int | None = None,
    impersonate: Mapping[str, str] | None = None,
) -> Config:
    """A config for the named environments (all by default), one app, real secret or a wrong one.

    `extra_tenants` adds (name, tenant_id, environment url) entries, e.g. an unknown tenant.
    `impersonate` maps an environment name to the Entra object id its account table reads as.
    """
    directory.mkdir(parents=True, exist_ok=True)
    app = app_entry(ready, client_id)
    lines = ["[app]", f'client_id = "{app["client_id"]}"']
    if app["credential"] == "secret":
        secret_file = directory / "secret"
        secret_file.write_text(secret if secret is not None else app["client_secret"])
        os.chmod(secret_file, 0o600)
        lines.append(f'client_secret = {{ file = "{secret_file}" }}')
    lines += [f'authority_host = "{ready["authority_host"]}"', f'ca_bundle = "{ready["ca_file"]}"']
    if app["credential"] != "secret":
        cert = app["certificate"]
        lines += [
            "[app.certificate]",
            f'cert = "{cert["cert"]}"',
            f'key = "{cert["key"]}"',
            f"send_x5c = {'true' if send_x5c else 'false'}",
        ]
    lines += ["[store]", f'url = "sqlite+aiosqlite:///{directory / "mirror.db"}"']
    wanted = set(environments) if environments is not None else None
    for tenant in ready["tenants"]:
        envs = [e for e in tenant["environments"] if wanted is None or e["name"] in wanted]
        if not envs:
            continue
        lines += [
            "[[tenants]]",
            f'name = "{tenant["name"]}"',
            f'tenant_id = "{tenant["tenant_id"]}"',
        ]
        for env in envs:
            lines += _environment(env["name"], env["url"], page_size)
            if impersonate and env["name"] in impersonate:
                lines += [
                    "[tenants.environments.table_options.account]",
                    f'impersonate = "{impersonate[env["name"]]}"',
                ]
    for name, tenant_id, url in extra_tenants:
        lines += ["[[tenants]]", f'name = "{name}"', f'tenant_id = "{tenant_id}"']
        lines += _environment(f"{name}_env", url, page_size)
    path = directory / "dvmirror.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(path, {})


def _environment(name: str, url: str, page_size: int | None) -> list[str]:
    lines = [
        "[[tenants.environments]]",
        f'name = "{name}"',
        f'url = "{url}"',
        'tables = ["account"]',
    ]
    if page_size:
        lines.append(f"page_size = {page_size}")
    return lines
