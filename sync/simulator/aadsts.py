"""The AADSTS errors the simulated token endpoint returns, in Entra's full error shape.

Statuses and texts follow reference section 1.4: ``invalid_client`` failures are HTTP 401,
the others 400. The body carries ``error``, an ``error_description`` that begins with
``AADSTSnnnn:`` and ends with the Trace ID / Correlation ID / Timestamp lines,
``error_codes``, ``timestamp``, ``trace_id``, ``correlation_id`` and ``error_uri``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any


class EntraError(Exception):
    """A token-endpoint failure: HTTP status, OAuth ``error``, AADSTS number and text."""

    def __init__(self, status: int, error: str, code: int, text: str) -> None:
        super().__init__(f"AADSTS{code}")
        self.status = status
        self.error = error
        self.code = code
        self.text = text

    def body(self, *, host: str, correlation_id: str | None = None) -> dict[str, Any]:
        """The JSON body Entra sends for this error."""
        trace_id = str(uuid.uuid4())
        correlation_id = correlation_id or str(uuid.uuid4())
        timestamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        description = (
            f"AADSTS{self.code}: {self.text}\r\nTrace ID: {trace_id}\r\n"
            f"Correlation ID: {correlation_id}\r\nTimestamp: {timestamp}"
        )
        return {
            "error": self.error,
            "error_description": description,
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{host}/error?code={self.code}",
        }


def missing(parameter: str) -> EntraError:
    return EntraError(
        400,
        "invalid_request",
        900144,
        f"The request body must contain the following parameter: '{parameter}'.",
    )


def malformed_request() -> EntraError:
    return EntraError(
        400, "invalid_request", 9002313, "Invalid request. Request is malformed or invalid."
    )


def unsupported_grant(grant_type: str) -> EntraError:
    return EntraError(
        400,
        "unsupported_grant_type",
        70003,
        f"The app requested an unsupported grant type '{grant_type}'.",
    )


def unknown_tenant(identifier: str) -> EntraError:
    return EntraError(
        400,
        "invalid_tenant",
        90002,
        f"Tenant '{identifier}' not found. Check to make sure you have the correct tenant ID "
        "and are signing into the correct cloud. Check with your subscription administrator, "
        "this may happen if there are no active subscriptions for the tenant.",
    )


def app_not_found(client_id: str, directory: str) -> EntraError:
    return EntraError(
        400,
        "unauthorized_client",
        700016,
        f"Application with identifier '{client_id}' was not found in the directory "
        f"'{directory}'. This can happen if the application has not been installed by the "
        "administrator of the tenant or consented to by any user in the tenant. You may have "
        "sent your authentication request to the wrong tenant.",
    )


def bad_secret(client_id: str) -> EntraError:
    return EntraError(
        401,
        "invalid_client",
        7000215,
        "Invalid client secret provided. Ensure the secret being sent in the request is the "
        f"client secret value, not the client secret ID, for a secret added to app '{client_id}'.",
    )


def expired_secret(client_id: str) -> EntraError:
    return EntraError(
        401,
        "invalid_client",
        7000222,
        f"The provided client secret keys for app '{client_id}' are expired. Visit the Azure "
        "portal to create new keys for your app or consider using certificate credentials for "
        "added security.",
    )


def no_credential() -> EntraError:
    return EntraError(
        400,
        "invalid_client",
        7000218,
        "The request body must contain the following parameter: 'client_assertion' or "
        "'client_secret'.",
    )


def invalid_scope(scope: str) -> EntraError:
    return EntraError(
        400,
        "invalid_scope",
        70011,
        f"The provided value for the input parameter 'scope' isn't valid. "
        f"The scope {scope} isn't valid.",
    )


def scope_without_default(scope: str) -> EntraError:
    return EntraError(
        400,
        "invalid_scope",
        1002012,
        f"The provided value for scope {scope} is not valid. Client credential flows must have "
        "a scope value with /.default suffixed to the resource identifier (application ID URI).",
    )


def unknown_resource(resource: str, tenant: str) -> EntraError:
    return EntraError(
        400,
        "invalid_resource",
        500011,
        f"The resource principal named {resource} was not found in the tenant named {tenant}. "
        "This can happen if the application has not been installed by the administrator of the "
        "tenant or consented to by any user in the tenant. You might have sent your "
        "authentication request to the wrong tenant.",
    )


def bad_signature(reason: str = "") -> EntraError:
    return EntraError(
        401,
        "invalid_client",
        700027,
        f"Client assertion failed signature validation.{' ' + reason if reason else ''}",
    )


def assertion_time_range() -> EntraError:
    return EntraError(
        401, "invalid_client", 700024, "Client assertion is not within its valid time range."
    )


def assertion_wrong_client() -> EntraError:
    return EntraError(
        401,
        "invalid_client",
        700021,
        "Client assertion application identifier doesn't match 'client_id' parameter.",
    )


def assertion_invalid(text: str) -> EntraError:
    return EntraError(401, "invalid_client", 50013, f"Assertion is invalid. {text}")


def malformed_jwt() -> EntraError:
    return EntraError(400, "invalid_request", 50027, "JWT token is invalid or malformed.")


def unavailable() -> EntraError:
    return EntraError(
        503,
        "temporarily_unavailable",
        90055,
        "The service is temporarily unavailable; too many incoming requests. Retry later.",
    )


# -- sign-in (authorization endpoint and authorization_code grant) -----------------------------
# Texts follow the "AADSTS error codes" reference (reference-error-codes.md); where it gives only
# a name, the text says what went wrong in the same terms.


def reply_mismatch(redirect_uri: str, client_id: str) -> EntraError:
    return EntraError(
        400,
        "invalid_request",
        50011,
        f"The redirect URI '{redirect_uri}' specified in the request does not match the "
        f"redirect URIs configured for the application '{client_id}'. Make sure the redirect "
        "URI sent in the request matches one added to your application in the Azure portal.",
    )


def no_reply_address() -> EntraError:
    return EntraError(400, "invalid_request", 900971, "No reply address provided.")


def non_multitenant_common(client_id: str) -> EntraError:
    return EntraError(
        400,
        "invalid_request",
        50194,
        f"Application '{client_id}' is not configured as a multi-tenant application. Usage of "
        "the /common endpoint is not supported for such applications. Use a tenant-specific "
        "endpoint or configure the application to be multi-tenant.",
    )


def unsupported_response_type(response_type: str) -> EntraError:
    return EntraError(
        400,
        "unsupported_response_type",
        700054,
        f"Response_type '{response_type}' is not enabled for the application. Expected value "
        "is 'code'.",
    )


def unsupported_response_mode(mode: str) -> EntraError:
    return EntraError(
        400,
        "invalid_request",
        70007,
        f"The application returned an unsupported value '{mode}' of 'response_mode'.",
    )


def invalid_request(text: str) -> EntraError:
    return EntraError(400, "invalid_request", 90023, f"The request is not valid. {text}")


def code_challenge_size() -> EntraError:
    return EntraError(400, "invalid_request", 501491, "Invalid size of Code_Challenge parameter.")


def login_required() -> EntraError:
    return EntraError(
        400,
        "login_required",
        50058,
        "A silent sign-in request was sent but no user is signed in.",
    )


def user_not_found(upn: str, tenant: str) -> EntraError:
    return EntraError(
        400,
        "invalid_request",
        50034,
        f"The user account {upn} does not exist in the {tenant} directory. To sign into this "
        "application, the account must be added to the directory.",
    )


def user_not_in_tenant(upn: str, tenant: str, client_id: str) -> EntraError:
    return EntraError(
        400,
        "invalid_request",
        50020,
        f"User account '{upn}' from identity provider does not exist in tenant '{tenant}' and "
        f"cannot access the application '{client_id}' in that tenant. The account needs to be "
        "added as an external user in the tenant first.",
    )


def no_role_assignment(upn: str, client_id: str) -> EntraError:
    return EntraError(
        400,
        "invalid_request",
        50105,
        f"Your administrator has configured the application '{client_id}' to block users "
        f"unless they are specifically granted ('assigned') access to the application. The "
        f"signed in user '{upn}' is blocked because they are not a direct member of a group "
        "with access, nor had access directly assigned by an administrator.",
    )


def consent_required(client_id: str, *, silent: bool) -> EntraError:
    # Interactive: the user could not consent (admin consent needed); silent: prompt=none.
    return EntraError(
        400,
        "interaction_required" if silent else "consent_required",
        65001,
        f"The user or administrator has not consented to use the application with ID "
        f"'{client_id}'. Send an interactive authorization request for this user and resource.",
    )


def code_redeemed() -> EntraError:
    return EntraError(
        400,
        "invalid_grant",
        54005,
        "OAuth2 Authorization code was already redeemed, please retry with a new valid code or "
        "use an existing refresh token.",
    )


def code_expired() -> EntraError:
    return EntraError(
        400,
        "invalid_grant",
        70008,
        "The provided authorization code or refresh token has expired due to inactivity. Send "
        "a new interactive authorization request for this user and resource.",
    )


def code_invalid(reason: str) -> EntraError:
    return EntraError(
        400,
        "invalid_grant",
        70000,
        f"The provided value for the 'code' parameter is not valid. {reason}",
    )


def code_other_tenant() -> EntraError:
    return EntraError(
        400,
        "invalid_grant",
        700005,
        "Provided Authorization Code is intended to use against other tenant, thus rejected.",
    )


def code_reply_mismatch() -> EntraError:
    return EntraError(
        400,
        "invalid_grant",
        500112,
        "The reply address does not match the reply address provided when requesting the "
        "authorization code.",
    )


def pkce_mismatch() -> EntraError:
    return EntraError(
        400,
        "invalid_grant",
        501481,
        "The Code_Verifier does not match the code_challenge supplied in the authorization "
        "request.",
    )


def signout_invalid(text: str) -> EntraError:
    return EntraError(400, "invalid_request", 50061, f"Unable to complete sign out. {text}")
