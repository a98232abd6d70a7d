"""The Dataverse Web API client: aiohttp I/O only; decisions come from odata.py and classify.py.

One `DataverseClient` per environment: its own session (bounded connections, explicit
timeouts, TLS pinned to the CA bundle, no cookies so no server affinity), its own governor.
Every request: origin check (a token only ever goes to the environment's own origin) → token →
governor slot → GET → classify → translate once into sync.errors.

Retries, each bounded, each in one place:
- 429: the governor has already paused the whole user; the request waits for its next slot
  and goes again (up to `RetryPolicy.throttle_retries`).
- 401: the token is refreshed once and the request retried once.
- TransientError (5xx, network, truncated body): tenacity, jittered exponential backoff
  (or the server's Retry-After), stopped after `attempts` or `max_delay`. CancelledError is
  never retried. A body that stays unparseable through every attempt is hostile.

Decoding is a seam: `get(..., decoder=...)` takes a `Decoder` that turns the raw body of a 2xx
response into the result (the default is plain orjson). It runs under the same policy: a body it
cannot parse at all (it returns None) is retried like a cut connection, a well-formed but
refused one (it raises HostileResponseError) fails at once. Large bodies are decoded in a worker
thread so that a 5,000-row page does not stall the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from sync.config.tenants import Environment, Tenant
from sync.dataverse.auth import scope_for
from sync.dataverse.classify import Kind, classify, to_error
from sync.dataverse.lastlook import DEPARTING, LastLookConnector, Recalled
from sync.dataverse.odata import (
    LinkTracker,
    Page,
    api_url,
    check_link,
    parse_page,
    request_headers,
    whoami_fields,
)
from sync.dataverse.seams import (
    RequestGate,
    RequestTally,
    RetryPolicy,
    TokenSource,
    ssl_context,
)
from sync.errors import (
    AuthError,
    HostileResponseError,
    NetworkError,
    ThrottledError,
    TransientError,
)
from sync.logs import get_logger

log = get_logger("dvmirror.dataverse")

DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=120, connect=15, sock_connect=15, sock_read=60)
# Bodies at least this large are decoded in a worker thread (about a millisecond of parsing).
OFF_LOOP_BYTES = 64 * 1024

Decoder = Callable[[bytes], Any]
BodyHook = Callable[[bytes], None]
"""Raw body of a 2xx response → result; None when the body is not parseable at all (retried)."""


class MalformedBodyError(NetworkError):
    """A 2xx body that is not JSON: usually a cut connection, retried; if it persists, hostile."""


class DataverseClient:
    """GETs against one environment's Web API, under its governor."""

    def __init__(
        self,
        tenant: Tenant,
        environment: Environment,
        tokens: TokenSource,
        governor: RequestGate,
        *,
        ca_bundle: Path | None = None,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        max_connections: int = 64,
    ) -> None:
        self.tenant = tenant
        self.environment = environment
        self.origin = environment.origin
        self.scope = scope_for(environment.url)
        self.governor = governor
        self.retry = retry or RetryPolicy()
        self.tally = RequestTally()
        self._tokens = tokens
        self._session = aiohttp.ClientSession(
            connector=LastLookConnector(limit=max_connections, ssl=ssl_context(ca_bundle)),
            timeout=timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )

    async def __aenter__(self) -> DataverseClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    # -- high level ------------------------------------------------------------------------

    async def whoami(self) -> dict[str, str]:
        """UserId, BusinessUnitId and OrganizationId of the application user."""
        document = await self.get(api_url(self.environment.url, "WhoAmI"))
        return whoami_fields(document)

    async def page(
        self,
        url: str,
        *,
        table: str,
        page_size: int | None = None,
        track_changes: bool = False,
        impersonate: str | None = None,
    ) -> Page:
        """One page of a collection or delta query, parsed; its delta link checked too."""
        headers = request_headers(
            page_size=page_size or self.environment.page_size,
            track_changes=track_changes,
            impersonate=impersonate,
        )
        document = await self.get(url, table=table, headers=headers)
        page = parse_page(document, table=table)
        if page.delta_link is not None:
            check_link(page.delta_link, self.origin, table=table)
        return page

    async def pages(
        self,
        url: str,
        *,
        table: str,
        page_size: int | None = None,
        track_changes: bool = False,
        impersonate: str | None = None,
    ) -> AsyncIterator[Page]:
        """Every page from `url`, following nextLinks verbatim while they stay home."""
        tracker = LinkTracker(self.origin, table)
        next_url: str | None = tracker.follow(url)
        while next_url is not None:
            page = await self.page(
                next_url,
                table=table,
                page_size=page_size,
                track_changes=track_changes,
                impersonate=impersonate,
            )
            yield page
            next_url = tracker.follow(page.next_link) if page.next_link else None

    # -- one request, with every retry rule --------------------------------------------------

    async def get(
        self,
        url: str,
        *,
        table: str | None = None,
        headers: Mapping[str, str] | None = None,
        decoder: Decoder | None = None,
        cost_class: str | None = None,
        on_body: BodyHook | None = None,
    ) -> Any:
        """GET `url` (on this environment's origin) and return its decoded body.

        `decoder` turns the body of a 2xx response into the result (default: the JSON document);
        error responses are always decoded as JSON, for classification. `cost_class` tells the
        governor which requests cost alike (default: the table's, or metadata). `on_body` sees
        each 2xx body as soon as it is read, before it is decoded (a pager sends its next request
        from there), on the event loop: it must be quick.
        """
        cost_class = cost_class or (f"table:{table}" if table else "metadata")
        check_link(url, self.origin, table=table)
        request_headers_ = dict(headers or request_headers())
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            wait=self._wait,
            stop=stop_after_attempt(self.retry.attempts) | stop_after_delay(self.retry.max_delay),
            before_sleep=self._log_retry(table),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._get_reauth_throttled(
                        url,
                        request_headers_,
                        table,
                        decoder or decode_json,
                        cost_class,
                        on_body=on_body,
                    )
        except MalformedBodyError as exc:
            where = f"environment {self.environment.name}" + (f", table {table}" if table else "")
            raise HostileResponseError(
                f"{where}: the Web API kept sending a response body that is not JSON "
                f"({self.retry.attempts} attempts); nothing was written",
                environment=self.environment.name,
                table=table,
            ) from exc
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def _wait(self, state: RetryCallState) -> float:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, TransientError) and error.retry_after is not None:
            return min(error.retry_after, self.retry.retry_after_max)
        backoff = wait_random_exponential(
            multiplier=self.retry.backoff_initial, max=self.retry.backoff_max
        )
        return float(backoff(state))

    def _log_retry(self, table: str | None) -> Any:
        def before_sleep(state: RetryCallState) -> None:
            outcome = state.outcome
            error = outcome.exception() if outcome is not None else None
            log.warning(
                "request_retry",
                environment=self.environment.name,
                table=table,
                attempt=state.attempt_number,
                wait=round(state.next_action.sleep, 3) if state.next_action else None,
                error=str(error),
            )

        return before_sleep

    async def _get_reauth_throttled(
        self,
        url: str,
        headers: dict[str, str],
        table: str | None,
        decoder: Decoder,
        cost_class: str,
        *,
        on_body: BodyHook | None,
    ) -> Any:
        throttled = 0
        refreshed = False
        while True:
            token = await self._tokens.token(self.scope, force_refresh=refreshed)
            status, response_headers, document, paused = await self._send(
                url, headers, token, decoder, cost_class, on_body=on_body
            )
            self.tally.count(table, status, paused)
            decision = classify(status, response_headers, document)
            if decision.kind is Kind.OK:
                if document is None:
                    raise MalformedBodyError(
                        f"{self.environment.name}: HTTP {status} body is not JSON",
                        environment=self.environment.name,
                        table=table,
                    )
                return document
            error = to_error(
                decision,
                environment=self.environment.name,
                tenant=self.tenant.name,
                table=table,
            )
            if decision.kind is Kind.THROTTLED:
                throttled += 1
                if throttled > self.retry.throttle_retries:
                    raise error
                continue  # the governor paused the user; the next slot waits it out
            if decision.kind is Kind.REAUTHENTICATE:
                if refreshed:
                    raise AuthError(
                        f"{self.environment.name}: Dataverse rejects even a fresh token (401)",
                        fix="check that the environment URL is right and belongs to tenant "
                        f"{self.tenant.tenant_id}",
                        environment=self.environment.name,
                        tenant=self.tenant.name,
                        status=401,
                    )
                refreshed = True
                continue
            raise error

    async def _send(
        self,
        url: str,
        headers: dict[str, str],
        token: str,
        decoder: Decoder,
        cost_class: str,
        *,
        on_body: BodyHook | None = None,
    ) -> tuple[int, Mapping[str, str], Any, float]:
        """One GET under a governor slot. Returns status, headers, the decoded body and the
        seconds the response added to the Retry-After pause.

        A 2xx body goes through `decoder` (after the slot is released: parsing is not a
        request); any other body is decoded as JSON so that classify() can read its error code.
        A request the governor recalls at its last look (`LastLookConnector`) waits for a new
        slot; it was never written.
        """
        while True:
            async with self.governor.slot(cost_class) as slot:
                departing = DEPARTING.set(slot)
                try:
                    async with self._session.get(
                        url,
                        headers={**headers, "Authorization": f"Bearer {token}"},
                        allow_redirects=False,
                    ) as response:
                        body = await response.read()
                        status, response_headers = response.status, response.headers
                except Recalled:
                    continue
                except (aiohttp.ClientError, TimeoutError) as exc:
                    slot.observe(599, {})
                    raise NetworkError(
                        f"{self.environment.name}: {type(exc).__name__} talking to the Web API",
                        environment=self.environment.name,
                    ) from exc
                finally:
                    DEPARTING.reset(departing)
                success = 200 <= status < 300
                document = None if success else decode_json(body)
                paused = slot.observe(status, response_headers, error_code=_error_code(document))
            break
        if success and body:
            if on_body is not None:
                on_body(body)
            if len(body) >= OFF_LOOP_BYTES:
                document = await asyncio.to_thread(decoder, body)
            else:
                document = decoder(body)
        return status, response_headers, document, paused


def decode_json(body: bytes) -> Any:
    """The default decoder: the JSON document, or None when the body is not JSON."""
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _error_code(document: Any) -> object:
    if isinstance(document, dict):
        error = document.get("error")
        if isinstance(error, dict):
            return error.get("code")
    return None


__all__ = [
    "BodyHook",
    "DataverseClient",
    "Decoder",
    "MalformedBodyError",
    "RetryPolicy",
    "ThrottledError",
    "decode_json",
]
