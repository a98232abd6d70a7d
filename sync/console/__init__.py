"""The web console (issue 22): Entra ID sign-in (OIDC through MSAL, id_tokens checked with
PyJWT), per-tenant authorization, freshness pages and the JSON API over the control tables,
and resync requests. Above sync.runtime: `dvmirror run` and `dvmirror console` serve it."""
