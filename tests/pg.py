"""A throwaway PostgreSQL cluster for the test suite: initdb + pg_ctl in a temporary directory.

The server binaries come from PATH or the newest /usr/lib/postgresql/*/bin (Debian/Ubuntu's
`postgresql` package; `.ci/run` installs it where it is missing). initdb refuses to run as
root, so as root the cluster belongs to `nobody`. It listens on a unix socket in its own
directory only (no TCP port to collide with), with fsync off (a test cluster loses nothing it
needs), and is stopped and removed at the end of the session.

Without server binaries the tests fail and say what to install; `DVMIRROR_SKIP_PG=1` skips the
PostgreSQL tests instead, for a developer machine without PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import asyncpg

SUPERUSER = "dvmirror"
PORT = 5432  # the socket file's name (.s.PGSQL.5432) in the cluster's own directory


def server_binaries() -> Path | None:
    """The directory holding initdb and pg_ctl, or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return versions[-1].parent if versions else None


class PgCluster:
    """One running cluster; `url(name)` is an SQLAlchemy URL for one of its databases."""

    def __init__(self) -> None:
        self.bin = server_binaries()
        if self.bin is None:
            raise RuntimeError(
                "PostgreSQL server binaries (initdb, pg_ctl) not found: install PostgreSQL "
                "(apt-get install postgresql), or set DVMIRROR_SKIP_PG=1 to skip these tests"
            )
        self.root = Path(tempfile.mkdtemp(prefix="dvmirror-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._names = itertools.count(1)
        self.root.chmod(0o755)
        self._as_owner: Sequence[str] = ()
        if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to nobody
            shutil.chown(self.root, user="nobody")
            self._as_owner = ("runuser", "-u", "nobody", "--")

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self._as_owner, *args], check=True, capture_output=True, text=True, timeout=120
        )

    def start(self) -> PgCluster:
        assert self.bin is not None
        self._run(
            str(self.bin / "initdb"),
            "-D", str(self.data), "-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        options = (
            f"-k {self.root} -p {PORT} -c listen_addresses='' -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.log), "-w", "-t", "60", "start",
        )  # fmt: skip
        return self

    def stop(self) -> None:
        if self.bin is not None and self.data.exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{SUPERUSER}@/{database}?host={self.root}&port={PORT}"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@/{database}?host={self.root}&port={PORT}"

    def new_database(self, hint: str) -> str:
        """A fresh, empty database named after `hint`; returns its SQLAlchemy URL."""
        name = f"{re.sub(r'[^a-z0-9]+', '_', hint.lower())[:40].strip('_')}_{next(self._names)}"
        asyncio.run(self._admin(f'CREATE DATABASE "{name}"'))
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.split("/")[3].split("?", maxsplit=1)[0]
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    async def _admin(self, statement: str) -> None:
        conn = await asyncpg.connect(self.dsn())
        try:
            await conn.execute(statement)
        finally:
            await conn.close()
