"""Repeated rounds of one bench part, read together. Pure.

On a shared machine a single run says little: the plain reader's own time varies by a quarter
from run to run. `dvmirror bench --rounds N` therefore measures each part N times, the reader
and dvmirror one after the other in every round, each round with fresh counters and a fresh
store, and reads the rounds together: the table shows the median round (by dvmirror's ratio
from the first request, the ratio that times both sides alike), and one line per dvmirror side
lists every round's ratios and their medians.

The order alternates (`reader_first`): odd rounds start with the plain reader, even rounds with
dvmirror. One simulator process serves every round, and whatever drifts over a run (its heap,
the host's other load) would otherwise always fall on the side that goes second. (In one
4-round run on a 2-core machine the second side of every round was 10-20% slower, whichever it
was; other runs showed no such pattern, which is the point: one cannot tell in advance.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import median
from typing import Protocol


class Measured(Protocol):
    """What a round's side offers for the ratios (sync.bench.backfill.Side)."""

    @property
    def name(self) -> str: ...

    @property
    def rate(self) -> float: ...

    @property
    def active_rate(self) -> float: ...


@dataclass(frozen=True)
class Round:
    """One round of a part: the reference side first, then dvmirror's sides."""

    sides: Sequence[Measured]

    @property
    def reference(self) -> Measured:
        return self.sides[0]

    def ratio(self, index: int, rate: Callable[[Measured], float]) -> float | None:
        """Side `index`'s rate over the reference's, or None when the reference read nothing."""
        reference = rate(self.reference)
        return rate(self.sides[index]) / reference if reference else None


def median_round(rounds: Sequence[Round]) -> int:
    """The index of the round whose first dvmirror side has the median ratio from the first
    request (the lower middle one for an even count); 0 for a single round."""
    if len(rounds) < 2:
        return 0
    keyed = sorted(
        range(len(rounds)),
        key=lambda i: rounds[i].ratio(1, lambda s: s.active_rate) or 0.0,
    )
    return keyed[(len(keyed) - 1) // 2]


def reader_first(number: int) -> bool:
    """Whether round `number` (from 1) starts with the plain reader: odd rounds do."""
    return number % 2 == 1


def summary_lines(title: str, rounds: Sequence[Round]) -> list[str]:
    """Per dvmirror side: every round's ratios (whole run, from the first request), medians."""
    if len(rounds) < 2:
        return []
    lines = []
    for index in range(1, len(rounds[0].sides)):
        whole = [r.ratio(index, lambda s: s.rate) for r in rounds]
        active = [r.ratio(index, lambda s: s.active_rate) for r in rounds]
        lines.append(
            f"{title}, {rounds[0].sides[index].name}, {len(rounds)} rounds: "
            f"ratio {_listed(whole)}; from the first request {_listed(active)}"
        )
    return lines


def _listed(ratios: Sequence[float | None]) -> str:
    known = [r for r in ratios if r is not None]
    shown = " ".join("n/a" if r is None else f"{r:.2f}" for r in ratios)
    if not known:
        return shown
    return f"{shown} (median {median(known):.2f}, range {min(known):.2f}–{max(known):.2f})"
