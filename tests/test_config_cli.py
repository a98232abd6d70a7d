"""Configuration errors through the real CLI: one line naming file, key and fix; exit 2; no traceback."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.cli import run_cli

CLIENT_ID = "11111111-2222-3333-4444-555555555555"
SECRET = "s3cr3t-Value-that-must-never-leak"


def write_cert_pair(directory: Path, stem: str) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def base_config(
    *,
    app: str | None = None,
    tenant: str = 'name = "contoso"\ntenant_id = "contoso.onmicrosoft.com"',
    env: str = 'name = "contoso_prod"\nurl = "https://contoso.crm.dynamics.com"\ntables = ["account", "contact"]\ninterval = "5m"',
    extra_env: str = "",
    extra_top: str = "",
    second_tenant: str = "",
) -> str:
    app = app or f'client_id = "{CLIENT_ID}"\nclient_secret = {{ env = "DVMIRROR_CLIENT_SECRET" }}'
    return (
        f'{extra_top}\n[app]\n{app}\n\n[store]\nurl = "sqlite+aiosqlite:///mirror.db"\n\n'
        f"[[tenants]]\n{tenant}\n\n[[tenants.environments]]\n{env}\n{extra_env}\n{second_tenant}\n"
    )


@dataclass
class Case:
    id: str
    config: str | Callable[[Path], str] | None
    expect_code: int
    expect: tuple[str, ...]
    env: dict[str, str] = field(default_factory=lambda: {"DVMIRROR_CLIENT_SECRET": SECRET})
    expect_warning: str | None = None


def _secret_file(tmp: Path, mode: int) -> str:
    secret = tmp / "client_secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(mode)
    return base_config(
        app=f'client_id = "{CLIENT_ID}"\nclient_secret = {{ file = "{secret.name}" }}'
    )


def _cert_config(tmp: Path, *, mismatch: bool = False, missing: bool = False) -> str:
    cert, key = write_cert_pair(tmp, "app")
    if mismatch:
        _, key = write_cert_pair(tmp, "other")
    if missing:
        key = tmp / "nope.key"
    return base_config(
        app=f'client_id = "{CLIENT_ID}"\ncertificate = {{ cert = "{cert}", key = "{key}" }}'
    )


TWO_TENANTS_DUP_ENV = base_config(
    second_tenant='[[tenants]]\nname = "fabrikam"\ntenant_id = "fabrikam.onmicrosoft.com"\n'
    '[[tenants.environments]]\nname = "contoso_prod"\nurl = "https://fabrikam.crm.dynamics.com"\n'
    'tables = ["account"]'
)
TWO_TENANTS_DUP_TENANT = base_config(
    second_tenant='[[tenants]]\nname = "contoso"\ntenant_id = "fabrikam.onmicrosoft.com"\n'
    '[[tenants.environments]]\nname = "fabrikam_prod"\nurl = "https://fabrikam.crm.dynamics.com"\n'
    'tables = ["account"]'
)


def _env(**overrides: str) -> str:
    fields = {
        "name": '"contoso_prod"',
        "url": '"https://contoso.crm.dynamics.com"',
        "tables": '["account", "contact"]',
        "interval": '"5m"',
    }
    fields.update(overrides)
    return "\n".join(f"{k} = {v}" for k, v in fields.items() if v)


CASES = [
    Case("missing-file", None, 2, ("configuration file not found",)),
    Case("bad-toml", "[app\nclient_id=1", 2, ("not valid TOML",)),
    Case(
        "postgres-driver-not-served",
        base_config().replace("sqlite+aiosqlite:///mirror.db", "postgresql+psycopg://u@db/mirror"),
        2,
        ("store.url", "must start with sqlite+aiosqlite:/// or postgresql+asyncpg://"),
    ),
    Case(
        "postgres-reserved-schema",
        base_config(env=_env(name='"dvmirror"')).replace(
            "sqlite+aiosqlite:///mirror.db", "postgresql://u@db/mirror"
        ),
        2,
        ("tenants[0].environments[0].name", "reserved schema name"),
    ),
    Case("unknown-top-key", base_config(extra_top='colour = "blue"'), 2, ("colour", "unknown key")),
    Case(
        "unknown-env-key",
        base_config(env=_env(intervall='"5m"')),
        2,
        ("tenants[0].environments[0].intervall", "unknown key"),
    ),
    Case(
        "missing-tenant-id",
        base_config(tenant='name = "contoso"'),
        2,
        ("tenants[0].tenant_id", "required key is missing"),
    ),
    Case(
        "missing-client-id",
        base_config(app='client_secret = { env = "DVMIRROR_CLIENT_SECRET" }'),
        2,
        ("app.client_id", "required"),
    ),
    Case(
        "http-url",
        base_config(env=_env(url='"http://contoso.crm.dynamics.com"')),
        2,
        ("tenants[0].environments[0]", "must use https"),
    ),
    Case(
        "http-loopback-without-allow",
        base_config(env=_env(url='"http://127.0.0.1:8080"')),
        2,
        ("allow_insecure = true",),
    ),
    Case(
        "url-with-path",
        base_config(env=_env(url='"https://contoso.crm.dynamics.com/api/data/v9.2"')),
        2,
        ("environment root",),
    ),
    Case(
        "duplicate-env",
        TWO_TENANTS_DUP_ENV,
        2,
        ("tenants[1].environments[0].name", "duplicate environment name"),
    ),
    Case(
        "duplicate-tenant", TWO_TENANTS_DUP_TENANT, 2, ("tenants[1].name", "duplicate tenant name")
    ),
    Case(
        "unsafe-env-name",
        base_config(env=_env(name='"Contoso-Prod"')),
        2,
        ("tenants[0].environments[0].name", "not a safe identifier"),
    ),
    Case(
        "double-underscore-env-name",
        base_config(env=_env(name='"contoso__prod"')),
        2,
        ("tenants[0].environments[0].name", "single"),
    ),
    Case(
        "unsafe-tenant-name",
        base_config(tenant='name = "con toso"\ntenant_id = "contoso.onmicrosoft.com"'),
        2,
        ("tenants[0].name", "not a safe identifier"),
    ),
    Case(
        "secret-env-unset",
        base_config(),
        2,
        ("app.client_secret", "DVMIRROR_CLIENT_SECRET is not set"),
        env={},
    ),
    Case(
        "secret-literal",
        base_config(app=f'client_id = "{CLIENT_ID}"\nclient_secret = "{SECRET}"'),
        2,
        ("app.client_secret", "do not write the secret into the file"),
    ),
    Case(
        "secret-file-missing",
        base_config(app=f'client_id = "{CLIENT_ID}"\nclient_secret = {{ file = "missing.txt" }}'),
        2,
        ("app.client_secret", "cannot read secret file"),
    ),
    Case(
        "secret-file-world-readable",
        lambda tmp: _secret_file(tmp, 0o644),
        0,
        (": ok",),
        expect_warning="readable by others",
    ),
    Case(
        "certificate-unreadable",
        lambda tmp: _cert_config(tmp, missing=True),
        2,
        ("app.certificate", "cannot read private key"),
    ),
    Case(
        "certificate-mismatch",
        lambda tmp: _cert_config(tmp, mismatch=True),
        2,
        ("app.certificate", "does not belong to certificate"),
    ),
    Case("certificate-ok", _cert_config, 0, ("[certificate]",)),
    Case(
        "bad-interval",
        base_config(env=_env(interval='"5 minutes"')),
        2,
        ("tenants[0].environments[0].interval", "not an interval"),
    ),
    Case(
        "bad-reconcile-interval",
        base_config(env=_env(reconcile_interval='"daily"')),
        2,
        ("tenants[0].environments[0].reconcile_interval", "not an interval"),
    ),
    Case(
        "zero-interval",
        base_config(env=_env(interval='"0s"')),
        2,
        ("tenants[0].environments[0].interval", "longer than zero"),
    ),
    Case(
        "client-id-not-guid",
        base_config(app='client_id = "my-app"\nclient_secret = { env = "DVMIRROR_CLIENT_SECRET" }'),
        2,
        ("app.client_id", "GUID"),
    ),
    Case(
        "tenant-id-invalid",
        base_config(tenant='name = "contoso"\ntenant_id = "not a tenant"'),
        2,
        ("tenants[0].tenant_id", "neither a tenant GUID nor a verified domain"),
    ),
    Case(
        "empty-tables",
        base_config(env=_env(tables="[]")),
        2,
        ("tenants[0].environments[0].tables", "at least one table"),
    ),
    Case(
        "table-options-unlisted",
        base_config(extra_env='[tenants.environments.table_options.lead]\ndeletes = "soft"'),
        2,
        ("table_options.lead", "not in tables"),
    ),
    Case(
        "bad-deletes-mode",
        base_config(
            extra_env='[tenants.environments.table_options.account]\ndeletes = "sometimes"'
        ),
        2,
        ("tenants[0].environments[0].table_options.account.deletes", "'hard' or 'soft'"),
    ),
    Case(
        "secret-and-certificate",
        lambda tmp: base_config(
            app=(
                f'client_id = "{CLIENT_ID}"\nclient_secret = {{ env = "DVMIRROR_CLIENT_SECRET" }}\n'
                f'certificate = {{ cert = "{write_cert_pair(tmp, "x")[0]}", key = "{tmp / "x.key"}" }}'
            )
        ),
        2,
        ("app", "both client_secret and certificate are set", "keep exactly one"),
    ),
    Case(
        "env-override-invalid",
        base_config(),
        2,
        ("tenants[0].environments[0]", "must use https"),
        env={
            "DVMIRROR_CLIENT_SECRET": SECRET,
            "DVMIRROR_TENANTS__0__ENVIRONMENTS__0__URL": "http://contoso.crm.dynamics.com",
        },
    ),
    Case(
        "env-override-valid",
        base_config(),
        0,
        ("every 60s",),
        env={
            "DVMIRROR_CLIENT_SECRET": SECRET,
            "DVMIRROR_TENANTS__0__ENVIRONMENTS__0__INTERVAL": "1m",
        },
    ),
    Case(
        "impersonate-not-guid",
        base_config(extra_env='[tenants.environments.table_options.account]\nimpersonate = "bob"'),
        2,
        ("table_options.account.impersonate", "Entra object id"),
    ),
    Case(
        "page-size-too-big",
        base_config(extra_env="page_size = 6000"),
        2,
        ("tenants[0].environments[0].page_size", "5000"),
    ),
    Case(
        "secret-and-missing-certificate",
        base_config(
            app=f'client_id = "{CLIENT_ID}"\nclient_secret = {{ env = "DVMIRROR_CLIENT_SECRET" }}\n'
            'certificate = { cert = "/nonexistent/app.pem", key = "/nonexistent/app.key" }'
        ),
        2,
        ("app", "both client_secret and certificate are set", "keep exactly one"),
    ),
    Case(
        "no-tenants",
        f'[app]\nclient_id = "{CLIENT_ID}"\nclient_secret = {{ env = "DVMIRROR_CLIENT_SECRET" }}\n',
        2,
        ("tenants", "required key is missing"),
    ),
    Case(
        "http-loopback-allowed",
        base_config(
            app=(
                f'client_id = "{CLIENT_ID}"\nclient_secret = {{ env = "DVMIRROR_CLIENT_SECRET" }}\n'
                "allow_insecure = true"
            ),
            env=_env(url='"http://127.0.0.1:8080"'),
        ),
        0,
        (": ok",),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_config_check(case: Case, tmp_path: Path) -> None:
    """`dvmirror config check` accepts good files and rejects bad ones with one precise line."""
    path = tmp_path / "dvmirror.toml"
    if case.config is not None:
        text = case.config(tmp_path) if callable(case.config) else case.config
        path.write_text(text)
    result = run_cli("--config", path, "config", "check", env=case.env, cwd=tmp_path)
    assert result.returncode == case.expect_code, result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stdout + result.stderr
    if case.expect_code == 0:
        for fragment in case.expect:
            assert fragment in result.stdout
        warnings = [line for line in result.stderr.splitlines() if line]
        if case.expect_warning:
            assert len(warnings) == 1 and case.expect_warning in warnings[0]
            assert str(path) in warnings[0]
        else:
            assert warnings == []
        return
    lines = [line for line in result.stderr.splitlines() if line]
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]
    for fragment in case.expect:
        assert fragment in lines[0]


def test_config_from_environment_variable(tmp_path: Path) -> None:
    """DVMIRROR_CONFIG names the file when --config is not given."""
    path = tmp_path / "elsewhere.toml"
    path.write_text(base_config())
    result = run_cli(
        "config", "check", env={"DVMIRROR_CONFIG": str(path), "DVMIRROR_CLIENT_SECRET": SECRET}
    )
    assert result.returncode == 0, result.stderr
    assert f"{path}: ok" in result.stdout


def test_example_config_is_valid(tmp_path: Path) -> None:
    """The documented example configuration passes validation once its secret is provided."""
    example = Path(__file__).resolve().parent.parent / "config" / "dvmirror.example.toml"
    result = run_cli(
        "--config", example, "config", "check", env={"DVMIRROR_CLIENT_SECRET": SECRET}, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "contoso_prod" in result.stdout


def test_usage_error_exit_code() -> None:
    """An unknown command is a usage error: exit 2."""
    result = run_cli("no-such-command")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_config_check_shows_relationships_and_each_tables_options(tmp_path: Path) -> None:
    """The summary names what is mirrored beside the rows (N:N relationships) and every
    table's options (history and its retention, soft deletes, columns, impersonation)."""
    path = tmp_path / "dvmirror.toml"
    extra = (
        'relationships = ["accountleads_association"]\n'
        "[tenants.environments.table_options.account]\n"
        'history = true\nhistory_retention = "90d"\ndeletes = "soft"\n'
        "[tenants.environments.table_options.contact]\n"
        'columns = ["fullname", "emailaddress1"]\n'
    )
    path.write_text(base_config(env=_env() + "\n" + extra))
    result = run_cli(
        "--config", path, "config", "check", env={"DVMIRROR_CLIENT_SECRET": SECRET}, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert "N:N relationships: accountleads_association" in lines
    assert "account: history kept 90d; soft deletes" in lines
    assert "contact: 2 columns (fullname, emailaddress1)" in lines

    path.write_text(base_config())
    result = run_cli(
        "--config", path, "config", "check", env={"DVMIRROR_CLIENT_SECRET": SECRET}, cwd=tmp_path
    )
    assert "N:N relationships: auto (every N:N between the mirrored tables)" in result.stdout
