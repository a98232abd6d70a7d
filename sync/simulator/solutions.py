"""``solutions`` and ``solutioncomponents``: which tables a solution holds.

As documented: `solutions?$filter=uniquename eq 'X'&$select=solutionid`, then
`solutioncomponents?$filter=_solutionid_value eq <id> and componenttype eq 1&$select=objectid`,
where `objectid` of an Entity component (componenttype 1) is the table's `MetadataId`. The
membership is mutable (the admin knob adds and removes components at run time).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sync.simulator.filters import evaluate, parse_filter, properties
from sync.simulator.metadata import metadata_id as stable_id
from sync.simulator.odata import Query, parse_select
from sync.simulator.protocol import ApiResponse, json_response, unknown_property

ENTITY_COMPONENT = 1


class SolutionSpec(BaseModel):
    """One solution of a scenario environment and the tables it holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    unique_name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    tables: tuple[str, ...] = ()


class Solutions:
    """The solutions of one environment; `metadata_id` maps a table name to its MetadataId."""

    def __init__(self, specs: Sequence[SolutionSpec], metadata_id: Callable[[str], str]) -> None:
        self.metadata_id = metadata_id
        self.members: dict[str, list[str]] = {s.unique_name: list(s.tables) for s in specs}

    def solution_id(self, unique_name: str) -> str:
        return stable_id("solution", unique_name)

    def change(self, unique_name: str, table: str, *, add: bool) -> list[str]:
        """Add or remove one Entity component; KeyError for an unknown solution."""
        members = self.members[unique_name]
        if add and table not in members:
            members.append(table)
        if not add and table in members:
            members.remove(table)
        return list(members)

    def _solution_records(self) -> list[dict[str, Any]]:
        return [
            {
                "solutionid": self.solution_id(name),
                "uniquename": name,
                "friendlyname": name,
                "version": "1.0.0.0",
                "ismanaged": False,
            }
            for name in self.members
        ]

    def _component_records(self) -> list[dict[str, Any]]:
        return [
            {
                "solutioncomponentid": stable_id("solutioncomponent", name, table),
                "_solutionid_value": self.solution_id(name),
                "componenttype": ENTITY_COMPONENT,
                "objectid": self.metadata_id(table),
                "rootcomponentbehavior": 0,
            }
            for name, tables in self.members.items()
            for table in tables
        ]

    def handle(self, entity_set: str, query: Query, base_url: str) -> ApiResponse:
        """Answer `solutions` or `solutioncomponents` with `$filter` and `$select`."""
        records = (
            self._solution_records() if entity_set == "solutions" else self._component_records()
        )
        type_name = "solution" if entity_set == "solutions" else "solutioncomponent"
        known = set(records[0]) if records else _EMPTY_FIELDS[entity_set]
        select = parse_select(query)
        for name in select or ():
            if name not in known:
                raise unknown_property(name, type_name)
        text = query.get("$filter")
        node = parse_filter(text) if text else None
        if node is not None:
            for name in properties(node):
                if name not in known:
                    raise unknown_property(name, type_name)
        key = "solutionid" if entity_set == "solutions" else "solutioncomponentid"
        out = []
        for record in records:
            if node is not None and not evaluate(node, _getter(record)):
                continue
            keep = {key, *(select or record)}
            out.append({k: v for k, v in record.items() if k in keep})
        columns = f"({','.join(select)})" if select else ""
        return json_response(
            {"@odata.context": f"{base_url}/$metadata#{entity_set}{columns}", "value": out}
        )


_EMPTY_FIELDS: Mapping[str, set[str]] = {
    "solutions": {"solutionid", "uniquename", "friendlyname", "version", "ismanaged"},
    "solutioncomponents": {
        "solutioncomponentid",
        "_solutionid_value",
        "componenttype",
        "objectid",
        "rootcomponentbehavior",
    },
}


def _getter(record: Mapping[str, Any]) -> Callable[[str], Any]:
    return record.get
