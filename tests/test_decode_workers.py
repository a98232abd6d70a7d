"""The decode worker process: same pages, same refusals, same errors as decoding in the caller."""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import psutil
import pytest

from sync.bench.pipeline import bench_pages, bench_schema
from sync.config.loading import load_config
from sync.errors import (
    AuthError,
    CredentialError,
    DvmirrorError,
    HostileResponseError,
    NetworkError,
    ThrottledError,
)
from sync.mirror.decode_workers import OFF_PROCESS_BYTES, DecodePool
from sync.mirror.fetch import decode_rows
from sync.mirror.page import NotJsonError, decode_page
from sync.mirror.rowshape import RowShaper
from sync.runtime.wiring import Wiring
from sync.store.connect import create_engine

SHAPER = RowShaper(bench_schema())
PAGE = bench_pages(300)[0]  # 300 account rows, well above OFF_PROCESS_BYTES


@pytest.fixture(scope="module")
def pool() -> Iterator[DecodePool]:
    started = DecodePool()
    yield started
    started.shutdown()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def hostile_page() -> bytes:
    document = orjson.loads(PAGE)
    document["value"][150]["numberofemployees"] = "many"
    return orjson.dumps(document)


def test_the_page_is_large_enough_for_the_worker() -> None:
    """The test page crosses the threshold, so the tests below exercise the worker."""
    assert len(PAGE) >= OFF_PROCESS_BYTES


def test_errors_survive_pickling_with_class_message_and_context() -> None:
    """Every DvmirrorError comes back from pickling as the same class, message and context."""
    errors: list[DvmirrorError] = [
        HostileResponseError("table account: refused", table="account"),
        NotJsonError("table account: not JSON", table="account"),
        ThrottledError("slow down", retry_after=2.5, environment="prod", status=429),
        CredentialError("bad secret", fix="rotate it", tenant="contoso"),
        NetworkError("cut", retry_after=None, environment="prod"),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.args == error.args
        assert vars(copy) == vars(error)
    throttled = pickle.loads(pickle.dumps(errors[2]))
    assert isinstance(throttled, ThrottledError)
    assert throttled.retry_after == 2.5
    credential = pickle.loads(pickle.dumps(errors[3]))
    assert isinstance(credential, AuthError)
    assert credential.fix == "rotate it"


def test_a_large_page_decodes_in_the_worker_exactly_as_in_the_caller(pool: DecodePool) -> None:
    """The worker (another process) returns the same tuples, rows, links and exact decimals."""
    page = pool.decode(PAGE, SHAPER)
    workers = pool.worker_pids()
    assert workers
    assert os.getpid() not in workers
    assert page == decode_page(PAGE, SHAPER)
    revenues = [row[SHAPER.keys.index("revenue")] for row in page.tuples]
    assert all(value is None or isinstance(value, str) for value in revenues)


def test_row_objects_come_back_only_when_the_shaper_keeps_them(pool: DecodePool) -> None:
    """Row pages send back tuples only; a shaper with keep_rows (key pages) also gets the rows."""
    assert pool.decode(PAGE, SHAPER).rows == []
    keeping = RowShaper(bench_schema(), keep_rows=True)
    page = pool.decode(PAGE, keeping)
    assert page == decode_page(PAGE, keeping)
    assert [row["accountid"] for row in page.rows] == [t[0] for t in page.tuples]
    assert len(page.rows) == 300


def test_the_worker_loads_only_the_decoding_modules(pool: DecodePool) -> None:
    """The worker never imports the parent's heavy libraries (its memory stays small)."""
    pool.start()
    (worker,) = pool.worker_pids()
    mapped = {m.path for m in psutil.Process(worker).memory_maps()}
    parent = {m.path for m in psutil.Process().memory_maps()}
    heavy = ("pydantic_core", "aiohttp", "sqlalchemy", "cryptography", "_sqlite3")
    assert any(any(name in path for name in heavy) for path in parent)
    assert not [path for path in mapped if any(name in path for name in heavy)]
    assert any("orjson" in path for path in mapped)


def test_a_small_page_stays_in_the_caller() -> None:
    """Pages under the threshold never start a worker."""
    small = DecodePool(min_bytes=len(PAGE) + 1)
    try:
        assert small.decode(PAGE, SHAPER) == decode_page(PAGE, SHAPER)
        assert not small.running
    finally:
        small.shutdown()


def test_a_hostile_page_is_refused_by_the_worker_as_by_the_caller(pool: DecodePool) -> None:
    """A wrong type raises the same HostileResponseError (class, message, table), no cause."""
    body = hostile_page()
    with pytest.raises(HostileResponseError) as in_caller:
        decode_page(body, SHAPER)
    with pytest.raises(HostileResponseError) as in_worker:
        pool.decode(body, SHAPER)
    assert pool.worker_pids()
    assert type(in_worker.value) is type(in_caller.value)
    assert in_worker.value.message == in_caller.value.message
    assert "numberofemployees" in in_worker.value.message
    assert in_worker.value.table == "account"
    assert in_worker.value.__cause__ is None


def test_a_body_that_is_not_json_is_retried_not_refused() -> None:
    """Through the client's decoder a cut body from the worker is None (retried), not hostile."""
    pool = DecodePool()
    try:
        with pytest.raises(NotJsonError):
            pool.decode(PAGE[:-10], SHAPER)
        assert pool.running
        assert decode_rows(pool, SHAPER, PAGE[:-10]) is None
        assert decode_rows(pool, SHAPER, PAGE) == decode_page(PAGE, SHAPER)
    finally:
        pool.shutdown()
    assert not pool.running


def test_a_lost_worker_costs_no_page_and_is_replaced() -> None:
    """A killed worker: the page is decoded in the caller, the next page starts a new worker."""
    pool = DecodePool()
    try:
        pool.start()
        (first,) = pool.worker_pids()
        os.kill(first, signal.SIGKILL)
        psutil.Process(first).wait(10)
        assert pool.decode(PAGE, SHAPER) == decode_page(PAGE, SHAPER)
        assert pool.decode(PAGE, SHAPER) == decode_page(PAGE, SHAPER)
        (second,) = pool.worker_pids()
        assert second != first
    finally:
        pool.shutdown()


def test_the_worker_ignores_sigint_and_stops_on_shutdown() -> None:
    """Ctrl-C reaches the process group, not the worker's job; shutdown ends it, noting its peak."""
    pool = DecodePool()
    pool.start()
    (worker,) = pool.worker_pids()
    os.kill(worker, signal.SIGINT)
    assert pool.decode(PAGE, SHAPER) == decode_page(PAGE, SHAPER)
    assert pool.worker_pids() == [worker]
    pool.shutdown()
    assert gone(worker)
    assert 10 < pool.worker_peak_mb < psutil.Process().memory_info().rss / 2**20


PARENT = """
import os, sys
from sync.mirror.decode_workers import DecodePool
pool = DecodePool(2)
pool.start()
print(*pool.worker_pids(), flush=True)
os._exit(0)  # no shutdown, no atexit: as if the parent were killed
"""


def test_the_worker_exits_when_its_parent_dies() -> None:
    """A worker whose parent vanished without shutting it down exits by itself."""
    parent = subprocess.run(
        [sys.executable, "-c", PARENT],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    workers = [int(pid) for pid in parent.stdout.split()]
    assert len(workers) == 2
    deadline = time.monotonic() + 30
    while not all(map(gone, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(map(gone, workers))


def test_no_workers_decodes_every_page_in_the_caller() -> None:
    """`decode_workers = 0`: no process is ever started, pages decode in the caller."""
    pool = DecodePool(0)
    assert pool.decode(PAGE, SHAPER) == decode_page(PAGE, SHAPER)
    pool.start()
    assert not pool.running
    assert pool.worker_pids() == []
    pool.shutdown()


def test_pages_go_to_idle_workers_and_overflow_to_the_caller() -> None:
    """Two workers take two pages at once; a third page, all workers busy, decodes in the caller.

    Workers start only as pages overlap: one page at a time keeps a single worker."""
    pool = DecodePool(2)
    try:
        assert pool.decode(PAGE, SHAPER) == decode_page(PAGE, SHAPER)
        assert pool.decode(PAGE, SHAPER) == decode_page(PAGE, SHAPER)
        assert len(pool.worker_pids()) == 1  # sequential pages: the idle first worker each time
        first = pool._slots[0]
        first.busy.acquire()  # the first worker is busy with another page
        try:
            assert pool.decode(PAGE, SHAPER) == decode_page(PAGE, SHAPER)
            assert len(pool.worker_pids()) == 2  # went to the second worker
            second = pool._slots[1]
            second.busy.acquire()  # now every worker is busy
            try:
                pids = pool.worker_pids()
                assert pool.decode(PAGE, SHAPER) == decode_page(PAGE, SHAPER)  # in the caller
                assert pool.worker_pids() == pids
            finally:
                second.busy.release()
        finally:
            first.busy.release()
    finally:
        pool.shutdown()
    assert not pool.running
    assert pool.worker_peak_mb > 0


def test_concurrent_pages_are_decoded_by_several_workers() -> None:
    """Pages from several threads at once land on several worker processes, all exact."""
    pool = DecodePool(3)
    expected = decode_page(PAGE, SHAPER)
    seen: set[int] = set()
    original = DecodePool._ask

    def ask(worker: subprocess.Popen[bytes], request: object) -> tuple[bool, object]:
        seen.add(worker.pid)
        time.sleep(0.2)  # hold the worker so the other threads find it busy
        return original(worker, request)

    try:
        pool.start()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(DecodePool, "_ask", staticmethod(ask))
            with ThreadPoolExecutor(3) as threads:
                pages = list(threads.map(lambda _: pool.decode(PAGE, SHAPER), range(6)))
        assert all(page == expected for page in pages)
        assert len(seen) >= 2
        assert seen <= set(pool.worker_pids())
    finally:
        pool.shutdown()


def test_a_collected_pool_stops_its_workers() -> None:
    """The safety net: a pool dropped without shutdown stops its workers (also at exit)."""
    pool = DecodePool(2)
    pool.start()
    workers = pool.worker_pids()
    assert len(workers) == 2
    del pool
    gc.collect()
    deadline = time.monotonic() + 30
    while not all(map(gone, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(map(gone, workers))


CONFIG = """
[app]
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = { env = "DVMIRROR_TEST_SECRET" }
[store]
url = "sqlite+aiosqlite:///mirror.db"
[daemon]
decode_workers = 2
[[tenants]]
name = "contoso"
tenant_id = "contoso.onmicrosoft.com"
[[tenants.environments]]
name = "contoso_prod"
url = "https://contoso.crm.dynamics.com"
tables = ["account"]
"""


def test_the_wiring_owns_a_pool_sized_by_the_configuration(tmp_path: Path) -> None:
    """`daemon.decode_workers` sizes the Wiring's pool; its clients share it; close() stops it."""
    path = tmp_path / "dvmirror.toml"
    path.write_text(CONFIG)
    config = load_config(path, {"DVMIRROR_TEST_SECRET": "not-a-real-secret"})

    async def scenario() -> None:
        store = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'mirror.db'}")
        wiring = Wiring(config, store)
        try:
            assert wiring.decode_pool.workers == 2
            tenant, environment = next(iter(config.environments()))
            governor = wiring.governor(tenant, environment)
            async with wiring.client(tenant, environment, governor) as client:
                assert client.decode_pool is wiring.decode_pool
            wiring.decode_pool.start()
            workers = wiring.decode_pool.worker_pids()
            assert len(workers) == 2
        finally:
            await wiring.close()
            await store.dispose()
        assert not wiring.decode_pool.running
        assert all(map(gone, workers))

    asyncio.run(scenario())


def test_no_worker_process_on_a_single_cpu() -> None:
    """A worker helps only beside the writer, on another CPU: on one CPU it is never started."""
    from sync.mirror.decode_workers import effective_workers

    assert effective_workers(1, 1) == 0
    assert effective_workers(3, 1) == 0
    assert effective_workers(1, 2) == 1
    assert effective_workers(0, 8) == 0


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_usable_cpus_follow_the_affinity() -> None:
    """`taskset -c 0 dvmirror …` (or a one-CPU cpuset) counts as one CPU, whatever the machine."""
    from sync.mirror.decode_workers import usable_cpus

    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert usable_cpus() == 1
    finally:
        os.sched_setaffinity(0, before)
    assert usable_cpus() == len(before)
