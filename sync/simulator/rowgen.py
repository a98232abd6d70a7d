"""Seeded row generation, compiled once per table: one fill function per column, and one
generated ``make`` that calls them in order (codegen.py).

Row i is a pure function of (seed, table, i, revision): its values are drawn, column after
column, from one ``random.Random`` seeded with ``mix(seed, salt(table), i, revision)``. The
per-table work (hash prefixes, option tuples, lookup targets, null ratios) is done once when
the table's `RowFactory` is built, and the draws call ``getrandbits``/``random`` with exactly
the arithmetic of CPython's ``randrange``/``randint``/``choice``/``choices``/``uniform``, so
the values equal what those methods would return (test_sim_rowgen pins the equivalence and
the bytes of whole pages against the original generator).
"""

from __future__ import annotations

import random
from _random import Random as _CoreRandom
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from sync.simulator.attributes import AttributeDef
from sync.simulator.codegen import FunctionBuilder
from sync.simulator.values import (
    DAY,
    FIRST_NAMES,
    SEED_SPAN,
    SEED_START,
    VALUE_SPAN,
    VALUE_START,
    WORDS,
    GenContext,
    Identity,
    Row,
    RowState,
    identity,
    key_for,
    splitmix,
)

ONE = Decimal("1.00")
#: Seconds from UTC midnight to a user's local midnight: UTC-7, UTC-5, UTC+1 and UTC+10 users.
LOCAL_MIDNIGHT_OFFSETS = (7 * 3600, 5 * 3600, -3600, -10 * 3600)
CODE_LETTERS = "ABCDEFGHKMNPRSTXYZ"
#: Lookup targets at most this big get their keys precomputed (owners, the currency, ...).
SMALL_TARGET = 64
_EMAIL_NAMES = tuple(name.lower() for name in FIRST_NAMES)

Fill = Callable[[Row], Any]
Below = Callable[[int], int]


def below_function(getrandbits: Callable[[int], int]) -> Below:
    """``Random._randbelow``: uniform in [0, n) by rejection sampling on ``n.bit_length()`` bits."""

    def below(n: int) -> int:
        k = n.bit_length()
        r = getrandbits(k)
        while r >= n:
            r = getrandbits(k)
        return r

    return below


class RowFactory:
    """Builds the rows of one table from their index (and overlay state, when changed)."""

    def __init__(
        self, table: str, attrs: Sequence[AttributeDef], ctx: GenContext, base_count: int
    ) -> None:
        self._identity: Identity = identity(ctx.seed, table)
        self._ctx = ctx
        self._base_count = max(base_count, 1)
        self._rng = random.Random()
        # The C seeding under Random.seed (the Python wrapper only adds type checks for ints).
        self._seed: Callable[[int], None] = _CoreRandom.seed.__get__(self._rng)
        self._below = below_function(self._rng.getrandbits)
        self._person: tuple[int, tuple[str, str]] = (-1, ("", ""))
        self.make: Callable[[int, int, RowState | None], Row] = self._compile(attrs)

    def _compile(self, attrs: Sequence[AttributeDef]) -> Callable[[int, int, RowState | None], Row]:
        """``make(index, version, state)``: row `index` with this version; `state` is its
        overlay entry when it changed. One assignment per column, in template order (the
        order the seeded draws are taken in)."""
        code = FunctionBuilder("make", "index, version, state")
        origin_and_key = code.bind("ident", self._identity.origin_and_key)
        blank = code.bind("blank", dict.fromkeys(a.web_name for a in attrs))  # no dict growth
        seed, chance = code.bind("seed", self._seed), code.bind("chance", self._rng.random)
        row_type, mix = code.bind("Row", Row), code.bind("splitmix", splitmix)
        code.line(f"origin, key = {origin_and_key}(index)")
        code.line(f"values = {blank}.copy()")
        code.line(f"row = {row_type}(index, key, version, values, {{}}, origin, state)")
        code.line(f"{seed}({mix}(origin ^ (state.revision if state else 0)))")
        for attr in attrs:
            simple = {"key": "key", "versionnumber": "version"}.get(attr.fill)
            value = simple or f"{code.bind('f', self._fill(attr))}(row)"
            assign = f"values[{attr.web_name!r}] = {value}"
            nulls: list[str] = []  # system columns are never null
            if attr.fill == "draw" and attr.added_at_version:  # runtime column, older row
                nulls.append(f"version <= {int(attr.added_at_version)!r}")
            if attr.fill == "draw" and attr.null_ratio:  # a seeded null takes one draw
                nulls.append(f"{chance}() < {float(attr.null_ratio)!r}")
            if nulls:
                code.line(f"if not ({' or '.join(nulls)}):")  # else stays None
                code.line(assign, 1)
            else:
                code.line(assign)
        code.line("return row")
        return code.build()

    # -- system columns ---------------------------------------------------------------------

    def _seeded_modified(self, index: int) -> int:
        return SEED_START + index * SEED_SPAN // self._base_count

    def _created(self, row: Row) -> int:
        if row.state is not None:
            return row.state.created
        return self._seeded_modified(row.index) - row.origin % (90 * DAY)

    def _modified(self, row: Row) -> int:
        return row.state.modified if row.state is not None else self._seeded_modified(row.index)

    def _person_name(self, row: Row) -> tuple[str, str]:
        origin, names = self._person
        if origin != row.origin:  # full, first and last name of one row share one hash
            names = self._identity.person(row.origin)
            self._person = (row.origin, names)
        return names

    def _fill(self, attr: AttributeDef) -> Fill:  # noqa: PLR0911 - one rule per system fill
        fill = attr.fill
        if fill == "draw":
            drawn = self._draw(attr)
            return self._edges(attr.edges, drawn) if attr.edges else drawn
        if fill == "key":
            return lambda row: row.key
        if fill == "name":
            ident = self._identity
            return lambda row: ident.primary_name(row.index, row.origin)
        if fill == "firstname":
            return lambda row: self._person_name(row)[0]
        if fill == "lastname":
            return lambda row: self._person_name(row)[1]
        if fill == "createdon":
            return self._created
        if fill == "modifiedon":
            return self._modified
        if fill == "versionnumber":
            return lambda row: row.version
        if fill == "exchangerate":
            return lambda row: ONE
        currency = key_for(self._ctx.seed, "transactioncurrency", 0)
        name = attr.web_name

        def transaction_currency(row: Row) -> str:  # every row is in the one currency
            row.targets[name] = "transactioncurrency"
            return currency

        return transaction_currency

    # -- seeded draws -----------------------------------------------------------------------

    def _draw(self, attr: AttributeDef) -> Fill:  # noqa: PLR0911 - one branch per attribute type
        kind = attr.attribute_type
        low, high = attr.value_range
        below, chance = self._below, self._rng.random
        if attr.is_lookup:
            return self._lookup(attr)
        if kind in ("Integer", "BigInt"):
            start, width = int(low), int(high) - int(low) + 1
            return lambda row: start + below(width)
        if kind in ("Decimal", "Money"):
            places = Decimal(1).scaleb(-(attr.precision or 2))
            return lambda row: Decimal(str(low + (high - low) * chance())).quantize(places)
        if kind == "Double":
            digits = attr.precision or 5
            return lambda row: round(low + (high - low) * chance(), digits)
        if kind == "Boolean":
            return lambda row: chance() < 0.5
        if kind == "DateTime":
            return self._date(attr)
        options = tuple(o.value for o in attr.options)
        if kind == "State":
            first = options[0]
            return lambda row: first if chance() < 0.75 else options[below(len(options))]
        if kind == "Status":
            return self._status(attr, options)
        if kind == "Picklist":
            return lambda row: options[below(len(options))]
        if attr.is_multiselect:
            return self._multiselect(attr)
        if kind == "Uniqueidentifier":
            origin_and_key = identity(self._ctx.seed, attr.logical_name).origin_and_key
            return lambda row: origin_and_key(below(1 << 32))[1]
        return self._text(attr)

    def _edges(self, edges: tuple[Any, ...], drawn: Fill) -> Fill:
        """Half the values from `edges` (edgevalues.py), the others drawn as usual."""
        below, chance, count = self._below, self._rng.random, len(edges)
        return lambda row: edges[below(count)] if chance() < 0.5 else drawn(row)

    def _date(self, attr: AttributeDef) -> Fill:
        below = self._below
        if attr.date_only or (attr.date_format == "DateOnly" and not attr.local_midnight):
            # DateOnly behaviour (sent as a date) and TimeZoneIndependent + DateOnly format
            # (stored as picked: midnight UTC, sent as a full timestamp).
            return lambda row: _day_start(VALUE_START + below(VALUE_SPAN))
        if attr.local_midnight:
            # UserLocal + DateOnly format: midnight where the user was, in UTC, so the UTC
            # calendar day can differ from the day the user picked (UTC+1, UTC+10 users).
            offsets = LOCAL_MIDNIGHT_OFFSETS
            return lambda row: (
                _day_start(VALUE_START + below(VALUE_SPAN)) + offsets[below(len(offsets))]
            )
        return lambda row: VALUE_START + below(VALUE_SPAN)

    def _lookup(self, attr: AttributeDef) -> Fill:
        name, chance = attr.web_name, self._rng.random
        first = self._target_key(attr.targets[0])
        if len(attr.targets) == 1:
            target = attr.targets[0]

            def one_target(row: Row) -> str:
                row.targets[name] = target
                return first()

            return one_target
        second = self._target_key(attr.targets[1])
        primary, other = attr.targets[0], attr.targets[1]

        def two_targets(row: Row) -> str:
            if chance() < 0.8:
                row.targets[name] = primary
                return first()
            row.targets[name] = other
            return second()

        return two_targets

    def _target_key(self, target: str) -> Callable[[], str]:
        """A draw of the key of a random row of `target` (one randrange)."""
        count, below = self._ctx.target_count(target), self._below
        if count <= SMALL_TARGET:
            keys = tuple(key_for(self._ctx.seed, target, i) for i in range(count))
            return lambda: keys[below(count)]
        origin_and_key = identity(self._ctx.seed, target).origin_and_key
        return lambda: origin_and_key(below(count))[1]

    def _status(self, attr: AttributeDef, options: tuple[int, ...]) -> Fill:
        by_state: dict[Any, tuple[int, ...]] = {}
        for option in attr.options:
            by_state[option.state] = (*by_state.get(option.state, ()), option.value)
        below = self._below

        def status(row: Row) -> int:
            choices = by_state.get(row.values.get("statecode")) or options
            return choices[below(len(choices))]

        return status

    def _multiselect(self, attr: AttributeDef) -> Fill:
        rng, options = self._rng, attr.options

        def multiselect(row: Row) -> str:
            picked = rng.sample(options, rng.randint(1, min(3, len(options))))
            return ",".join(str(o.value) for o in sorted(picked, key=lambda o: o.value))

        return multiselect

    def _text(self, attr: AttributeDef) -> Fill:
        flavour, below, chance = attr.text, self._below, self._rng.random
        if flavour == "code":
            letters, size = CODE_LETTERS, len(CODE_LETTERS)
            return lambda row: f"{letters[below(size)]}{letters[below(size)]}-{row.index:06d}"
        if flavour == "phone":
            return lambda row: f"+1-555-{below(10_000):04d}"
        if flavour == "email":
            return lambda row: f"{_EMAIL_NAMES[below(len(_EMAIL_NAMES))]}.{row.index}@example.com"
        if attr.attribute_type == "Memo":
            scale = float(len(WORDS))  # Random.choices: population[floor(random() * n)]

            def sentence(row: Row) -> str:
                words = [WORDS[int(chance() * scale)] for _ in range(4 + below(9))]
                return " ".join(words[:3]).capitalize() + ".\n" + " ".join(words[3:])

            return sentence
        return lambda row: WORDS[below(len(WORDS))]


def _day_start(instant: int) -> int:
    return instant - instant % DAY
