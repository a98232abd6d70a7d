"""Run the real `dvmirror` command line as a child process and sample its memory.

Peak RSS is the kernel's high-water mark (`VmHWM` in /proc/PID/status) of the process and of
each of its descendants (the decode worker), sampled every `SAMPLE_SECONDS` while it runs: the
mark only grows, so the last sample is at most that late. Not `getrusage`'s ru_maxrss, which
counts the spawning process's memory at the spawn (see sync.mirror.decode_workers.peak_rss_mb).
The process's and its descendants' peaks need not coincide; their sum is an upper bound of the
tree's peak. On a system without /proc the peaks are None.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sync.mirror.decode_workers import peak_rss_mb

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows: no CPU seconds there
    resource = None  # type: ignore[assignment]
from sync.simulator.process import child_environment

SAMPLE_SECONDS = 0.2
PROC = Path("/proc")


@dataclass(frozen=True)
class ChildRun:
    """How the command ended, how long it took, and its memory peaks in MB."""

    returncode: int
    seconds: float
    own_mb: float | None
    descendants_mb: float | None
    log: Path
    cpu_seconds: float | None = None  # user + system of the command and its decode worker

    @property
    def total_mb(self) -> float | None:
        if self.own_mb is None or self.descendants_mb is None:
            return None
        return self.own_mb + self.descendants_mb

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


def _parents() -> dict[int, int]:
    """pid → parent pid of every process (from /proc/PID/stat)."""
    parents: dict[int, int] = {}
    for entry in os.listdir(PROC):
        if not entry.isdigit():
            continue
        try:
            stat = (PROC / entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1].isdigit():
            parents[int(entry)] = int(fields[1])
    return parents


def descendants(root: int) -> set[int]:
    """Every process below `root`."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


@dataclass
class PeakSampler:
    """The highest VmHWM seen for a process and for each of its descendants."""

    root: int
    peaks: dict[int, float] = field(default_factory=dict)

    def sample(self) -> None:
        for pid in (self.root, *descendants(self.root)):
            mb = peak_rss_mb(pid)
            if mb:
                self.peaks[pid] = max(self.peaks.get(pid, 0.0), mb)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_SECONDS)

    @property
    def own_mb(self) -> float | None:
        return self.peaks.get(self.root)

    @property
    def descendants_mb(self) -> float | None:
        if self.root not in self.peaks:
            return None
        return sum(mb for pid, mb in self.peaks.items() if pid != self.root)


async def run_dvmirror(args: Sequence[str], *, log: Path, max_seconds: float) -> ChildRun:
    """`python -m sync ARGS`, its output into `log`; the wall time includes its start-up."""
    env = {k: v for k, v in child_environment().items() if not k.startswith("DVMIRROR_")}
    stop = asyncio.Event()
    # The CPU of the children waited for meanwhile: this command (and, through it, its decode
    # worker); the bench waits for no other child while one runs.
    used_before = None if resource is None else resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("wb") as output:
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sync", *args, stdout=output, stderr=output, env=env
        )
    sampler = PeakSampler(process.pid)
    sampling = asyncio.create_task(sampler.run(stop)) if PROC.is_dir() else None
    try:
        returncode = await asyncio.wait_for(process.wait(), max_seconds)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    finally:
        seconds = time.monotonic() - started
        stop.set()
        if sampling is not None:
            await sampling
    cpu = None
    if resource is not None and used_before is not None:
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (used.ru_utime - used_before.ru_utime) + (used.ru_stime - used_before.ru_stime)
    return ChildRun(returncode, seconds, sampler.own_mb, sampler.descendants_mb, log, cpu)
