"""The `[daemon]` section: data directory, metrics address, concurrency, leases, logging."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from sync.config.values import FrozenModel, parse_interval


class Daemon(FrozenModel):
    data_dir: Path | None = None
    metrics_listen: str = "127.0.0.1:9464"
    shutdown_grace: float = 30.0
    max_concurrency: int = Field(default=16, ge=1, le=1024)
    # Processes that decode large pages off the event loop (0: decode in the event loop).
    decode_workers: int = Field(default=1, ge=0, le=16)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # How long an environment's lease lasts without renewal (renewed every third of it); a
    # daemon that dies leaves its environments to the others after this long.
    lease_seconds: float = Field(default=30.0, ge=3.0)
    # dv_run_history keeps the runs of this many days (pruned by the daemon and by migrate).
    history_days: int = Field(default=30, ge=1, le=3650)

    @field_validator("shutdown_grace", "lease_seconds", mode="before")
    @classmethod
    def _grace(cls, value: Any) -> Any:
        return parse_interval(value) if isinstance(value, str) else value

    @field_validator("metrics_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536 or not host:
            raise ValueError(f"{value!r} is not host:port, e.g. 127.0.0.1:9464")
        return value
