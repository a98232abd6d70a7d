"""The exception tree, sorted by what happens next.

::

    DvmirrorError
    ├── ConfigError                 refuse to start (exit 2)
    ├── AuthError                   park the tenant / environment (exit 3 from `check`)
    │   ├── CredentialError           wrong/expired secret, bad certificate
    │   ├── ConsentError              app not consented in the customer tenant
    │   ├── UnknownTenantError        tenant id or domain does not exist
    │   ├── NoApplicationUserError    token fine, but no application user in the environment
    │   └── PrivilegeError            the application user lacks a privilege
    ├── UnusableEnvironmentError           park the environment (unknown org, metadata unusable)
    ├── TableError                  park this table, the others go on
    │   ├── HostileResponseError      malformed JSON, missing key, wrong type, unsafe identifier
    │   ├── ForeignLinkError          a nextLink/deltaLink that leaves the environment's origin
    │   └── ImpersonationError        the application user may not act on behalf of that user
    ├── TransientError              retry with jittered backoff (tenacity), bounded
    │   ├── ServerError               5xx, SQL deadlock/timeout, query throttling
    │   └── NetworkError              reset, timeout, truncated body
    ├── ThrottledError              429: the governor pauses all of the user's requests
    ├── StoreError                  stop writing and alert
    └── LeaseLostError              another daemon owns the environment now: stop it, write nothing

    Control flow, not failures (never caught as failures):
    ├── ReauthenticateSignal        401 from Dataverse: refresh the token once and retry once
    └── DeltaTokenExpired           0x80044352: drop the delta link, resync the table from scratch

Every error carries the context needed to act on it (tenant, environment, table) and a
one-line message that already says what to do. Messages never contain secrets or tokens.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """The process exit codes, the one home of the contract users and scripts rely on."""

    OK = 0
    FAILURES = 1  # a run finished, but some tables or environments failed
    USAGE = 2  # bad arguments or configuration
    AUTH = 3  # authentication or authorization failed
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


class DvmirrorError(Exception):
    """Base of everything dvmirror raises on purpose."""

    exit_code: int = ExitCode.FAILURES

    def __init__(
        self,
        message: str,
        *,
        tenant: str | None = None,
        environment: str | None = None,
        table: str | None = None,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.tenant = tenant
        self.environment = environment
        self.table = table
        self.status = status
        self.code = code

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        # The default rebuilds with the positional args only, which fails for required keyword
        # context (ThrottledError's retry_after): the decode worker sends errors back pickled.
        return _restore, (type(self), self.args, self.__dict__)


def _restore(
    cls: type[DvmirrorError], args: tuple[object, ...], state: dict[str, object]
) -> DvmirrorError:
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigError(DvmirrorError):
    """The configuration or the command line is wrong; nothing was started."""

    exit_code = ExitCode.USAGE


class AuthError(DvmirrorError):
    """Authentication or authorization failed for a tenant or environment."""

    exit_code = ExitCode.AUTH

    def __init__(self, message: str, *, fix: str | None = None, **context: object) -> None:
        super().__init__(message, **context)  # type: ignore[arg-type]
        self.fix = fix


class CredentialError(AuthError):
    """The client secret or certificate was rejected."""


class ConsentError(AuthError):
    """The app registration is not consented in the customer tenant."""


class UnknownTenantError(AuthError):
    """The tenant id or domain does not exist in this cloud."""


class NoApplicationUserError(AuthError):
    """The token is valid but the environment has no application user for the app."""


class PrivilegeError(AuthError):
    """The application user lacks a privilege it needs."""


class UnusableEnvironmentError(DvmirrorError):
    """The environment as a whole cannot be synced right now."""


class TableError(DvmirrorError):
    """One table cannot be synced; it is parked while the others go on."""


class HostileResponseError(TableError):
    """The server answered with something we refuse to write."""


class ForeignLinkError(TableError):
    """A paging or delta link points outside the environment's origin."""


class ImpersonationError(TableError):
    """The application user may not impersonate the configured user."""


class TransientError(DvmirrorError):
    """Worth retrying after a backoff."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, **context: object
    ) -> None:
        super().__init__(message, **context)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ServerError(TransientError):
    """The service failed in a way that usually passes (5xx, SQL deadlock)."""


class NetworkError(TransientError):
    """The connection failed or the body was cut short."""


class ThrottledError(DvmirrorError):
    """HTTP 429 from service protection; every request of the user waits `retry_after`."""

    def __init__(self, message: str, *, retry_after: float, **context: object) -> None:
        super().__init__(message, **context)  # type: ignore[arg-type]
        self.retry_after = retry_after


class StoreError(DvmirrorError):
    """The local database refused a write."""


class LeaseLostError(DvmirrorError):
    """The environment's lease is no longer ours (expired while paused, taken over): the write
    that found out was rolled back, and nothing more may be written for the environment —
    not even its park (that is a write too)."""

    def __init__(self, environment: str, *, holder: str | None = None) -> None:
        taken = f" (now held by {holder})" if holder else ""
        super().__init__(
            f"environment {environment}: this process lost its lease{taken}; it stops writing "
            "there and leaves the environment to its owner",
            environment=environment,
        )


class ReauthenticateSignal(DvmirrorError):
    """Dataverse answered 401: refresh the token once and retry once."""


class DeltaTokenExpired(DvmirrorError):
    """The change-tracking token is no longer valid: resync the table from scratch."""
