"""Decode large row pages in one worker process, so that decoding runs beside the SQLite write.

Why a process, not a thread: sqlite3's `executemany` takes the GIL back once per row, and a
thread decoding the next page keeps it busy, so the two convoy and their costs add up instead of
overlapping. A worker process has its own GIL and runs on the second core; the parent only
unpickles the typed tuples (row dicts are not sent back unless the shaper keeps them).

The worker is a plain `python -c` child (not multiprocessing): it imports this module and the
decoding modules only (orjson, sync.mirror.page and what it needs), never the parent's
`__main__`, so it stays small. Requests and answers are pickles on its stdin and stdout. It
starts on the first large page and stops on `shutdown_decode_pool()` (commands, daemon and
benchmark on exit; `atexit` as the last resort). It ignores SIGINT and SIGHUP (Ctrl-C reaches
the whole process group: the parent decides) and exits when its stdin closes, which includes the
parent's death. Should the worker die (SIGTERM to the whole service, out of memory), the page in
flight is decoded in the caller and the next large page starts a new worker.

Pages under `OFF_PROCESS_BYTES` are decoded in the caller: shipping them costs more than it
saves (the same threshold under which the client decodes on the event loop); so is a page that
arrives while the worker is busy with another table's page. The worker answers with the
`DecodedPage` or a `sync.errors` exception (they pickle with their class, message and context),
so hostile pages fail exactly as they do in the caller; any other failure is retried in the caller.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import signal
import subprocess
import sys
import threading
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


class DecodePool:
    """Decodes pages of at least `min_bytes` in one lazily started worker process."""

    def __init__(self, *, min_bytes: int = OFF_PROCESS_BYTES) -> None:
        self.min_bytes = min_bytes
        self._worker: subprocess.Popen[bytes] | None = None
        self._busy = threading.Lock()  # held while a page is in the worker, and to start/stop it
        self.worker_peak_mb = 0.0  # the largest peak RSS of a stopped worker (Linux; else 0)

    @property
    def running(self) -> bool:
        return self._worker is not None

    def worker_pids(self) -> list[int]:
        """The worker's process id (empty before the first large page)."""
        worker = self._worker
        return [] if worker is None else [worker.pid]

    def start(self) -> None:
        """Start the worker now (it is otherwise started by the first large page)."""
        with self._busy:
            self._started()

    def decode(self, body: bytes, shaper: RowShaper) -> DecodedPage:
        """`decode_page(body, shaper)`, in the worker when the page is large. Blocks the caller."""
        if len(body) < self.min_bytes or not self._busy.acquire(blocking=False):
            return decode_page(body, shaper)
        try:
            try:
                worker = self._started()
                ok, answer = self._ask(worker, (body, shaper.schema, shaper.keep_rows))
            except (OSError, EOFError, pickle.UnpicklingError):
                self._discard()
                return decode_page(body, shaper)
        finally:
            self._busy.release()
        if ok:
            return answer  # type: ignore[no-any-return]
        if isinstance(answer, DvmirrorError):
            raise answer
        return decode_page(body, shaper)  # not ours to explain: fails here as it did there

    def shutdown(self) -> None:
        """Stop the worker (waits for a page in flight); the next large page starts a new one."""
        with self._busy:
            worker, self._worker = self._worker, None
        if worker is not None:
            self.worker_peak_mb = max(self.worker_peak_mb, peak_rss_mb(worker.pid))
            _stop(worker)

    def _started(self) -> subprocess.Popen[bytes]:
        if self._worker is None:
            self._worker = subprocess.Popen(  # noqa: S603 - our interpreter, our constant code
                [sys.executable, "-c", _ENTRY], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            assert self._worker.stdout is not None
            pickle.load(self._worker.stdout)  # noqa: S301 - ready: its signals are set up
        return self._worker

    @staticmethod
    def _ask(worker: subprocess.Popen[bytes], request: object) -> tuple[bool, Any]:
        assert worker.stdin is not None
        assert worker.stdout is not None
        pickle.dump(request, worker.stdin, protocol=_PROTOCOL)
        worker.stdin.flush()
        answer: tuple[bool, Any] = pickle.load(worker.stdout)  # noqa: S301 - our own worker
        return answer

    def _discard(self) -> None:
        from sync.logs import get_logger  # only on this rare path: the worker stays light

        worker, self._worker = self._worker, None
        if worker is not None:
            get_logger("dvmirror.decode_pool").warning("decode_worker_lost", pid=worker.pid)
            _stop(worker, patience=0)


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


DEFAULT_POOL = DecodePool()


def decode_pooled(body: bytes, shaper: RowShaper) -> DecodedPage:
    """Decode one page with the process's pool (the one decode path of daemon, commands, bench)."""
    return DEFAULT_POOL.decode(body, shaper)


def shutdown_decode_pool() -> None:
    """Stop the process's decode worker, if it runs (idempotent)."""
    DEFAULT_POOL.shutdown()


atexit.register(shutdown_decode_pool)
