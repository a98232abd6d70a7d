"""Prometheus metrics for the daemon, in a registry of their own, behind a small typed facade.

The daemon, the engine and the client call `Metrics` methods with plain values; they never see
prometheus_client. Every label is bounded by the configuration: environment × table for data,
tenant for tokens, and small fixed vocabularies for outcomes, throttle codes and failure reasons
(anything outside a vocabulary is folded into "other"), so a misbehaving server cannot blow up the
series count.

Freshness (`dvmirror_table_last_success_timestamp_seconds`, `dvmirror_table_lag_seconds`) is
computed when Prometheus scrapes, from the last success recorded per table, so the lag keeps
growing while a table is stuck even if nothing else happens.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from threading import Lock
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from sync import __version__
from sync.dataverse.headers import THROTTLE_CODES

TOKEN_FAILURE_REASONS = frozenset(
    {"credential", "consent", "unknown_tenant", "network", "server", "other"}
)
# The governor counts 429s by kind; each kind is one documented code.
_CODE_BY_THROTTLE_KIND = {kind: code for code, kind in THROTTLE_CODES.items()}
_REASON_BY_ERROR = {
    "CredentialError": "credential",
    "ConsentError": "consent",
    "UnknownTenantError": "unknown_tenant",
    "NetworkError": "network",
    "ServerError": "server",
    "TransientError": "network",
}


def request_outcome(status: int | None) -> str:
    """The bounded `outcome` label for a finished request: 2xx…5xx, 429 on its own, or error."""
    if status is None:
        return "network_error"
    if status == 429:
        return "429"
    if 100 <= status <= 599:
        return f"{status // 100}xx"
    return "other"


def throttle_code_label(code: str | None) -> str:
    """The bounded `code` label of a 429: one of the documented hex codes, "none" or "other"."""
    if not code:
        return "none"
    normalized = code.strip().lower()
    return normalized if normalized in THROTTLE_CODES else "other"


def token_failure_reason(reason: str | BaseException) -> str:
    """Map an exception (by class, walking its bases) or a reason string to a bounded label."""
    if isinstance(reason, str):
        return reason if reason in TOKEN_FAILURE_REASONS else "other"
    for cls in type(reason).__mro__:
        if cls.__name__ in _REASON_BY_ERROR:
            return _REASON_BY_ERROR[cls.__name__]
    return "other"


class _FreshnessCollector:
    """Last success per table, turned into a timestamp gauge and a lag gauge at scrape time."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last_success: dict[tuple[str, str], float] = {}
        self._lock = Lock()  # scrapes may run in another thread than the event loop

    def record(self, environment: str, table: str, at: float) -> None:
        with self._lock:
            key = (environment, table)
            self._last_success[key] = max(at, self._last_success.get(key, at))

    def forget(self, environment: str, table: str) -> None:
        with self._lock:
            self._last_success.pop((environment, table), None)

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        with self._lock:
            items = sorted(self._last_success.items())
        stamp = GaugeMetricFamily(
            "dvmirror_table_last_success_timestamp_seconds",
            "Unix time of the table's last successful sync run.",
            labels=["environment", "table"],
        )
        lag = GaugeMetricFamily(
            "dvmirror_table_lag_seconds",
            "Seconds since the table's last successful sync run (now minus last success).",
            labels=["environment", "table"],
        )
        for (environment, table), at in items:
            stamp.add_metric([environment, table], at)
            lag.add_metric([environment, table], max(0.0, now - at))
        yield stamp
        yield lag


class _ProcessCollector:
    """CPU, memory and open files of this process, from /proc/self only.

    prometheus_client's ProcessCollector also needs /proc/stat (boot time), which the systemd
    unit hides (ProcSubset=pid); then it silently reports nothing. The start time here is when
    the metrics were created, which is start-up for the daemon.
    """

    def __init__(self, started_at: float) -> None:
        self._started_at = started_at
        self._page_size = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "process_cpu_seconds", "User and system CPU time spent.", value=time.process_time()
        )
        yield GaugeMetricFamily(
            "process_start_time_seconds", "Start time of the process.", value=self._started_at
        )
        try:
            with open("/proc/self/statm", "rb") as statm:
                resident_pages = int(statm.read().split()[1])
            yield GaugeMetricFamily(
                "process_resident_memory_bytes",
                "Resident memory size.",
                value=resident_pages * self._page_size,
            )
            yield GaugeMetricFamily(
                "process_open_fds", "Open file descriptors.", value=len(os.listdir("/proc/self/fd"))
            )
        except (OSError, ValueError, IndexError):
            return  # not Linux, or /proc not mounted: CPU and start time only


class Metrics:
    """The daemon's metrics. One instance per process; `registry` is what /metrics serves."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.time,
        process_metrics: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        reg = self.registry
        env_table = ["environment", "table"]
        self._rows_upserted = Counter(
            "dvmirror_rows_upserted", "Rows written to the mirror.", env_table, registry=reg
        )
        self._rows_deleted = Counter(
            "dvmirror_rows_deleted", "Rows deleted from the mirror.", env_table, registry=reg
        )
        self._pages = Counter(
            "dvmirror_pages", "Pages committed to the mirror.", env_table, registry=reg
        )
        self._runs = Counter(
            "dvmirror_table_runs",
            "Table sync runs finished, by outcome (ok, failed).",
            [*env_table, "outcome"],
            registry=reg,
        )
        self._parked = Gauge(
            "dvmirror_table_parked",
            "1 while the table is parked after repeated failures, else 0.",
            env_table,
            registry=reg,
        )
        self._verify_mismatch = Gauge(
            "dvmirror_verify_mismatch_rows",
            "Rows the last verify found different from Dataverse and left unrepaired.",
            env_table,
            registry=reg,
        )
        self._requests = Counter(
            "dvmirror_requests",
            "Dataverse requests finished, by outcome (2xx, 3xx, 4xx, 429, 5xx, network_error).",
            ["environment", "outcome"],
            registry=reg,
        )
        self._throttled = Counter(
            "dvmirror_throttled",
            "HTTP 429 service-protection answers, by error code.",
            ["environment", "code"],
            registry=reg,
        )
        self._retry_after = Counter(
            "dvmirror_retry_after_wait_seconds",
            "Seconds the environment's requests were held back by Retry-After pauses.",
            ["environment"],
            registry=reg,
        )
        self._concurrency_limit = Gauge(
            "dvmirror_concurrency_limit",
            "Requests the governor currently allows in flight for the environment.",
            ["environment"],
            registry=reg,
        )
        self._in_flight = Gauge(
            "dvmirror_requests_in_flight",
            "Requests in flight for the environment.",
            ["environment"],
            registry=reg,
        )
        self._token_failures = Counter(
            "dvmirror_token_failures",
            "Failed token acquisitions, by tenant and reason.",
            ["tenant", "reason"],
            registry=reg,
        )
        self._loop_lag = Histogram(
            "dvmirror_event_loop_lag_seconds",
            "How much later than asked the event loop ran a timer (sampled every 50 ms); "
            "a 429 is read this late.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=reg,
        )
        info = Info("dvmirror", "dvmirror build information.", registry=reg)
        info.info({"version": __version__})
        self._governor_totals: dict[tuple[str, str], float] = {}
        self._freshness = _FreshnessCollector(clock)
        reg.register(self._freshness)
        if process_metrics:
            reg.register(_ProcessCollector(started_at=time.time()))

    # --- data ---------------------------------------------------------------------------------

    def loop_lag(self, seconds: float) -> None:
        """One sample of the event loop's lag (sync.runtime.looplag)."""
        self._loop_lag.observe(seconds)

    def page_committed(self, environment: str, table: str, *, upserted: int, deleted: int) -> None:
        """Call after each page's transaction commits, with its row counts."""
        self._pages.labels(environment, table).inc()
        if upserted:
            self._rows_upserted.labels(environment, table).inc(upserted)
        if deleted:
            self._rows_deleted.labels(environment, table).inc(deleted)

    def table_run_finished(
        self, environment: str, table: str, *, ok: bool, at: float | None = None
    ) -> None:
        """Call when a table's sync run ends; a success also moves the table's freshness."""
        self._runs.labels(environment, table, "ok" if ok else "failed").inc()
        if ok:
            self._freshness.record(environment, table, self._clock() if at is None else at)

    def last_success(self, environment: str, table: str, at: float) -> None:
        """Seed freshness at start-up from the control database (`dv_sync_state.last_success`)."""
        self._freshness.record(environment, table, at)

    def table_parked(self, environment: str, table: str, parked: bool) -> None:
        """Call when a table is parked (True) or resumes (False)."""
        self._parked.labels(environment, table).set(1 if parked else 0)

    def verify_finished(self, environment: str, table: str, mismatch_rows: int) -> None:
        """Call when a table's verify ends: its unrepaired mismatch rows (0: it matches)."""
        self._verify_mismatch.labels(environment, table).set(mismatch_rows)

    def forget_table(self, environment: str, table: str) -> None:
        """Stop reporting freshness for a table removed from the configuration."""
        self._freshness.forget(environment, table)

    # --- requests -----------------------------------------------------------------------------

    def request_finished(self, environment: str, status: int | None) -> None:
        """Call once per HTTP attempt; `status` None means no response (network error)."""
        self._requests.labels(environment, request_outcome(status)).inc()

    def throttled(self, environment: str, code: str | None) -> None:
        """Call once per 429 answer, with its Dataverse error code if the body had one."""
        self._throttled.labels(environment, throttle_code_label(code)).inc()

    def retry_after_waited(self, environment: str, seconds: float) -> None:
        """Call once per pause (not once per waiting request) with the pause's wall-clock length."""
        if seconds > 0:
            self._retry_after.labels(environment).inc(seconds)

    def concurrency(self, environment: str, *, limit: float, in_flight: int) -> None:
        """Publish the governor's current concurrency limit and requests in flight."""
        self._concurrency_limit.labels(environment).set(limit)
        self._in_flight.labels(environment).set(in_flight)

    def token_failure(self, tenant: str, reason: str | BaseException) -> None:
        """Call when a token cannot be acquired; pass the exception or a reason label."""
        self._token_failures.labels(tenant, token_failure_reason(reason)).inc()

    def governor_snapshot(self, environment: str, snapshot: Mapping[str, Any]) -> None:
        """Publish a `Governor.snapshot()`: call each scheduler tick instead of the three above.

        Reads `concurrency_limit`, `in_flight`, `paused_seconds_total` and `throttled` (429s by
        kind); the totals become counter increments since the previous snapshot. Do not also
        call `throttled()` / `retry_after_waited()` for the same environment: that counts twice.
        """
        if "concurrency_limit" in snapshot:
            self._concurrency_limit.labels(environment).set(float(snapshot["concurrency_limit"]))
        if "in_flight" in snapshot:
            self._in_flight.labels(environment).set(float(snapshot["in_flight"]))
        paused = self._advance(environment, "paused", snapshot.get("paused_seconds_total"))
        if paused:
            self._retry_after.labels(environment).inc(paused)
        throttled = snapshot.get("throttled")
        for kind, total in throttled.items() if isinstance(throttled, Mapping) else ():
            new = self._advance(environment, f"throttled:{kind}", total)
            if new:
                code = throttle_code_label(_CODE_BY_THROTTLE_KIND.get(str(kind), "other"))
                self._throttled.labels(environment, code).inc(new)

    def _advance(self, environment: str, key: str, total: object) -> float:
        """How much a growing total grew since the last call (all of it after a reset)."""
        if not isinstance(total, int | float):
            return 0.0
        previous = self._governor_totals.get((environment, key), 0.0)
        self._governor_totals[(environment, key)] = float(total)
        return float(total) - previous if total >= previous else float(total)
