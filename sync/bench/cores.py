"""Which CPUs the bench gives the server and the client side, so that both sides are equal.

The plain reader does almost nothing locally, so on a small machine the simulator gets every
core while it runs, but has to share them with dvmirror's command and decode worker otherwise:
the comparison would measure the simulator's share of the machine, not dvmirror. So the bench
starts the simulator on one CPU (its threads inherit it) and runs the client side (the bench
process, which hosts the plain reader, and the dvmirror children, which inherit its affinity,
decode worker included) on the others, for both sides alike. With a single CPU (or no
sched_setaffinity) nothing is pinned.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Split:
    """The server's CPUs and the client side's."""

    server: frozenset[int]
    client: frozenset[int]

    def describe(self) -> str:
        return (
            f"simulator pinned to CPU {_cpus(self.server)}, plain reader and dvmirror "
            f"(command and decode worker) to CPU {_cpus(self.client)}"
        )


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def split_cpus(available: set[int] | frozenset[int]) -> Split | None:
    """The last CPU for the server, the rest for the client; None below two CPUs."""
    if len(available) < 2:
        return None
    ordered = sorted(available)
    return Split(frozenset(ordered[-1:]), frozenset(ordered[:-1]))


def plan() -> Split | None:
    """The split of this process's CPUs; None when there is nothing to pin."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    return split_cpus(os.sched_getaffinity(0))


@contextmanager
def running_on(cpus: frozenset[int] | None) -> Iterator[None]:
    """This thread on `cpus` (None: unchanged) while inside; what it starts meanwhile (child
    processes, threads) inherits them and keeps them. Restores the affinity on exit."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
