"""One writer process per SQLite store: an exclusive lock on `<database>.lock` beside it.

Leases keep several daemons apart on PostgreSQL, where row locks and one clock make them safe.
A SQLite file has neither, so `dvmirror run`, `backfill` and `sync --once` take this lock for
as long as they run, and a second one is refused at once with a clear error (exit 2). The
kernel drops the lock when its process ends, however it ends (SIGKILL, power loss), so a
restart never waits. Readers (`status`, data teams) need no lock: WAL lets them read beside
the writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from sync.errors import ConfigError
from sync.store.dialects.sqlite import prepare_sqlite_file, sqlite_path


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


@contextlib.contextmanager
def single_writer(url: str, command: str) -> Iterator[None]:
    """Hold the store's writer lock while the block runs; no-op for a PostgreSQL store."""
    database = sqlite_path(url)
    if database is None:
        yield
        return
    prepare_sqlite_file(database)  # the directory (0700) too, with a clear error
    path = lock_path(database)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown pid"
            raise ConfigError(
                f"store {database} is in use by another dvmirror process ({holder}); stop it "
                "first, or use PostgreSQL to run several daemons"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {command}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race a new holder)
