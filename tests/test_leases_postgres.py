"""Several `dvmirror run` processes share one PostgreSQL database through leases (real cluster,
real subprocesses, the simulator over HTTPS).

Every write of a checkpoint is recorded by a trigger the test adds to dv_sync_state (who wrote,
under which fencing token, when by the database's clock), so "nothing was written after the
lease ended" is checked in the database itself, not by timing:

- failover: three daemons share six environments two by two; the owner of two is SIGKILLed; the
  others take them over within the lease's expiry plus one renewal interval (database time), the
  mirrors equal the source, and no checkpoint carries the dead daemon's token after the takeover;
- zombie: the owner of an environment is paused (SIGSTOP) until its lease is taken, then resumed
  (SIGCONT) with its renewal held back (a row lock on its dv_daemons row), so that its next
  writes, not its renewal, meet the lease's end: the fence refuses them (nothing in the audit),
  and it steps down; without the fence this test fails;
- and, at the store level, the fence itself: a takeover waits for a write in flight, and the
  old holder's later write transactions are refused by the database.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import update

from sync.errors import LeaseLostError
from sync.store import checkpoints as state
from sync.store import leases as lease_store
from sync.store.connect import create_engine
from sync.store.control import sync_state
from sync.store.leases import FencedEngine, LeaseRef
from sync.store.migrate import upgrade
from tests import mirror_compare as compare
from tests.daemonproc import Churning, DaemonProcess, EnvSpec, wait_until, write_config
from tests.simfixtures import _no_ca_env, running_simulator  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(600)]
SCENARIO = Path(__file__).parent / "scenarios" / "leases.toml"
ENVIRONMENTS = tuple(f"lease_{i}" for i in range(1, 7))
TABLES = ("account", "contact")
LEASE_SECONDS = 4.0
INTERVAL = LEASE_SECONDS / 3  # how often a daemon renews and looks for work
# Ticks run on a shared, noisy machine: a takeover may come this much later than one interval.
SCHEDULING_SLACK = 3.0

# Which process wrote: dvmirror names its sessions "dvmirror <host>:<pid>" (application_name).
AUDIT = """
CREATE TABLE dvmirror.audit_checkpoints (
    environment text, table_name text, lease_token bigint, writer text,
    written_at timestamptz DEFAULT clock_timestamp()
);
CREATE FUNCTION dvmirror.audit_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO dvmirror.audit_checkpoints (environment, table_name, lease_token, writer)
    VALUES (NEW.environment, NEW.table_name, NEW.lease_token,
            current_setting('application_name'));
    RETURN NEW;
END $$;
CREATE TRIGGER audit_checkpoint AFTER INSERT OR UPDATE ON dvmirror.dv_sync_state
FOR EACH ROW EXECUTE FUNCTION dvmirror.audit_checkpoint();
"""


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path_factory.mktemp("sim-leases-pg")) as ready:
        yield ready


def sql(url: str, statement: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            if not args and statement.count(";") > 1:  # a script: no prepared statement
                await conn.execute(statement)
                return []
            return list(await conn.fetch(statement, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def configure(sim: dict[str, Any], directory: Path, pg_url: str, envs: tuple[str, ...]) -> Path:
    specs = {env: EnvSpec(TABLES, page_size=50, interval="1s") for env in envs}
    path = write_config(sim, directory, specs)
    text = path.read_text().replace(f"sqlite+aiosqlite:///{directory / 'mirror.db'}", pg_url)
    text = text.replace("[daemon]\n", f'[daemon]\nlease_seconds = "{LEASE_SECONDS:g}s"\n')
    path.write_text(text)
    return path


def leases(pg_url: str) -> dict[str, asyncpg.Record]:
    rows = sql(
        pg_url,
        "SELECT resource, holder, token, acquired_at, expires_at, "
        "expires_at > clock_timestamp() AS current FROM dvmirror.dv_leases",
    )
    return {row["resource"]: row for row in rows}


def owner_counts(pg_url: str) -> Counter[str]:
    return Counter(row["holder"] for row in leases(pg_url).values() if row["current"])


def holder_of(daemon: DaemonProcess, pg_url: str) -> str | None:
    pid = f":{daemon.process.pid}:"
    return next((h for h in owner_counts(pg_url) if pid in h), None)


def converged(sim: dict[str, Any], pg_url: str, envs: tuple[str, ...]) -> list[str]:
    problems: list[str] = []
    for env in envs:
        for table in TABLES:
            problems += compare.differences(sim, pg_url, env, table, limit=1)
    return problems


def writes_by(pg_url: str, env: str, daemon: DaemonProcess, after: dt.datetime) -> int:
    """Checkpoint writes of `env` by that daemon's process after a moment (database clock)."""
    rows = sql(
        pg_url,
        "SELECT count(*) FROM dvmirror.audit_checkpoints "
        "WHERE environment = $1 AND writer LIKE $2 AND written_at > $3",
        env,
        f"dvmirror %:{daemon.process.pid}",
        after,
    )
    return int(rows[0][0])


def start_fleet(
    config: Path, directory: Path, count: int, *, first: int = 0
) -> list[DaemonProcess]:
    """`count` daemons, their logs daemon-<first>.log and on (each log its own daemon's)."""
    return [
        DaemonProcess.start(config, directory / f"daemon-{n}.log")
        for n in range(first, first + count)
    ]


def stop_all(daemons: list[DaemonProcess]) -> None:
    for daemon in daemons:
        if daemon.process.poll() is None:
            daemon.stop(timeout=90)


@pytest.mark.usefixtures("no_ca_env")
def test_three_daemons_share_six_environments_and_take_over_from_a_killed_one(
    sim: dict[str, Any], tmp_path: Path, pg_url: str
) -> None:
    config = configure(sim, tmp_path, pg_url, ENVIRONMENTS)
    daemons = start_fleet(config, tmp_path, 1)
    try:
        wait_until(lambda: len(leases(pg_url)) == 6, timeout=90, what="migrations and lease rows")
        sql(pg_url, AUDIT)
        daemons += start_fleet(config, tmp_path, 2, first=1)
        # Spread evenly: two each (the first daemon took all six, then gave up its extra ones).
        wait_until(
            lambda: sorted(owner_counts(pg_url).values()) == [2, 2, 2],
            timeout=120,
            what="six environments spread two by two",
        )
        with Churning(sim, dict.fromkeys(ENVIRONMENTS, TABLES), every=0.5, seed=500):
            victim = daemons[1]
            holder = holder_of(victim, pg_url)
            assert holder is not None
            before = {env: row for env, row in leases(pg_url).items() if row["holder"] == holder}
            assert len(before) == 2
            wait_until(  # it is working on them
                lambda: all(
                    writes_by(pg_url, env, victim, r["acquired_at"]) for env, r in before.items()
                ),
                timeout=60,
                what="the victim's first checkpoints",
            )
            killed_at = sql(pg_url, "SELECT clock_timestamp()")[0][0]
            victim.kill()
            wait_until(
                lambda: all(
                    (row := leases(pg_url)[env])["holder"] != holder and row["current"]
                    for env in before
                ),
                timeout=60,
                what="the killed daemon's environments taken over",
            )
            after = leases(pg_url)
            for env, old in before.items():
                new = after[env]
                assert new["token"] == old["token"] + 1, env
                # Taken within the lease's expiry plus one renewal interval (database clock). A
                # daemon on the same host sees the killed one's pid gone and need not even wait.
                after_kill = (new["acquired_at"] - killed_at).total_seconds()
                assert after_kill <= LEASE_SECONDS + INTERVAL + SCHEDULING_SLACK, (env, after_kill)
        survivors = [d for d in daemons if d is not victim]
        assert sorted(owner_counts(pg_url).values()) == [3, 3]
        try:
            wait_until(
                lambda: not converged(sim, pg_url, ENVIRONMENTS), timeout=120, what="convergence"
            )
        except AssertionError:  # say which table differs, and how, and where the logs are
            problems = converged(sim, pg_url, ENVIRONMENTS)
            raise AssertionError(f"not converged: {problems[:6]}; logs in {tmp_path}") from None
        for env in before:
            new = leases(pg_url)[env]
            # Fencing, in the database: nothing by the killed daemon once the lease was taken
            # over; every checkpoint of the environment now carries the new token.
            assert writes_by(pg_url, env, victim, after[env]["acquired_at"]) == 0, env
            tokens = sql(
                pg_url,
                "SELECT DISTINCT lease_token FROM dvmirror.dv_sync_state WHERE environment = $1",
                env,
            )
            assert [row[0] for row in tokens] == [new["token"]], env
        statuses = [d.process.poll() for d in survivors]
        assert statuses == [None, None]
    finally:
        stop_all(daemons)


class RenewalHeldBack:
    """Holds a row lock on a daemon's dv_daemons row, so its lease keeper's next tick (which
    starts with that row's heartbeat UPDATE) waits, and with it the renewal that would find the
    lease gone. Its seen_at is first pushed ahead (committed), so the other daemons' heartbeat,
    which deletes members silent for two lease periods, never waits on the locked row."""

    def __init__(self, url: str, holder: str) -> None:
        self.url = url.replace("postgresql+asyncpg://", "postgresql://", 1)
        self.holder = holder
        self.locked = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._hold()), daemon=True)

    async def _hold(self) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute(
                "UPDATE dvmirror.dv_daemons SET seen_at = clock_timestamp() + interval '1 hour' "
                "WHERE holder = $1",
                self.holder,
            )
            async with conn.transaction():
                await conn.execute(
                    "SELECT 1 FROM dvmirror.dv_daemons WHERE holder = $1 FOR UPDATE", self.holder
                )
                self.locked.set()
                await asyncio.to_thread(self.release.wait)
        finally:
            await conn.close()

    def __enter__(self) -> RenewalHeldBack:
        self.thread.start()
        assert self.locked.wait(30), "the daemon's row could not be locked"
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        self.thread.join(30)


def heartbeat_of(pg_url: str, holder: str) -> dt.datetime:
    rows = sql(pg_url, "SELECT seen_at FROM dvmirror.dv_daemons WHERE holder = $1", holder)
    return rows[0][0]  # type: ignore[no-any-return]


@pytest.mark.usefixtures("no_ca_env")
def test_a_paused_owner_resumed_after_its_lease_was_taken_is_refused_by_the_fence(
    sim: dict[str, Any], tmp_path: Path, pg_url: str
) -> None:
    """The zombie is paused between two lease ticks until its lease is taken over, and resumed
    with its renewal held back: its sync cycles go on and try to write checkpoints and rows
    under the old token. Only the fence stands between them and the database: every write is
    refused (nothing in the audit after the takeover), the environment stops on the refusal
    (environment_lease_lost) before the keeper could tell, and once the renewal runs the keeper
    logs lease_lost too. Without the fence the zombie's checkpoints land and this fails."""
    envs = ENVIRONMENTS[:2]
    config = configure(sim, tmp_path, pg_url, envs)
    daemons = start_fleet(config, tmp_path, 1)
    try:
        wait_until(lambda: len(leases(pg_url)) == 2, timeout=90, what="migrations and lease rows")
        sql(pg_url, AUDIT)
        daemons += start_fleet(config, tmp_path, 1, first=1)
        wait_until(
            lambda: sorted(owner_counts(pg_url).values()) == [1, 1],
            timeout=120,
            what="one environment each",
        )
        zombie, other = daemons
        holder = holder_of(zombie, pg_url)
        assert holder is not None
        ((env, old),) = [(e, r) for e, r in leases(pg_url).items() if r["holder"] == holder]
        with Churning(sim, dict.fromkeys(envs, TABLES), every=0.5, seed=500):
            wait_until(
                lambda: writes_by(pg_url, env, zombie, old["acquired_at"]) > 0,
                timeout=60,
                what="the owner's first checkpoints",
            )
            # Pause it just after a tick (not inside one: its renewal must still be to come).
            seen = heartbeat_of(pg_url, holder)
            wait_until(lambda: heartbeat_of(pg_url, holder) > seen, timeout=30, what="a tick")
            time.sleep(0.2)
            zombie.send(signal.SIGSTOP)
            resumed = False
            try:
                wait_until(
                    lambda: (row := leases(pg_url)[env])["holder"] != holder and row["current"],
                    timeout=60,
                    what="the paused owner's lease taken over",
                )
                taken = leases(pg_url)[env]
                assert taken["token"] == old["token"] + 1
                with RenewalHeldBack(pg_url, holder):
                    zombie.send(signal.SIGCONT)
                    resumed = True
                    # Its cycles go on; their writes meet the fence (or, without it, land).
                    wait_until(
                        lambda: (
                            zombie.named("environment_lease_lost")
                            or writes_by(pg_url, env, zombie, taken["acquired_at"]) > 0
                        ),
                        timeout=60,
                        what="the zombie's next write",
                    )
                    assert writes_by(pg_url, env, zombie, taken["acquired_at"]) == 0
                    assert not zombie.named("lease_lost"), "the renewal was to be held back"
                    (refused,) = zombie.named("environment_lease_lost")
                    assert refused["environment"] == env
            finally:
                if not resumed:
                    zombie.send(signal.SIGCONT)
            # The renewal, let go, finds the lease gone as well.
            wait_until(lambda: zombie.named("lease_lost"), timeout=60, what="the keeper noticing")
        wait_until(lambda: not converged(sim, pg_url, envs), timeout=120, what="convergence")
        # Nothing by the zombie after the takeover, in the database's own record.
        assert writes_by(pg_url, env, zombie, taken["acquired_at"]) == 0
        assert zombie.process.poll() is None, "the zombie stays up (it may take work again later)"
        assert other.process.poll() is None
    finally:
        stop_all(daemons)


async def test_the_fence_is_the_database_s_a_takeover_waits_for_the_write_in_flight(
    pg_url: str,
) -> None:
    """Store level, on PostgreSQL itself: a write transaction that passed the fence holds a share
    lock on the lease row, so a taker's SELECT … FOR UPDATE SKIP LOCKED cannot take the lease
    while that write is in flight, even once it has expired; after it, the taker gets the next
    token, and the old holder's every later write transaction is refused (rolled back)."""
    engine = create_engine(pg_url)
    try:
        await upgrade(engine)
        await state.ensure(engine, "env", "account", now=dt.datetime.now(dt.UTC))
        await lease_store.ensure_rows(engine, ["env"])
        (first,) = await lease_store.acquire(engine, "host:1:a", ["env"], 1, ttl=1.0)
        fenced = FencedEngine(engine, LeaseRef(first))
        async with fenced.begin() as conn:
            await asyncio.sleep(1.5)  # the lease runs out while the write is in flight
            assert await lease_store.acquire(engine, "host:2:b", ["env"], 1, ttl=30.0) == []
            await conn.execute(
                update(sync_state).where(sync_state.c.environment == "env").values(pages=1)
            )
        (second,) = await lease_store.acquire(engine, "host:2:b", ["env"], 1, ttl=30.0)
        assert second.token == first.token + 1
        with pytest.raises(LeaseLostError):
            async with fenced.begin() as conn:
                await conn.execute(
                    update(sync_state).where(sync_state.c.environment == "env").values(pages=2)
                )
        status = await state.load(engine, "env", "account")
        assert status is not None and status.pages == 1  # the refused write left nothing
    finally:
        await engine.dispose()


async def test_on_postgresql_the_fence_fails_once_the_lease_expired_even_if_nobody_took_it(
    pg_url: str,
) -> None:
    engine = create_engine(pg_url)
    try:
        await upgrade(engine)
        await lease_store.ensure_rows(engine, ["env"])
        (lease,) = await lease_store.acquire(engine, "host:1:a", ["env"], 1, ttl=0.5)
        fenced = FencedEngine(engine, LeaseRef(lease))
        await state.ensure(fenced, "env", "account", now=dt.datetime.now(dt.UTC))
        await asyncio.sleep(1.0)
        with pytest.raises(LeaseLostError):
            await state.record_success(fenced, "env", "account", now=dt.datetime.now(dt.UTC))
        kept, lost = await lease_store.renew(engine, [lease], 30.0)
        assert kept == [] and [x.token for x in lost] == [lease.token]
    finally:
        await engine.dispose()
