"""LeaseKeeper gives back a lease whose environment stopped at a write that found the lease
gone (sync.runtime.leases): released at the next tick, then taken up again, so that the
environment runs again instead of being held by a daemon that no longer works on it. A real
SQLite store, migrated; the keeper's callbacks are the daemon's seam."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sync.runtime.leases import LeaseKeeper
from sync.store import leases as store_leases
from sync.store.connect import create_engine
from sync.store.migrate import upgrade


def test_a_fenced_out_environment_is_released_and_taken_up_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'mirror.db'}")
        await upgrade(engine)
        started: list[str] = []
        released: list[str] = []
        fenced: set[str] = set()

        async def acquired(name: str, _store: object) -> None:
            started.append(name)
            fenced.discard(name)  # a new group: it runs

        async def release(name: str) -> None:
            released.append(name)

        keeper = LeaseKeeper(
            engine,
            ["env_a", "env_b"],
            30.0,
            acquired=acquired,  # type: ignore[arg-type]
            release=release,
            fenced_out=lambda name: name in fenced,
        )
        try:
            await keeper.start()  # takes both
            assert sorted(started) == ["env_a", "env_b"]
            first = (await store_leases.owners(engine))["env_a"].token
            await keeper.tick()  # nothing fenced out: nothing given back
            assert released == []

            fenced.add("env_a")  # env_a's group stopped at a write that found its lease gone
            await keeper.tick()
            await asyncio.gather(*keeper.releasing.values())
            assert released == ["env_a"]  # stopped (with grace) and released ...
            await keeper.tick()
            assert started.count("env_a") == 2  # ... then taken up again: a new group
            assert keeper.owned == ["env_a", "env_b"]
            again = (await store_leases.owners(engine))["env_a"]
            assert again.holder == keeper.holder and again.token == first + 1  # a new fence
            await keeper.tick()
            assert released == ["env_a"] and started.count("env_a") == 2  # running: kept
        finally:
            await keeper.stop()
            await engine.dispose()

    asyncio.run(scenario())
