"""The simulator's scenario file: apps, tenants, environments, tables, limits and faults.

A scenario is TOML validated into frozen pydantic models (unknown keys are errors, so a typo
never silently changes a test). `load_scenario` turns any problem into one `ConfigError`
line naming the file and the key. `resolve_scenario` accepts a path or the name of a bundled
scenario (``demo``, ``basic``, ``auth``, ``throttled``, ``realistic``, ``latency``). Tables are
SIM-B's `TableSpec`. There are no overrides: a variant is its own file (or a ``model_copy``).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sync.config.values import parse_interval
from sync.errors import ConfigError
from sync.simulator.dataset import TableSpec
from sync.simulator.faults import EntraFaultRates, FaultRates
from sync.simulator.identities import AppAssignmentSpec, RoleValue, UserSpec, check_assignments
from sync.simulator.protection import Limits
from sync.simulator.relationships import RelationshipSpec, check_relationships
from sync.simulator.solutions import SolutionSpec

GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1"})
BUNDLED_DIRS = (
    Path(__file__).resolve().parents[2] / "config" / "scenarios",  # source checkout
    Path(__file__).resolve().parents[1] / "_scenarios",  # installed wheel
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


def _guid(value: str) -> str:
    if not GUID.match(value):
        raise ValueError(f"{value!r} is not a GUID")
    return value.lower()


def _name(value: str) -> str:
    if not NAME.match(value) or "__" in value:
        raise ValueError(f"{value!r} is not a safe name (lower-case letters, digits, _)")
    return value


Guid = Annotated[str, AfterValidator(_guid)]
Name = Annotated[str, AfterValidator(_name)]


class AppSpec(_Frozen):
    """An app registration known to the simulated Entra."""

    client_id: Guid
    credential: Literal["secret", "certificate"] = "secret"
    home_tenant: str
    multi_tenant: bool = True
    secret_expired: bool = Field(default=False, description="the secret is rejected as expired")
    # Web platform redirect URIs (sign-in and post-logout); http only on loopback, whose port
    # is ignored when matching, as Entra does (reply-url restrictions).
    redirect_uris: tuple[str, ...] = ()
    app_roles: tuple[RoleValue, ...] = Field(default=(), description="appRoles values")
    app_id_uri: str | None = Field(default=None, description="the API's identifier URI")
    assignment_required: bool = Field(
        default=False, description="users without a role assignment cannot sign in (50105)"
    )

    @field_validator("redirect_uris")
    @classmethod
    def _redirect_uris(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            check_redirect_uri(value)
        return values

    @field_validator("app_id_uri")
    @classmethod
    def _app_id_uri(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(api://|https://)[^\s/?#]+(/[^\s?#]*)?$", value):
            raise ValueError(f"{value!r} is not an App ID URI (api://… or https://…)")
        return value.rstrip("/") if value else value


class EnvironmentSpec(_Frozen):
    """One simulated Dataverse environment (its own HTTPS origin)."""

    name: Name
    application_users: tuple[Guid, ...] = ()
    impersonation_allowed: tuple[Guid, ...] = ()
    change_tracking_retention_days: float = Field(default=7.0, gt=0)
    interval: str = Field(default="30s", description="sync interval in the generated config")
    reconcile_interval: str | None = Field(
        default=None, description="key-scan interval for tables without change tracking"
    )
    limits: Limits = Limits()
    faults: FaultRates = FaultRates()
    requests_per_connection: int | None = Field(
        default=None,
        ge=1,
        description="the front end closes a keep-alive connection after this many requests "
        "(as load balancers do), so clients keep opening new TLS connections",
    )
    tables: tuple[TableSpec, ...] = Field(min_length=1)
    solutions: tuple[SolutionSpec, ...] = ()
    relationships: tuple[RelationshipSpec, ...] = ()

    @field_validator("interval", "reconcile_interval")
    @classmethod
    def _interval(cls, value: str | None) -> str | None:
        if value is not None:
            parse_interval(value)  # the generated dvmirror config must load
        return value

    @model_validator(mode="after")
    def _unique_tables(self) -> EnvironmentSpec:
        names = [table.name for table in self.tables]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"table {name!r} is listed twice in environment {self.name!r}")
        for solution in self.solutions:
            for table in solution.tables:
                if table not in names:
                    raise ValueError(
                        f"solution {solution.unique_name!r} holds {table!r}, which is not a "
                        f"table of environment {self.name!r}"
                    )
        check_relationships(self.name, {t.name: t.rows for t in self.tables}, self.relationships)
        return self


class TenantSpec(_Frozen):
    """A customer tenant: an Entra directory with its environments."""

    name: Name
    tenant_id: Guid
    domain: str
    consented_apps: tuple[Guid, ...] = ()
    environments: tuple[EnvironmentSpec, ...] = Field(min_length=1)
    users: tuple[UserSpec, ...] = ()
    app_assignments: tuple[AppAssignmentSpec, ...] = ()

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        value = value.lower()
        if not DOMAIN.match(value):
            raise ValueError(f"{value!r} is not a domain name")
        return value


class EntraSpec(_Frozen):
    """The simulated authority itself."""

    faults: EntraFaultRates = EntraFaultRates()
    # MSAL reuses one signed assertion for ~9 minutes across scopes, so a replay is the same
    # jti presented again for the same resource.
    reject_replayed_assertions: bool = True
    # Entra accepts PKCE "plain" and codes without PKCE from confidential clients; the
    # simulator is stricter by default, so that a client that skips S256 fails here first.
    pkce_required: bool = True
    pkce_plain_allowed: bool = False


class Scenario(_Frozen):
    """A whole simulated world."""

    seed: int = 42
    token_lifetime: int = Field(default=3600, ge=60, le=86400)
    apps: tuple[AppSpec, ...] = Field(min_length=1)
    tenants: tuple[TenantSpec, ...] = Field(min_length=1)
    entra: EntraSpec = EntraSpec()

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        _unique("app client_id", [a.client_id for a in self.apps])
        _unique("tenant name", [t.name for t in self.tenants])
        _unique("tenant_id", [t.tenant_id for t in self.tenants])
        _unique("tenant domain", [t.domain for t in self.tenants])
        _unique("environment name", [e.name for t in self.tenants for e in t.environments])
        apps = {a.client_id for a in self.apps}
        tenants = {t.name for t in self.tenants}
        for app in self.apps:
            if app.home_tenant not in tenants:
                raise ValueError(f"app {app.client_id}: home_tenant {app.home_tenant!r} is unknown")
        app_ids = {a.app_id_uri for a in self.apps if a.app_id_uri}
        if len(app_ids) != len([a for a in self.apps if a.app_id_uri]):
            raise ValueError("two apps share one app_id_uri")
        for tenant in self.tenants:
            check_assignments(
                tenant.name, tenant.users, tenant.app_assignments, self.apps, tenant.domain
            )
            for client_id in tenant.consented_apps:
                if client_id not in apps:
                    raise ValueError(f"tenant {tenant.name}: consented app {client_id} is unknown")
            for env in tenant.environments:
                for client_id in (*env.application_users, *env.impersonation_allowed):
                    if client_id not in apps:
                        raise ValueError(f"environment {env.name}: app {client_id} is unknown")
        return self

    def app(self, client_id: str) -> AppSpec | None:
        return next((a for a in self.apps if a.client_id == client_id.lower()), None)

    def api_app(self, identifier: str) -> AppSpec | None:
        """The app whose API a scope names: by its App ID URI or its client id."""
        wanted = identifier.rstrip("/")
        for app in self.apps:
            if app.app_id_uri and (wanted == app.app_id_uri or wanted.lower() == app.client_id):
                return app
        return None

    def tenant(self, identifier: str) -> TenantSpec | None:
        """The tenant named by its GUID or its domain, as Entra accepts both."""
        wanted = identifier.lower()
        return next((t for t in self.tenants if wanted in (t.tenant_id, t.domain)), None)

    def find_user(
        self, upn: str, tenant: TenantSpec | None = None
    ) -> tuple[TenantSpec, UserSpec] | None:
        """The user with that UPN (in `tenant`, or in any tenant)."""
        wanted = upn.strip().lower()
        for candidate in (tenant,) if tenant is not None else self.tenants:
            for user in candidate.users:
                if user.upn == wanted:
                    return candidate, user
        return None

    def user(self, tenant_id: str, oid: str) -> tuple[TenantSpec, UserSpec] | None:
        tenant = self.tenant(tenant_id)
        user = next((u for u in tenant.users if u.oid == oid.lower()), None) if tenant else None
        return (tenant, user) if tenant is not None and user is not None else None

    def app_roles_granted(self, tenant: TenantSpec, client_id: str, resource: str) -> list[str]:
        """App roles of `resource` assigned to the service principal of `client_id`."""
        roles: list[str] = []
        for grant in tenant.app_assignments:
            if grant.client_id == client_id and grant.resource == resource:
                roles += [r for r in grant.roles if r not in roles]
        return roles

    def can_sign_in(self, app: AppSpec, tenant: TenantSpec) -> bool:
        """An app has a service principal in its home tenant, and where it was consented."""
        if tenant.name == app.home_tenant:
            return True
        return app.multi_tenant and app.client_id in tenant.consented_apps


def check_redirect_uri(value: str) -> str:
    """A redirect URI Entra would register: absolute https (http on loopback), no fragment."""
    parts = urlsplit(value)
    loopback = parts.hostname in LOOPBACK_HOSTS
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.fragment:
        raise ValueError(f"{value!r} is not an absolute https URI without a fragment")
    if parts.scheme == "http" and not loopback:
        raise ValueError(f"{value!r}: http is allowed only for localhost and 127.0.0.1")
    if len(value) > 256 or any(c in value for c in "!$'(),;"):
        raise ValueError(f"{value!r}: at most 256 characters, none of ! $ ' ( ) , ;")
    return value


def _unique(what: str, values: list[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"duplicate {what} {value!r}")
        seen.add(value)


def bundled_scenarios() -> list[str]:
    names = {p.stem for d in BUNDLED_DIRS if d.is_dir() for p in d.glob("*.toml")}
    return sorted(names)


def resolve_scenario(name_or_path: str | Path) -> Path:
    """A scenario file path, or the bundled scenario of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.suffix == "" and path.parent == Path("."):
        for directory in BUNDLED_DIRS:
            candidate = directory / f"{path.name}.toml"
            if candidate.is_file():
                return candidate
    known = ", ".join(bundled_scenarios()) or "none found"
    raise ConfigError(f"{name_or_path}: no such scenario file (bundled scenarios: {known})")


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Read and validate a scenario, or raise one clear `ConfigError` line."""
    path = resolve_scenario(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read scenario: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        message = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        raise ConfigError(f"{path}: {where}: {message}") from None
