"""Who signs in to the simulated Entra: users per tenant and app-role assignments (pure models).

In Entra an app registration defines its app roles (``appRoles``: a value such as
``Mirror.Operator``); each tenant where the app has a service principal assigns them, under
Enterprise applications, to users (they reach the id_token as ``roles``) and to other apps'
service principals (application permissions: ``roles`` of a client-credentials access token).
The scenario says the same per tenant::

    [[tenants.users]]
    name = "Ada Operator"
    oid = "…GUID…"
    upn = "ada@contoso.onmicrosoft.com"
    roles = ["Mirror.Operator"]              # on every app of the scenario that defines it
    app_roles = { "<client id>" = ["Mirror.Viewer"] }   # or per app, when apps differ

    [[tenants.app_assignments]]                # an automation app calling an API app
    client_id = "<client app>"
    resource = "<API app (it has app_id_uri)>"
    roles = ["Mirror.Viewer"]
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
ROLE_VALUE = re.compile(r"^[A-Za-z0-9._:-]{1,120}$")  # app-role values cannot contain spaces
UPN = re.compile(r"^[A-Za-z0-9._%+'-]+@([a-z0-9-]+\.)+[a-z]{2,63}$")


def _guid(value: str) -> str:
    if not GUID.match(value):
        raise ValueError(f"{value!r} is not a GUID")
    return value.lower()


def _role(value: str) -> str:
    if not ROLE_VALUE.match(value):
        raise ValueError(f"{value!r} is not an app-role value (letters, digits, . _ : -)")
    return value


Guid = Annotated[str, AfterValidator(_guid)]
RoleValue = Annotated[str, AfterValidator(_role)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class UserSpec(_Frozen):
    """A member user of one tenant."""

    name: str = Field(min_length=1, max_length=256)
    oid: Guid
    upn: str
    roles: tuple[RoleValue, ...] = ()
    app_roles: dict[Guid, tuple[RoleValue, ...]] = Field(default_factory=dict)

    @field_validator("upn")
    @classmethod
    def _upn(cls, value: str) -> str:
        value = value.lower()
        if not UPN.match(value):
            raise ValueError(f"{value!r} is not a user principal name (name@domain)")
        return value


class AppAssignmentSpec(_Frozen):
    """App roles of an API app assigned to another app's service principal in one tenant."""

    client_id: Guid
    resource: Guid
    roles: tuple[RoleValue, ...] = Field(min_length=1)


class _App(Protocol):
    @property
    def client_id(self) -> str: ...
    @property
    def app_roles(self) -> tuple[str, ...]: ...
    @property
    def app_id_uri(self) -> str | None: ...


def check_assignments(
    tenant: str,
    users: Sequence[UserSpec],
    assignments: Sequence[AppAssignmentSpec],
    apps: Sequence[_App],
    domain: str,
) -> None:
    """Raise ValueError naming the tenant and the key when an assignment cannot exist."""
    by_id = {app.client_id: app for app in apps}
    seen: set[str] = set()
    for user in users:
        for unique in (user.oid, user.upn):
            if unique in seen:
                raise ValueError(f"tenant {tenant}: user {unique} is listed twice")
            seen.add(unique)
        if not user.upn.endswith("@" + domain):
            raise ValueError(f"tenant {tenant}: user {user.upn} is not in domain {domain}")
        _check_user_roles(f"tenant {tenant}: user {user.upn}", user, by_id)
    for grant in assignments:
        resource = by_id.get(grant.resource)
        if grant.client_id not in by_id:
            raise ValueError(f"tenant {tenant}: app assignment: app {grant.client_id} is unknown")
        if resource is None or resource.app_id_uri is None:
            raise ValueError(
                f"tenant {tenant}: app assignment: resource {grant.resource} is not an app "
                "with an app_id_uri"
            )
        for role in grant.roles:
            if role not in resource.app_roles:
                raise ValueError(
                    f"tenant {tenant}: app assignment: app {grant.resource} has no role {role!r}"
                )


def _check_user_roles(where: str, user: UserSpec, apps: Mapping[str, _App]) -> None:
    defined = {role for app in apps.values() for role in app.app_roles}
    for role in user.roles:
        if role not in defined:
            raise ValueError(f"{where}: no app defines role {role!r}")
    for client_id, roles in user.app_roles.items():
        app = apps.get(client_id)
        if app is None:
            raise ValueError(f"{where}: app {client_id} is unknown")
        for role in roles:
            if role not in app.app_roles:
                raise ValueError(f"{where}: app {client_id} has no role {role!r}")


def user_roles(user: UserSpec, app: _App) -> list[str]:
    """The app roles `user` holds on `app`: shared roles the app defines, then per-app ones."""
    roles = [role for role in user.roles if role in app.app_roles]
    for role in user.app_roles.get(app.client_id, ()):
        if role not in roles:
            roles.append(role)
    return roles
