"""Decode large row pages in worker processes, so that decoding runs beside the SQLite write.

Why processes, not threads: sqlite3's `executemany` takes the GIL back once per row, and a
thread decoding the next page keeps it busy, so the two convoy and their costs add up instead of
overlapping. A worker process has its own GIL and runs on another core; the parent only
unpickles the typed tuples (row dicts are not sent back unless the shaper keeps them).

A `DecodePool` has `workers` worker slots (`daemon.decode_workers`, default 1; 0 decodes every
page in the caller, and so does a process allowed on one CPU only: `effective_workers`). The
commands and the daemon own one through their `Wiring`, which hands it
to the clients and shuts it down on close; there is no process-wide pool. A large page goes to
the first idle worker (started on first use, so a pool only grows as far as pages overlap); when
every worker is busy, the caller decodes it itself, as it does pages under `OFF_PROCESS_BYTES`
(shipping those costs more than it saves; the same threshold under which the client decodes on
the event loop). Nothing queues: the pages in flight are those the callers hold.

A worker is a plain `python -c` child (not multiprocessing): it imports this module and the
decoding modules only (orjson, sync.mirror.page and what it needs), never the parent's
`__main__`, so it stays small. Requests and answers are pickles on its stdin and stdout. It stops
on `DecodePool.shutdown()` (or, as the last resort, when its pool is collected or the interpreter
exits: a `weakref.finalize` per pool). It ignores SIGINT and SIGHUP (Ctrl-C reaches the whole
process group: the parent decides) and exits when its stdin closes, which includes the parent's
death. Should a worker die (SIGTERM to the whole service, out of memory), the page in flight is
decoded in the caller and the next large page starts a new worker in its slot.

The worker answers with the `DecodedPage` or a `sync.errors` exception (they pickle with their
class, message and context), so hostile pages fail exactly as they do in the caller; any other
failure is retried in the caller.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import threading
import weakref
from typing import IO, Any

from sync.errors import DvmirrorError
from sync.mirror.page import DecodedPage, decode_page
from sync.mirror.rowshape import RowShaper
from sync.store.layout import TableSchema

OFF_PROCESS_BYTES = 64 * 1024
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # holds the sync package
_ENTRY = (
    f"import sys; sys.path.insert(0, {_ROOT!r}); "
    "from sync.mirror.decode_workers import serve; serve()"
)


class _Slot:
    """One worker: its process (None until the first page it takes) and its busy lock."""

    __slots__ = ("busy", "process")

    def __init__(self) -> None:
        self.busy = threading.Lock()  # held while a page is in the worker, and to start/stop it
        self.process: subprocess.Popen[bytes] | None = None

    def started(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            self.process = subprocess.Popen(  # noqa: S603 - our interpreter, our constant code
                [sys.executable, "-c", _ENTRY], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            assert self.process.stdout is not None
            pickle.load(self.process.stdout)  # noqa: S301 - ready: its signals are set up
        return self.process

    def discard(self) -> None:
        from sync.logs import get_logger  # only on this rare path: the worker stays light

        process, self.process = self.process, None
        if process is not None:
            get_logger("dvmirror.decode_pool").warning("decode_worker_lost", pid=process.pid)
            _stop(process, patience=0)

    def stop(self) -> float:
        """Stop the worker (waits for its page in flight); its peak RSS in MB (0 if none)."""
        with self.busy:
            process, self.process = self.process, None
        if process is None:
            return 0.0
        peak = peak_rss_mb(process.pid)
        _stop(process)
        return peak


def _stop_slots(slots: list[_Slot]) -> None:
    for slot in slots:
        slot.stop()


class DecodePool:
    """Decodes pages of at least `min_bytes` in up to `workers` lazily started processes."""

    def __init__(self, workers: int = 1, *, min_bytes: int = OFF_PROCESS_BYTES) -> None:
        if workers < 0:
            raise ValueError(f"decode workers must be 0 or more, not {workers}")
        self.workers = workers
        self.min_bytes = min_bytes
        self._slots = [_Slot() for _ in range(workers)]
        self.worker_peak_mb = 0.0  # the largest peak RSS of a stopped worker (Linux; else 0)
        # The safety net: workers stop when the pool is collected or at interpreter exit.
        self._finalizer = weakref.finalize(self, _stop_slots, self._slots)

    @property
    def running(self) -> bool:
        return any(slot.process is not None for slot in self._slots)

    def worker_pids(self) -> list[int]:
        """The running workers' process ids (empty before the first large page)."""
        return [p.pid for p in (slot.process for slot in self._slots) if p is not None]

    def start(self) -> None:
        """Start every worker now (they are otherwise started by the large pages)."""
        for slot in self._slots:
            with slot.busy:
                slot.started()

    def decode(self, body: bytes, shaper: RowShaper) -> DecodedPage:
        """`decode_page(body, shaper)`, in an idle worker when the page is large. Blocks the
        caller; decodes in the caller when the page is small or every worker is busy."""
        if len(body) < self.min_bytes:
            return decode_page(body, shaper)
        for slot in self._slots:
            if slot.busy.acquire(blocking=False):
                break
        else:
            return decode_page(body, shaper)
        try:
            try:
                worker = slot.started()
                ok, answer = self._ask(worker, (body, shaper.schema, shaper.keep_rows))
            except (OSError, EOFError, pickle.UnpicklingError):
                slot.discard()
                return decode_page(body, shaper)
        finally:
            slot.busy.release()
        if ok:
            return answer  # type: ignore[no-any-return]
        if isinstance(answer, DvmirrorError):
            raise answer
        return decode_page(body, shaper)  # not ours to explain: fails here as it did there

    def shutdown(self) -> None:
        """Stop the workers (waits for pages in flight); later large pages start new ones."""
        peaks = [slot.stop() for slot in self._slots]
        if any(peaks):
            from sync.logs import get_logger  # the worker never gets here: it stays light

            self.worker_peak_mb = max(self.worker_peak_mb, *peaks)
            get_logger("dvmirror.decode_pool").debug(
                "decode_pool_stopped",
                workers=self.workers,
                worker_peak_mb=round(self.worker_peak_mb, 1),
            )

    @staticmethod
    def _ask(worker: subprocess.Popen[bytes], request: object) -> tuple[bool, Any]:
        assert worker.stdin is not None
        assert worker.stdout is not None
        pickle.dump(request, worker.stdin, protocol=_PROTOCOL)
        worker.stdin.flush()
        answer: tuple[bool, Any] = pickle.load(worker.stdout)  # noqa: S301 - our own worker
        return answer


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def effective_workers(configured: int, cpus: int) -> int:
    """Worker processes worth starting: none on a single CPU, where a worker cannot run beside
    the writer and shipping each page to it and back only adds the pickling to that one CPU."""
    return configured if cpus >= 2 else 0


def peak_rss_mb(pid: int) -> float:
    """The kernel's high-water mark of a process's own memory (Linux; else 0).

    Not getrusage's ru_maxrss: a spawned process inherits there its parent's memory at the
    moment of the spawn (the vfork before exec), so a small worker of a large parent looks large.
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def _stop(worker: subprocess.Popen[bytes], *, patience: float = 10) -> None:
    for stream in (worker.stdin, worker.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()  # the worker reads end of file and exits
    try:
        worker.wait(patience)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


_SHAPERS: dict[tuple[TableSchema, bool], RowShaper] = {}


def decode_in_worker(body: bytes, schema: TableSchema, keep_rows: bool) -> DecodedPage:
    """Runs in the worker: decode with the schema's cached RowShaper."""
    shaper = _SHAPERS.get((schema, keep_rows))
    if shaper is None:
        if len(_SHAPERS) >= 256:  # schemas change rarely; never grow without bound
            _SHAPERS.clear()
        shaper = _SHAPERS[schema, keep_rows] = RowShaper(schema, keep_rows=keep_rows)
    return decode_page(body, shaper)


def serve(requests: IO[bytes] | None = None, answers: IO[bytes] | None = None) -> None:
    """The worker's loop: one pickled request in, one pickled (ok, page or error) out."""
    for number in (signal.SIGINT, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)
    requests = requests or sys.stdin.buffer
    answers = answers or sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the answers
    pickle.dump(os.getpid(), answers, protocol=_PROTOCOL)
    answers.flush()
    while True:
        try:
            body, schema, keep_rows = pickle.load(requests)  # noqa: S301 - from our parent
        except EOFError:
            return
        answer: tuple[bool, object]
        try:
            answer = (True, decode_in_worker(body, schema, keep_rows))
        except DvmirrorError as exc:
            exc.__traceback__ = None
            answer = (False, exc)
        except Exception:  # noqa: BLE001 - the caller decodes again and raises it itself
            answer = (False, None)
        pickle.dump(answer, answers, protocol=_PROTOCOL)
        answers.flush()
