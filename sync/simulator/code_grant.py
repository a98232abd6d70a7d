"""The token response to a redeemed authorization code (``grant_type=authorization_code``).

As the auth code flow documents it: ``token_type`` Bearer, ``scope``, ``expires_in``,
``ext_expires_in``, ``access_token``, and an ``id_token`` when ``openid`` was asked for;
``client_info`` when the request carried ``client_info=1`` (MSAL does). The access token is for
the resource the scopes name: an API app of the scenario (``<App ID URI>/<scope>``: ``aud`` its
client id, ``scp``, the user's roles on it), else Microsoft Graph, which is what Entra returns
for ``openid profile`` alone (scope ``User.Read`` plus the OIDC scopes; a Graph token is not
for the app to validate). No refresh token is issued: the simulator has no refresh grant.
"""

from __future__ import annotations

from typing import Any

from sync.simulator import aadsts
from sync.simulator.authcodes import Grant
from sync.simulator.authorize import GRAPH, GRAPH_APP_ID, OIDC_SCOPES, resource_of
from sync.simulator.claims import id_token_claims, user_token_claims
from sync.simulator.identities import user_roles
from sync.simulator.scenario import Scenario
from sync.simulator.signin_http import client_info
from sync.simulator.tokens import TokenAuthority


def token_response(
    grant: Grant,
    scenario: Scenario,
    tokens: TokenAuthority,
    *,
    want_client_info: bool,
) -> dict[str, Any]:
    found = scenario.user(grant.tenant_id, grant.user_oid)
    app = scenario.app(grant.client_id)
    if found is None or app is None:  # the scenario is frozen: cannot happen, but say so
        raise aadsts.code_invalid("The signed-in user no longer exists.")
    tenant, user = found
    now = int(tokens.now())
    lifetime = scenario.token_lifetime
    issuer = tokens.issuer(tenant.tenant_id)
    resource_scopes = [s for s in grant.scopes if s not in OIDC_SCOPES]
    resource = resource_of(resource_scopes[0], scenario) if resource_scopes else GRAPH
    oidc = [s for s in grant.scopes if s in OIDC_SCOPES and s != "offline_access"]
    if resource in (GRAPH, None):
        audience, granted = GRAPH_APP_ID, ["User.Read", *oidc]
        roles: list[str] = []
    else:
        api = scenario.app(resource)
        assert api is not None
        audience, granted = api.client_id, [*resource_scopes, *oidc]
        roles = user_roles(user, api)
    access = tokens.sign(
        user_token_claims(
            issuer=issuer,
            audience=audience,
            tenant_id=tenant.tenant_id,
            client_id=app.client_id,
            oid=user.oid,
            name=user.name,
            upn=user.upn,
            scp=" ".join(s.rpartition("/")[2] for s in granted if s not in OIDC_SCOPES),
            roles=roles,
            now=now,
            lifetime=lifetime,
        )
    )
    response: dict[str, Any] = {
        "token_type": "Bearer",
        "scope": " ".join(granted),
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": access,
    }
    if "openid" in grant.scopes:
        response["id_token"] = tokens.sign(
            id_token_claims(
                issuer=issuer,
                client_id=app.client_id,
                tenant_id=tenant.tenant_id,
                oid=user.oid,
                name=user.name,
                upn=user.upn,
                roles=user_roles(user, app),
                scopes=grant.scopes,
                nonce=grant.nonce,
                now=now,
                lifetime=lifetime,
                auth_time=grant.auth_time if grant.max_age is not None else None,
            )
        )
    if want_client_info:
        response["client_info"] = client_info(user.oid, tenant.tenant_id)
    return response
