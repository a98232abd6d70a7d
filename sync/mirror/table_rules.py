"""Which tables an environment mirrors, and why each other table is left out (pure).

Input: the configured `tables` (a list, "all", or include/exclude/solutions rules) and the
tables the metadata lists (`TableInfo`, plus the MetadataIds each named solution holds).
Output: the resolved list, every left-out table with its reason, and the resolved tables that
fall back to a watermark for lack of change tracking. "all" and include patterns skip virtual,
private, intersect and unaddressable tables silently; a table named exactly is never skipped
silently: it gets a reason the caller prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class TableInfo:
    """What EntityDefinitions says about one table."""

    name: str
    metadata_id: str = ""
    table_type: str = "Standard"
    is_private: bool = False
    is_intersect: bool = False
    entity_set: str | None = "x"
    change_tracking: bool = True


@dataclass(frozen=True, slots=True)
class Rules:
    """The configured selection, in one shape: `include` patterns ("*" for "all")."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    solutions: tuple[str, ...] = ()

    @property
    def exact(self) -> frozenset[str]:
        return frozenset(p for p in self.include if not GLOB_CHARS & set(p))


@dataclass(frozen=True, slots=True)
class Resolution:
    tables: tuple[str, ...]
    left_out: Mapping[str, str]  # table → why
    watermark: tuple[str, ...]  # resolved tables without change tracking
    warnings: tuple[str, ...] = field(default=())  # named tables that were not mirrored


def unmirrorable(info: TableInfo) -> str | None:
    """Why no table read can mirror this table, or None."""
    if info.table_type == "Virtual":
        return "virtual table (its rows live in an external source)"
    if info.is_private:
        return "private table (IsPrivate)"
    if info.is_intersect:
        return "intersect table of an N:N relationship (mirrored only through `relationships`)"
    if not info.entity_set:
        return "no Web API entity set: RetrieveMultiple cannot read it"
    return None


def _matches(name: str, patterns: Iterable[str]) -> str | None:
    return next((p for p in patterns if fnmatchcase(name, p)), None)


def resolve(
    rules: Rules, tables: Iterable[TableInfo], members: Mapping[str, frozenset[str]]
) -> Resolution:
    """Apply `rules` to the listed `tables`; `members` maps each solution's unique name to the
    MetadataIds of its tables (a missing solution has no entry)."""
    known = {t.name: t for t in tables}
    chosen: list[str] = []
    left_out: dict[str, str] = {}
    warnings: list[str] = []
    for solution in rules.solutions:
        if solution not in members:
            warnings.append(f"solution {solution!r} does not exist in this environment")
    solution_ids = {i.lower() for s in rules.solutions for i in members.get(s, frozenset())}
    for name in rules.exact - known.keys():
        left_out[name] = "no such table in this environment"
        warnings.append(f"table {name!r}: no such table in this environment")
    for name, info in sorted(known.items()):
        named = name in rules.exact
        by_pattern = _matches(name, rules.include)
        in_solution = info.metadata_id.lower() in solution_ids
        if not (by_pattern or in_solution):
            continue
        excluded = _matches(name, rules.exclude)
        if excluded is not None:
            left_out[name] = f"excluded by {excluded!r}"
            continue
        why = unmirrorable(info)
        if why is not None:
            left_out[name] = why
            if named:
                warnings.append(f"table {name!r} is not mirrored: {why}")
            continue
        chosen.append(name)
    watermark = tuple(n for n in chosen if not known[n].change_tracking)
    return Resolution(tuple(chosen), left_out, watermark, tuple(sorted(warnings)))
