"""Keeping the leases of the environments this process works on (the store side: store.leases).

`LeaseKeeper` is the daemon's: it takes its fair share of the configured environments at start
(sync.runtime.lease_plan), then every third of the lease period says it is alive, renews what it
holds, and takes or gives up environments as daemons join and leave. It tells the scheduler
through three callbacks: `acquired` (start the environment's group, writing through the
FencedEngine it is given), `lost` (stop it at once: it could not write anyway) and `release`
(stop it with the usual grace; the lease is given up after that). A fourth, `fenced_out`, asks
whether an environment's group stopped because one of its writes found the lease gone while the
keeper still renewed it (seen under load on PostgreSQL: a write's fence check saw the lease
expired, and the renewal that came a moment late still kept it). Such a lease
is given back (released) at the next tick, so that a daemon (this one, often) takes it up again
and restarts the environment, instead of holding an environment nobody works on.

A SQLite store has exactly one writer process (store.writer_lock), so there the keeper takes
every environment at once, stealing leases a killed predecessor left behind.

`command_leases` is the one-off commands' (`backfill`, `sync --once`): the leases of the
environments they touch, renewed while they run, or a clear refusal when a daemon holds one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.errors import ConfigError, DvmirrorError
from sync.logs import get_logger
from sync.runtime.lease_plan import plan_leases
from sync.store import leases as store
from sync.store.dialects import dialect_for
from sync.store.leases import FencedEngine, Lease, LeaseRef

log = get_logger("dvmirror.leases")

Acquired = Callable[[str, AsyncEngine], Awaitable[None]]
Stopped = Callable[[str], Awaitable[None]]


def _process_space() -> str:
    """Names this boot of this host and this pid namespace (a container has its own), so that a
    pid in a lease row is only ever looked up where it means the same process. Empty where
    /proc does not tell (then no holder is ever judged dead by its pid)."""
    parts: list[str] = []
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    if len(parts) < 2:
        return ""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:6]


PROCESS_SPACE = _process_space()


def new_holder() -> str:
    """This process's name in the lease rows: host, pid, where that pid lives (boot and pid
    namespace) and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{PROCESS_SPACE}{secrets.token_hex(3)}"


def abandoned(holder: str) -> bool:
    """Whether the holder is a process of this host, boot and pid namespace that is gone (a
    SIGKILLed daemon or command restarted on the same machine): its lease need not run out
    before it is taken. Fencing keeps this safe even if it were wrong."""
    host, _, rest = holder.partition(":")
    pid_text, _, tag = rest.partition(":")
    if not PROCESS_SPACE or host != socket.gethostname() or not tag.startswith(PROCESS_SPACE):
        return False
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists (another user's process: EPERM)
        return False
    return False


def abandoned_holders(rows: Mapping[str, Lease], now: datetime) -> set[str]:
    return {
        lease.holder for lease in rows.values() if lease.current(now) and abandoned(lease.holder)
    }


def single_writer_store(engine: AsyncEngine) -> bool:
    """A SQLite store has one writer process (store.writer_lock): it may take every lease."""
    return dialect_for(engine).name == "sqlite"


def _never(name: str) -> bool:
    return False


async def _nothing(name: str) -> None:
    return None


class LeaseKeeper:
    """Holds this daemon's share of the environments' leases (see the module docstring)."""

    def __init__(
        self,
        engine: AsyncEngine,
        resources: Collection[str],
        ttl: float,
        *,
        acquired: Acquired,
        lost: Stopped = _nothing,
        release: Stopped = _nothing,
        fenced_out: Callable[[str], bool] = _never,
        holder: str | None = None,
        steal: bool | None = None,
    ) -> None:
        self.engine = engine
        self.resources = tuple(resources)
        self.ttl = ttl
        self.interval = ttl / 3
        self.holder = holder or new_holder()
        self.steal = single_writer_store(engine) if steal is None else steal
        self.on_acquired, self.on_lost, self.on_release = acquired, lost, release
        self.fenced_out = fenced_out
        self.held: dict[str, LeaseRef] = {}
        self.releasing: dict[str, asyncio.Task[None]] = {}
        self.draining = False
        self.started_at = datetime.now(UTC)

    @property
    def owned(self) -> list[str]:
        return sorted(self.held)

    async def start(self) -> None:
        """Lease rows for every environment, then this daemon's share at once."""
        await store.ensure_rows(self.engine, self.resources)
        await self.tick()

    async def set_resources(self, resources: Collection[str]) -> None:
        """A reloaded configuration: new environments get lease rows; the next tick gives up
        those no longer configured and shares out the new ones."""
        self.resources = tuple(resources)
        await store.ensure_rows(self.engine, self.resources)

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every third of the lease period until `stop`; a store that fails is retried."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await stop.wait()
            if stop.is_set():
                return
            try:
                await self.tick()
            except (SQLAlchemyError, OSError, DvmirrorError) as exc:
                log.warning("lease_tick_failed", error=str(exc).splitlines()[0], holder=self.holder)

    async def tick(self) -> None:
        members = await store.heartbeat(
            self.engine,
            self.holder,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self.started_at,
            ttl=self.ttl,
        )
        await self._renew()
        if self.draining:
            return
        for name in [n for n in self.held if n not in self.releasing and self.fenced_out(n)]:
            log.warning(
                "lease_given_back",
                environment=name,
                holder=self.holder,
                hint="a write found the lease gone while this process still renewed it (a "
                "renewal that came late); released so that the environment is taken up again",
            )
            self._give_up(name)
        rows = await store.owners(self.engine)
        now = await store.current_time(self.engine)
        mine = [name for name in self.held if name not in self.releasing]
        dead: set[str] = set()
        if self.steal:
            free = [name for name in self.resources if name not in self.held]
            members, others = 1, Counter[str]()
        else:
            dead = abandoned_holders(rows, now)
            free = [
                name
                for name in self.resources
                if name not in self.held
                and (name not in rows or not rows[name].current(now) or rows[name].holder in dead)
            ]
            others = Counter(
                lease.holder
                for lease in rows.values()
                if lease.current(now) and lease.holder != self.holder and lease.holder not in dead
            )
        plan = plan_leases(self.resources, mine, free, members, others)
        for name in plan.release:
            self._give_up(name)
        if plan.acquire:
            taken = await store.acquire(
                self.engine,
                self.holder,
                free,
                plan.acquire,
                self.ttl,
                steal=self.steal,
                abandoned=() if self.steal else dead,
            )
            for lease in taken:
                ref = self.held[lease.resource] = LeaseRef(lease)
                log.info(
                    "lease_acquired",
                    environment=lease.resource,
                    fence=lease.token,
                    holder=self.holder,
                    members=members,
                )
                await self.on_acquired(lease.resource, FencedEngine(self.engine, ref))

    async def _renew(self) -> None:
        kept, lost = await store.renew(
            self.engine, [ref.lease for ref in self.held.values()], self.ttl
        )
        for lease in kept:
            self.held[lease.resource].lease = lease
        for lease in lost:
            del self.held[lease.resource]
            log.warning(
                "lease_lost",
                environment=lease.resource,
                fence=lease.token,
                holder=self.holder,
                hint="expired before it was renewed (a pause, or the store was unreachable); "
                "the environment stops here and another daemon takes it",
            )
            await self.on_lost(lease.resource)

    def _give_up(self, name: str) -> None:
        """Stop the environment with its grace (still renewing the lease meanwhile), then free
        the lease for the daemon that is to take it."""
        if name in self.releasing:
            return

        async def hand_over() -> None:
            try:
                await self.on_release(name)
            finally:
                ref = self.held.pop(name, None)
                self.releasing.pop(name, None)
                if ref is not None:
                    with contextlib.suppress(SQLAlchemyError, OSError):
                        await store.release(self.engine, ref.lease)
                    log.info("lease_released", environment=name, holder=self.holder)

        self.releasing[name] = asyncio.create_task(hand_over(), name=f"release:{name}")

    async def stop(self) -> None:
        """After the groups stopped: free every lease at once and leave the members."""
        self.draining = True
        if self.releasing:
            await asyncio.gather(*self.releasing.values(), return_exceptions=True)
        for name, ref in list(self.held.items()):
            with contextlib.suppress(SQLAlchemyError, OSError):
                await store.release(self.engine, ref.lease)
            del self.held[name]
        with contextlib.suppress(SQLAlchemyError, OSError):
            await store.leave(self.engine, self.holder)


@contextlib.asynccontextmanager
async def command_leases(
    engine: AsyncEngine, names: Sequence[str], ttl: float, *, command: str
) -> AsyncIterator[dict[str, AsyncEngine]]:
    """The leases of a one-off command's environments, renewed until the block ends; yields
    the fenced engine of each. Refused (ConfigError, exit 2) when another process holds one."""
    steal = single_writer_store(engine)
    holder = f"{new_holder()}:{command}"
    await store.ensure_rows(engine, names)
    dead = (
        set()
        if steal
        else abandoned_holders(await store.owners(engine), await store.current_time(engine))
    )
    taken = await store.acquire(engine, holder, names, len(names), ttl, steal=steal, abandoned=dead)
    refs = {lease.resource: LeaseRef(lease) for lease in taken}
    try:
        missing = [name for name in names if name not in refs]
        if missing:
            rows = await store.owners(engine)
            busy = rows.get(missing[0])
            raise ConfigError(_in_use(missing[0], busy))
        renewing = asyncio.create_task(_keep_renewing(engine, refs, ttl))
        try:
            yield {name: FencedEngine(engine, ref) for name, ref in refs.items()}
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
    finally:
        for ref in refs.values():
            with contextlib.suppress(SQLAlchemyError, OSError):
                await store.release(engine, ref.lease)


def _in_use(name: str, lease: Lease | None) -> str:
    if lease is None:
        return f"environment {name}: its lease could not be taken; try again"
    until = lease.expires_at.strftime("%Y-%m-%d %H:%M:%SZ")
    return (
        f"environment {name} is in use by another dvmirror process ({lease.holder}, lease "
        f"until {until}); stop it first, or run this when it has let the environment go"
    )


async def _keep_renewing(engine: AsyncEngine, refs: dict[str, LeaseRef], ttl: float) -> None:
    while refs:
        await asyncio.sleep(ttl / 3)
        try:
            kept, lost = await store.renew(engine, [ref.lease for ref in refs.values()], ttl)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("lease_renew_failed", error=str(exc).splitlines()[0])
            continue
        for lease in kept:
            refs[lease.resource].lease = lease
        for lease in lost:
            del refs[lease.resource]  # its writes fail the fence from now on
            log.warning("lease_lost", environment=lease.resource, fence=lease.token)
