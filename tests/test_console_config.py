"""`dvmirror config check` validates every [console] key with one clear line and exit 2, and
summarises a good section (a subprocess, as users run it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sync.simulator.tls import make_tls
from tests.cli import run_cli

CLIENT_ID = "7a3c1e55-0b7d-4c8a-9e21-5f6a7b8c9d01"
KEY = "k" * 40
ENV = {"SECRET": "client-secret-value-xyz", "SESSION_KEY": KEY, "SHORT_KEY": "too-short"}

BASE = f"""
[app]
client_id = "{CLIENT_ID}"
client_secret = {{ env = "SECRET" }}

[[tenants]]
name = "contoso"
tenant_id = "contoso.onmicrosoft.com"

[[tenants.environments]]
name = "contoso_prod"
url = "https://contoso.crm.dynamics.com"
"""

GOOD = 'public_url = "https://mirror.example.com"\nsession_key = { env = "SESSION_KEY" }\n'

BAD = [
    ("listen", 'listen = "8080"\n' + GOOD, "console.listen", "host:port"),
    (
        "http",
        'public_url = "http://mirror.example.com"\nsession_key = { env = "SESSION_KEY" }\n',
        "console.public_url",
        "https",
    ),
    ("missing-url", 'session_key = { env = "SESSION_KEY" }\n', "console.public_url", "required"),
    (
        "plain-key",
        'public_url = "https://m.example"\nsession_key = "literal"\n',
        "console.session_key",
        "do not write",
    ),
    (
        "short-key",
        'public_url = "https://m.example"\nsession_key = { env = "SHORT_KEY" }\n',
        "console.session_key",
        "32 bytes",
    ),
    (
        "unset-key",
        'public_url = "https://m.example"\nsession_key = { env = "NOPE" }\n',
        "console.session_key",
        "NOPE is not set",
    ),
    (
        "admin",
        GOOD + 'admin_tenants = ["not a tenant"]\n',
        "console.admin_tenants",
        "neither a tenant GUID",
    ),
    ("role", GOOD + 'operator_role = "has space"\n', "console.operator_role", "app role"),
    ("same-roles", GOOD + 'operator_role = "X"\nviewer_role = "X"\n', "console", "must differ"),
    ("tls-half", GOOD + 'tls_cert = "c.pem"\n', "console", "both tls_cert and tls_key"),
    (
        "tls-missing",
        GOOD + 'tls_cert = "c.pem"\ntls_key = "k.pem"\n',
        "console",
        "cannot load them",
    ),
    ("unknown", GOOD + 'colour = "blue"\n', "console.colour", "unknown key"),
]


@pytest.mark.parametrize(("name", "section", "where", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_console_keys(tmp_path: Path, name: str, section: str, where: str, words: str) -> None:
    """Each bad [console] key fails `config check` with exit 2 and one line naming the key."""
    path = tmp_path / "dvmirror.toml"
    path.write_text(BASE + "\n[console]\n" + section)
    result = run_cli("--config", path, "config", "check", env=ENV, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line]
    assert len(lines) == 1, result.stderr
    assert f"{path}: {where}" in lines[0] and words in lines[0]
    assert "Traceback" not in result.stderr and KEY not in result.stderr


def test_good_console_section_is_summarised(tmp_path: Path) -> None:
    """A good section (with TLS files and admin tenants) passes and prints the redirect URI."""
    tls = make_tls(tmp_path / "tls", extra_names=())
    path = tmp_path / "dvmirror.toml"
    path.write_text(
        BASE
        + "\n[console]\n"
        + GOOD
        + f'tls_cert = "{tls.cert_file}"\ntls_key = "{tls.key_file}"\n'
        + 'admin_tenants = ["ops.example.com"]\n'
    )
    result = run_cli("--config", path, "config", "check", env=ENV, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "redirect URI https://mirror.example.com/auth/callback" in result.stdout
    assert "admin tenants: ops.example.com" in result.stdout
    assert KEY not in result.stdout


def test_loopback_http_is_allowed_for_a_local_console(tmp_path: Path) -> None:
    """Plain http is accepted for a loopback public_url (beside a local simulator)."""
    path = tmp_path / "dvmirror.toml"
    path.write_text(
        BASE
        + '\n[console]\npublic_url = "http://127.0.0.1:8080"\nsession_key = { env = "SESSION_KEY" }\n'
    )
    result = run_cli("--config", path, "config", "check", env=ENV, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_console_command_needs_a_console_section(tmp_path: Path) -> None:
    """`dvmirror console` without [console] exits 2 with one line saying to add it."""
    path = tmp_path / "dvmirror.toml"
    path.write_text(BASE + f'\n[store]\nurl = "sqlite+aiosqlite:///{tmp_path / "m.db"}"\n')
    result = run_cli("--config", path, "console", env=ENV, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "no [console] section" in result.stderr
    assert "Traceback" not in result.stderr


def test_console_command_refuses_an_unmigrated_store(tmp_path: Path) -> None:
    """`dvmirror console` never migrates: against a fresh store it exits 2 and says to run
    `dvmirror migrate` first (the schema is the daemon's to change)."""
    path = tmp_path / "dvmirror.toml"
    db = tmp_path / "m.db"
    path.write_text(
        BASE.replace("[[tenants]]", f'[store]\nurl = "sqlite+aiosqlite:///{db}"\n\n[[tenants]]', 1)
        + "\n[console]\n"
        + GOOD
    )
    result = run_cli("--config", path, "console", env=ENV, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "dvmirror migrate" in result.stderr and "Traceback" not in result.stderr
