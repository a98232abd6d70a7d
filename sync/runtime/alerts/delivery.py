"""Delivering alert messages: one bounded queue and one sender task per alert.

Syncing never waits for a receiver: the monitor only `offer`s a message (a full queue drops it,
and the drop is recorded like a failed delivery). Each sender posts its messages in order, each
with a per-attempt timeout and a bounded number of attempts (tenacity) on connection failures,
timeouts, 429 and 5xx; then it records the outcome (`on_outcome`). The URL is the secret: logs
and outcomes name the alert and its origin only, and error text is masked with the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import orjson
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from sync.config.alerts import Alert
from sync.dataverse.seams import ssl_context
from sync.logs import get_logger
from sync.runtime.alerts.payloads import render
from sync.runtime.alerts.rules import Message

log = get_logger("dvmirror.alerts")

Outcome = Callable[[Message, str, int], Awaitable[None]]


@dataclass(frozen=True)
class DeliveryPolicy:
    queue_size: int = 100
    attempts: int = 4
    timeout: float = 10.0  # per attempt
    backoff: float = 1.0  # first wait; doubling, at most `backoff_max`
    backoff_max: float = 30.0


class Retryable(Exception):
    """A failed attempt worth another one (no answer, 429, 5xx)."""


class Refused(Exception):
    """The receiver answered with a status that another attempt will not change (4xx)."""


def _masked(text: str, alert: Alert) -> str:
    secret = alert.url.get_secret_value()
    return text.replace(secret, f"{alert.origin}/…") if secret else text


class AlertSender:
    """The queue and sender task of one alert."""

    def __init__(self, alert: Alert, on_outcome: Outcome, policy: DeliveryPolicy) -> None:
        self.alert = alert
        self.policy = policy
        self.on_outcome = on_outcome
        self.queue: asyncio.Queue[Message] = asyncio.Queue(policy.queue_size)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context(self.alert.ca_bundle), limit=2),
            timeout=aiohttp.ClientTimeout(total=self.policy.timeout),
        )
        self._task = asyncio.create_task(self._run(), name=f"alert/{self.alert.name}")

    def offer(self, message: Message) -> bool:
        """Queue without waiting; False (and the drop recorded) when the queue is full."""
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            log.warning(
                "alert_dropped", alert=self.alert.name, alert_event=message.name, why="queue full"
            )
            asyncio.get_running_loop().create_task(
                self._record(message, "dropped: the queue is full (the receiver is too slow)", 0)
            )
            return False
        return True

    async def drain(self, grace: float) -> None:
        """Send what is queued for up to `grace` seconds, then stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.queue.join()
        await self.stop()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            message = await self.queue.get()
            try:
                try:
                    outcome, attempts = await self._deliver(message)
                except Exception as exc:  # noqa: BLE001 - one bad message never stops the sender
                    outcome, attempts = _masked(f"failed: {type(exc).__name__}", self.alert), 0
                await self._record(message, outcome, attempts)
            finally:
                self.queue.task_done()

    async def _record(self, message: Message, outcome: str, attempts: int) -> None:
        try:
            await self.on_outcome(message, outcome, attempts)
        except Exception as exc:  # noqa: BLE001 - recording never stops the sender
            log.warning("alert_outcome_not_recorded", alert=self.alert.name, error=str(exc)[:200])

    async def _deliver(self, message: Message) -> tuple[str, int]:
        body = orjson.dumps(render(message, self.alert.format))
        attempts = 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.policy.attempts),
            wait=wait_exponential(
                multiplier=self.policy.backoff, min=self.policy.backoff, max=self.policy.backoff_max
            ),
            retry=retry_if_exception_type(Retryable),
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    await self._post(body)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            outcome = f"failed after {attempts} attempts: {last}"
        except Refused as exc:
            outcome = f"refused: {exc}"
        else:
            log.info(
                "alert_delivered",
                alert=self.alert.name,
                to=self.alert.origin,
                alert_event=message.name,
                environment=message.environment,
                table=message.table or None,
                attempts=attempts,
            )
            return "ok", attempts
        outcome = _masked(outcome, self.alert)[:255]
        log.warning(
            "alert_delivery_failed",
            alert=self.alert.name,
            to=self.alert.origin,
            alert_event=message.name,
            environment=message.environment,
            outcome=outcome,
        )
        return outcome, attempts

    async def _post(self, body: bytes) -> None:
        assert self._session is not None
        url = self.alert.url.get_secret_value()
        try:
            async with self._session.post(
                url, data=body, headers={"Content-Type": "application/json"}, allow_redirects=False
            ) as response:
                status = response.status
                await response.read()
        except TimeoutError:
            raise Retryable(f"no answer within {self.policy.timeout:g}s") from None
        except aiohttp.ClientSSLError as exc:
            raise Refused(f"TLS: {type(exc).__name__} (set ca_bundle for a private CA)") from None
        except aiohttp.ClientError as exc:
            raise Retryable(f"{type(exc).__name__}: cannot reach {self.alert.origin}") from None
        if status == 429 or status >= 500:
            raise Retryable(f"HTTP {status}")
        if status >= 300:
            raise Refused(f"HTTP {status}")


class Senders:
    """Every alert's sender, by alert name."""

    def __init__(
        self, alerts: tuple[Alert, ...], on_outcome: Outcome, policy: DeliveryPolicy
    ) -> None:
        self.by_name = {a.name: AlertSender(a, on_outcome, policy) for a in alerts}

    def start(self) -> None:
        for sender in self.by_name.values():
            sender.start()

    def offer(self, message: Message) -> None:
        sender = self.by_name.get(message.alert)
        if sender is not None:
            sender.offer(message)

    async def drain(self, grace: float) -> None:
        await asyncio.gather(*(s.drain(grace) for s in self.by_name.values()))
