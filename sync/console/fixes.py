"""The fix for a table's last error, as `dvmirror check` would print it (pure).

The store keeps the error's message, not its class, so the fix is found again from the words
the message is made of (sync.dataverse.auth and .classify write them).
"""

from __future__ import annotations

from sync.config.model import Config
from sync.config.tenants import Environment, Tenant
from sync.dataverse.auth import (
    CERTIFICATE_FIX,
    CREDENTIAL_HELP,
    TENANT_FIX,
    consent_url_for,
)
from sync.dataverse.classify import NO_APP_USER_FIX, PRIVILEGE_FIX

THROTTLED_FIX = (
    "Nothing to do: dvmirror waits as long as Retry-After says; lower max_concurrency or the "
    "number of tables if it happens all day."
)


def fix_for(message: str, config: Config, tenant: Tenant, env: Environment) -> str | None:
    """The first fix whose words the message contains; None when none applies."""
    app = config.app_for(tenant)
    consent = (
        f"An administrator of {tenant.tenant_id} must grant admin consent: open "
        f"{consent_url_for(app, tenant)}"
    )
    credential = CREDENTIAL_HELP.format(client_id=app.client_id)
    rules = (
        ("not consented", consent),
        ("client secret is", credential),
        ("credential was rejected", credential),
        ("certificate was rejected", CERTIFICATE_FIX),
        ("unknown tenant", TENANT_FIX),
        (
            "no application user",
            NO_APP_USER_FIX.replace("<environment>", env.name)
            + f" App client id: {app.client_id}.",
        ),
        ("access denied", PRIVILEGE_FIX.replace("<environment>", env.name)),
        ("throttled", THROTTLED_FIX),
    )
    text = message.lower()
    return next((fix for words, fix in rules if words in text), None)
