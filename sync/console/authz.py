"""Who may sign in, what they may do and which environments they see (pure: plain values in).

Users of a configured customer tenant see only that tenant's environments; users of an
`admin_tenants` tenant see every environment. The app roles in the `roles` claim decide the
rest: the viewer role reads, the operator role also requests resyncs. Anything a user may not
see is answered as if it did not exist (404), so a guessed URL leaks nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum


class Access(Enum):
    VIEWER = "viewer"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Principal:
    """The signed-in user (or bearer token's subject), as the session keeps it."""

    oid: str
    tid: str
    name: str
    username: str
    roles: tuple[str, ...]


@dataclass(frozen=True)
class Directory:
    """Configured tenants by directory id, and the admin tenants (ids resolved from domains)."""

    tenants: Mapping[str, str]  # tenant name -> directory GUID (lower case)
    admin_tenant_ids: frozenset[str]
    operator_role: str
    viewer_role: str

    def may_sign_in(self, tid: str) -> bool:
        return tid in self.admin_tenant_ids or tid in self.tenants.values()

    def access(self, roles: Iterable[str]) -> Access | None:
        held = set(roles)
        if self.operator_role in held:
            return Access.OPERATOR
        if self.viewer_role in held:
            return Access.VIEWER
        return None

    def is_admin(self, principal: Principal) -> bool:
        return principal.tid in self.admin_tenant_ids

    def visible_tenants(self, principal: Principal) -> frozenset[str]:
        """Names of the configured tenants whose environments this user may see."""
        if self.is_admin(principal):
            return frozenset(self.tenants)
        return frozenset(name for name, tid in self.tenants.items() if tid == principal.tid)

    def can_see(self, principal: Principal, tenant_name: str | None) -> bool:
        return tenant_name is not None and tenant_name in self.visible_tenants(principal)

    def can_operate(self, principal: Principal) -> bool:
        return self.access(principal.roles) is Access.OPERATOR
