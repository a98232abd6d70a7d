"""Reading repeated bench rounds together (sync.bench.rounds): plain values, no simulator."""

from __future__ import annotations

from dataclasses import dataclass

from sync.bench.rounds import Round, median_round, reader_first, summary_lines


@dataclass(frozen=True)
class Figures:
    name: str
    rate: float
    active_rate: float


def round_of(reader: float, mirror: float, *, whole: float | None = None) -> Round:
    """A round whose reader reads `reader` rows/s and dvmirror `mirror` from its first request
    (`whole` for its whole command; the same by default)."""
    return Round(
        [
            Figures("plain reader", reader, reader),
            Figures("dvmirror backfill → SQLite", whole or mirror, mirror),
        ]
    )


def test_the_median_round_is_chosen_by_the_ratio_from_the_first_request() -> None:
    # Ratios from the first request 0.90, 1.10, 1.00: the median is the third round, even though
    # its whole-run ratio is the lowest and its reader the slowest.
    rounds = [round_of(100, 90, whole=85), round_of(100, 110), round_of(80, 80, whole=60)]
    assert median_round(rounds) == 2
    assert median_round(rounds[:1]) == 0


def test_an_even_count_shows_the_lower_middle_round() -> None:
    rounds = [round_of(100, 90), round_of(100, 110), round_of(100, 95), round_of(100, 105)]
    assert median_round(rounds) == 2  # 0.95 of 0.90, 0.95, 1.05, 1.10


def test_a_round_whose_reader_read_nothing_has_no_ratio() -> None:
    empty = round_of(0, 50)
    assert empty.ratio(1, lambda side: side.rate) is None
    lines = summary_lines("4 tables at once", [empty, round_of(100, 96)])
    assert lines == [
        "4 tables at once, dvmirror backfill → SQLite, 2 rounds: ratio n/a 0.96 (median 0.96, "
        "range 0.96–0.96); from the first request n/a 0.96 (median 0.96, range 0.96–0.96)"
    ]


def test_every_rounds_ratios_are_listed_with_their_median_and_range() -> None:
    rounds = [round_of(100, 90, whole=80), round_of(100, 110, whole=100), round_of(100, 100)]
    (line,) = summary_lines("one big table", rounds)
    assert "3 rounds: ratio 0.80 1.00 1.00 (median 1.00, range 0.80–1.00)" in line
    assert "from the first request 0.90 1.10 1.00 (median 1.00, range 0.90–1.10)" in line
    assert summary_lines("one big table", rounds[:1]) == []


def test_the_order_alternates_from_round_to_round() -> None:
    assert [reader_first(n) for n in range(1, 6)] == [True, False, True, False, True]
