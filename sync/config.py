"""Typed, frozen configuration, loaded once from one TOML file.

`load_config()` reads the file, overlays `DVMIRROR_<SECTION>__<KEY>` environment variables,
validates everything (URLs, names, intervals, secrets, certificates) and returns frozen
objects. Any problem becomes one `ConfigError` line naming the file, the key path and the fix.
Nothing here reads `os.environ` at import time: the environment is passed in.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sync.errors import ConfigError

SAFE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,127}$")
GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
DOMAIN = re.compile(
    r"^(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]{2,63}$"
)
INTERVAL_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
INTERVAL_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
ENV_PREFIX = "DVMIRROR_"
OVERRIDABLE_SECTIONS = ("app", "store", "daemon", "tenants")


def parse_interval(text: str) -> float:
    """Parse "90s", "5m", "1h30m" or a bare number of seconds into seconds."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        pos, seconds = 0, 0.0
        for match in INTERVAL_PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * INTERVAL_UNITS[match.group(2)]
            pos = match.end()
        if pos != len(value) or not value:
            raise ValueError(f"{text!r} is not an interval; write it like 30s, 5m, 1h30m or 1d")
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return seconds


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, allow_insecure: bool, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{what} {url!r} is not an absolute https URL")
    if parts.username or parts.password:
        raise ValueError(f"{what} must not carry credentials in the URL")
    if parts.scheme == "http" and not (allow_insecure and is_loopback_host(parts.hostname)):
        hint = (
            "plain http is only allowed for a loopback address with app.allow_insecure = true"
            if not is_loopback_host(parts.hostname)
            else "set app.allow_insecure = true to allow plain http to a loopback simulator"
        )
        raise ValueError(f"{what} {url!r} must use https ({hint})")
    return url.rstrip("/")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


def _context(info: ValidationInfo) -> dict[str, Any]:
    return info.context if isinstance(info.context, dict) else {}


class SecretRef(_Frozen):
    """Where a secret comes from. Exactly one of env, file or credential."""

    env: str | None = Field(default=None, description="environment variable holding the secret")
    file: Path | None = Field(default=None, description="file holding the secret")
    credential: str | None = Field(
        default=None, description="systemd LoadCredential= name, read from $CREDENTIALS_DIRECTORY"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        given = [k for k in ("env", "file", "credential") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                'give exactly one of env = "VAR", file = "path" or credential = "name"'
            )
        return self


def _resolve_secret(ref: SecretRef, info: ValidationInfo) -> SecretStr:
    ctx = _context(info)
    environ: Mapping[str, str] = ctx.get("environ", {})
    base: Path = ctx.get("base_dir", Path.cwd())
    warnings: list[str] = ctx.setdefault("warnings", [])
    if ref.env is not None:
        value = environ.get(ref.env)
        if not value:
            raise ValueError(
                f"environment variable {ref.env} is not set; export it, or point "
                'client_secret at a file with { file = "…" }'
            )
        return SecretStr(value.strip())
    if ref.credential is not None:
        cred_dir = environ.get("CREDENTIALS_DIRECTORY")
        if not cred_dir:
            raise ValueError(
                f"credential {ref.credential!r} needs $CREDENTIALS_DIRECTORY (systemd "
                'LoadCredential=); outside systemd use { file = "…" } or { env = "…" }'
            )
        path = Path(cred_dir) / ref.credential
    else:
        assert ref.file is not None
        path = ref.file if ref.file.is_absolute() else base / ref.file
    try:
        mode = path.stat().st_mode
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read secret file {path}: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(
            f"secret file {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
            f"run: chmod 600 {path}"
        )
    if not value:
        raise ValueError(f"secret file {path} is empty")
    return SecretStr(value)


class Certificate(_Frozen):
    """A PEM certificate and its private key, checked to belong together."""

    cert: Path
    key: Path
    key_password: SecretRef | None = None
    send_x5c: bool = Field(
        default=False, description="send the chain (x5c) for subject-name/issuer authentication"
    )
    # Filled in by validation; never part of the file.
    thumbprint_sha1: str = ""
    thumbprint_sha256: str = ""
    certificate_pem: str = Field(default="", repr=False)
    private_key_pem: SecretStr = SecretStr("")

    @model_validator(mode="after")
    def _load(self, info: ValidationInfo) -> Certificate:
        if self.thumbprint_sha1:
            return self
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization

        base: Path = _context(info).get("base_dir", Path.cwd())
        cert_path = self.cert if self.cert.is_absolute() else base / self.cert
        key_path = self.key if self.key.is_absolute() else base / self.key
        password = _resolve_secret(self.key_password, info) if self.key_password else None
        try:
            cert_bytes = cert_path.read_bytes()
        except OSError as exc:
            raise ValueError(
                f"cannot read certificate {cert_path}: {exc.strerror or exc}"
            ) from None
        try:
            key_bytes = key_path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read private key {key_path}: {exc.strerror or exc}") from None
        try:
            certificate = x509.load_pem_x509_certificate(cert_bytes)
        except ValueError:
            raise ValueError(f"{cert_path} is not a PEM certificate") from None
        try:
            key = serialization.load_pem_private_key(
                key_bytes,
                password=password.get_secret_value().encode() if password else None,
            )
        except (ValueError, TypeError):
            raise ValueError(
                f"{key_path} is not a readable PEM private key (wrong key_password?)"
            ) from None
        cert_pub = certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        key_pub = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if cert_pub != key_pub:
            raise ValueError(f"private key {key_path} does not belong to certificate {cert_path}")
        unencrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        object.__setattr__(self, "cert", cert_path)
        object.__setattr__(self, "key", key_path)
        object.__setattr__(self, "thumbprint_sha1", certificate.fingerprint(hashes.SHA1()).hex())  # noqa: S303 - x5t is SHA-1 by spec
        object.__setattr__(
            self, "thumbprint_sha256", certificate.fingerprint(hashes.SHA256()).hex()
        )
        object.__setattr__(self, "certificate_pem", cert_bytes.decode())
        object.__setattr__(self, "private_key_pem", SecretStr(unencrypted))
        return self


class AppRegistration(_Frozen):
    """The Entra ID app registration dvmirror authenticates as."""

    client_id: str
    client_secret: SecretStr | None = None
    certificate: Certificate | None = None
    authority_host: str = "https://login.microsoftonline.com"
    ca_bundle: Path | None = None
    allow_insecure: bool = False

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str) -> str:
        if not GUID.match(value):
            raise ValueError(f"{value!r} is not an Application (client) ID; it looks like a GUID")
        return value.lower()

    @field_validator("client_secret", mode="before")
    @classmethod
    def _secret(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            raise ValueError(
                'do not write the secret into the file; use { env = "VAR" }, '
                '{ file = "path" } or { credential = "name" }'
            )
        if isinstance(value, dict):
            return _resolve_secret(SecretRef.model_validate(value), info)
        return value

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        base: Path = _context(info).get("base_dir", Path.cwd())
        path = value if value.is_absolute() else base / value
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read CA bundle {path}: {exc}") from None
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ValueError(f"{path} holds no PEM certificate")
        return path

    @model_validator(mode="after")
    def _one_credential(self) -> AppRegistration:
        if (self.client_secret is None) == (self.certificate is None):
            raise ValueError("give exactly one of client_secret or certificate")
        check_url(self.authority_host, allow_insecure=self.allow_insecure, what="authority_host")
        object.__setattr__(self, "authority_host", self.authority_host.rstrip("/"))
        return self


class TableOptions(_Frozen):
    columns: tuple[str, ...] | None = None
    deletes: Literal["hard", "soft"] = "hard"
    impersonate: str | None = None

    @field_validator("columns")
    @classmethod
    def _columns(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for column in value or ():
            if not TABLE_NAME.match(column):
                raise ValueError(f"column {column!r} is not a Dataverse logical name")
        return value

    @field_validator("impersonate")
    @classmethod
    def _impersonate(cls, value: str | None) -> str | None:
        if value is not None and not GUID.match(value):
            raise ValueError(f"{value!r} is not an Entra object id (a GUID)")
        return value


Interval = Annotated[float, Field(gt=0)]


class Environment(_Frozen):
    """One Dataverse environment (organization) of a tenant."""

    name: str
    url: str
    tables: tuple[str, ...] | Literal["all"] = ("account", "contact")
    interval: float = 300.0
    page_size: int = Field(default=5000, ge=1, le=5000)
    max_concurrency: int | None = Field(default=None, ge=1, le=52)
    table_options: dict[str, TableOptions] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SAFE_NAME.match(value) or "__" in value:
            raise ValueError(
                f"{value!r} is not a safe identifier: use lower-case letters, digits and single "
                "underscores, starting with a letter (it becomes part of table names)"
            )
        return value

    @field_validator("interval", mode="before")
    @classmethod
    def _interval(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_interval(value)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f'{value!r} is not an interval; write it like "5m"')
        return value

    @field_validator("tables", mode="before")
    @classmethod
    def _tables(cls, value: Any) -> Any:
        if value == "all":
            return value
        if isinstance(value, str):
            raise ValueError('write tables as a list, e.g. ["account", "contact"], or "all"')
        if isinstance(value, list | tuple):
            if not value:
                raise ValueError('list at least one table, or "all"')
            seen: set[str] = set()
            for table in value:
                if not isinstance(table, str) or not TABLE_NAME.match(table):
                    raise ValueError(f"{table!r} is not a Dataverse table logical name")
                if table in seen:
                    raise ValueError(f"table {table!r} is listed twice")
                seen.add(table)
        return value

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Environment:
        allow_insecure = bool(_context(info).get("allow_insecure", False))
        url = check_url(self.url, allow_insecure=allow_insecure, what="environment url")
        parts = urlsplit(url)
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(
                f"url {self.url!r} must be the environment root, like https://contoso.crm.dynamics.com"
            )
        object.__setattr__(self, "url", url)
        for table in self.table_options:
            if not TABLE_NAME.match(table):
                raise ValueError(f"table_options.{table}: not a Dataverse table logical name")
            if self.tables != "all" and table not in self.tables:
                raise ValueError(f"table_options.{table}: {table!r} is not in tables")
        return self

    @property
    def origin(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}".lower()

    def options_for(self, table: str) -> TableOptions:
        return self.table_options.get(table, DEFAULT_TABLE_OPTIONS)


DEFAULT_TABLE_OPTIONS = TableOptions()


class Tenant(_Frozen):
    """A customer tenant: one Entra directory, one or more Dataverse environments."""

    name: str
    tenant_id: str
    app: AppRegistration | None = None
    daily_request_budget: int | None = Field(default=None, ge=1)
    environments: tuple[Environment, ...]

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return Environment._name(value)

    @field_validator("tenant_id")
    @classmethod
    def _tenant_id(cls, value: str) -> str:
        if GUID.match(value):
            return value.lower()
        if DOMAIN.match(value):
            return value.lower()
        raise ValueError(f"{value!r} is neither a tenant GUID nor a verified domain")

    @field_validator("environments")
    @classmethod
    def _some(cls, value: tuple[Environment, ...]) -> tuple[Environment, ...]:
        if not value:
            raise ValueError("a tenant needs at least one [[tenants.environments]]")
        return value


class Store(_Frozen):
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "store.url must start with sqlite+aiosqlite:// or postgresql+asyncpg://"
            )
        return value


class Daemon(_Frozen):
    data_dir: Path | None = None
    metrics_listen: str = "127.0.0.1:9464"
    shutdown_grace: float = 30.0
    max_concurrency: int = Field(default=16, ge=1, le=1024)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("shutdown_grace", mode="before")
    @classmethod
    def _grace(cls, value: Any) -> Any:
        return parse_interval(value) if isinstance(value, str) else value

    @field_validator("metrics_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536 or not host:
            raise ValueError(f"{value!r} is not host:port, e.g. 127.0.0.1:9464")
        return value


class Settings(_Frozen):
    """The whole configuration file."""

    app: AppRegistration | None = None
    store: Store = Store()
    daemon: Daemon = Daemon()
    tenants: tuple[Tenant, ...]

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        tenant_names: set[str] = set()
        env_names: dict[str, str] = {}
        for ti, tenant in enumerate(self.tenants):
            if tenant.name in tenant_names:
                raise _PathError(f"tenants[{ti}].name", f"duplicate tenant name {tenant.name!r}")
            tenant_names.add(tenant.name)
            if tenant.app is None and self.app is None:
                raise _PathError(
                    f"tenants[{ti}]",
                    "no [app] registration: add a top-level [app] or a [tenants.app] for it",
                )
            for ei, env in enumerate(tenant.environments):
                where = f"tenants[{ti}].environments[{ei}].name"
                if env.name in env_names:
                    raise _PathError(
                        where,
                        f"duplicate environment name {env.name!r} (also {env_names[env.name]})",
                    )
                env_names[env.name] = where
        return self


class _PathError(ValueError):
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

    def environments(self) -> list[tuple[Tenant, Environment]]:
        return [(t, e) for t in self.tenants for e in t.environments]

    def tenant(self, name: str) -> Tenant:
        for tenant in self.tenants:
            if tenant.name == name:
                return tenant
        known = ", ".join(t.name for t in self.tenants)
        raise ConfigError(f"{self.path}: no tenant named {name!r} (known: {known})")


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "tagged-union", "literal")) or part in (
            "tuple[str, ...]",
            "list[str]",
            "str",
            "float",
            "int",
            "is-instance[Path]",
        ):
            continue  # pydantic union branch names are noise for users
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def _env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Apply DVMIRROR_<SECTION>__<KEY>[__<KEY>…] variables onto the parsed TOML."""
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if parts[0] not in OVERRIDABLE_SECTIONS:
            continue
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            try:
                node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
            except (IndexError, TypeError, AttributeError, ValueError):
                raise ConfigError(
                    f"{name}: no such key {'.'.join(parts[: i + 1])} to override"
                ) from None
        last = parts[-1]
        if isinstance(node, list):
            raise ConfigError(f"{name}: cannot override a whole list entry; name a key inside it")
        node[last] = value


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """systemd's StateDirectory= wins, then XDG, then ~/.local/share."""
    if environ.get("STATE_DIRECTORY"):
        return Path(environ["STATE_DIRECTORY"].split(":")[0])
    if environ.get("XDG_DATA_HOME"):
        return Path(environ["XDG_DATA_HOME"]) / "dvmirror"
    return Path.home() / ".local" / "share" / "dvmirror"


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> Config:
    """Load and validate the configuration file, or raise one clear ConfigError."""
    environ = dict(os.environ if environ is None else environ)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: configuration file not found; pass --config PATH or set DVMIRROR_CONFIG "
            "(config/dvmirror.example.toml is a documented starting point)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    _env_overrides(data, environ)
    app_data = data.get("app")
    allow_insecure = bool(isinstance(app_data, dict) and app_data.get("allow_insecure") is True)
    context: dict[str, Any] = {
        "environ": environ,
        "base_dir": path.resolve().parent,
        "allow_insecure": allow_insecure,
        "warnings": [],
    }
    try:
        settings = Settings.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(_first_error(path, exc)) from None
    except _PathError as exc:
        raise ConfigError(f"{path}: {exc.path}: {exc}") from None
    daemon = settings.daemon
    if daemon.data_dir is None:
        data_dir = default_data_dir(environ)
    else:
        data_dir = (
            daemon.data_dir
            if daemon.data_dir.is_absolute()
            else path.resolve().parent / daemon.data_dir
        )
    store_url = settings.store.url or f"sqlite+aiosqlite:///{data_dir / 'mirror.db'}"
    return Config(
        path=path,
        settings=settings,
        data_dir=data_dir,
        store_url=store_url,
        warnings=tuple(context["warnings"]),
    )


def _first_error(path: Path, exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = _format_loc(tuple(first["loc"]))
    kind = first["type"]
    if kind == "extra_forbidden":
        message = "unknown key; check the spelling against config/dvmirror.example.toml"
    elif kind == "missing":
        message = "required key is missing"
    else:
        message = str(first["msg"]).removeprefix("Value error, ")
        ctx = first.get("ctx") or {}
        inner = ctx.get("error")
        if isinstance(inner, _PathError):
            where, message = inner.path, str(inner)
    more = (
        f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        if len(errors) > 1
        else ""
    )
    return f"{path}: {where}: {message}{more}"
