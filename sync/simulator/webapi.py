"""The Dataverse Web API of one simulated environment, without sockets.

``DataverseModel.handle(ApiRequest) -> ApiResponse`` answers what the documentation describes:
service document, ``$metadata`` (CSDL, csdl.py), WhoAmI, EntityDefinitions/Attributes, entity
sets with ``$select``/``$filter``/``$orderby``/``$top``/``$count``, paging via
``odata.maxpagesize`` and ``@odata.nextLink``, ``<set>/$count``, change tracking with delta
links and tombstones, RetrieveTotalRecordCount, and the documented error bodies.
Authentication, service-protection limits, faults and ``$batch`` are the HTTPS layer's job
(SIM-A, batch.py); it also calls ``churn``/``add_column``/``set_hostile`` from its admin API.

Choices where the docs are silent (section 9 of the reference): every change-tracking error and
the expired-token error are HTTP 400; ``<set>/$count`` is capped at 5,000 like ``$count``; a
``$top`` combined with ``odata.maxpagesize`` follows the 2021 page (``$top`` wins) unless the
model is built with ``top_policy="top_ignored"``; adding a column does not expire delta tokens.

Functions. ``WhoAmI`` (also ``WhoAmI()``) and ``RetrieveTotalRecordCount(EntityNames=[…])``
(inline list with single or double quotes, or a parameter alias:
``RetrieveTotalRecordCount(EntityNames=@p1)?@p1=['account']``, "Passing parameters to a
function") answer with the documented ``WhoAmIResponse`` and
``RetrieveTotalRecordCountResponse`` shapes (S31, S34, S35). Both are *unbound* functions, and
"Use Web API functions" says "Functions that aren't bound must not use the full name": the
namespace-qualified forms (``Microsoft.Dynamics.CRM.WhoAmI()``,
``Microsoft.Dynamics.CRM.RetrieveTotalRecordCount(…)``) are therefore 404 ``0x8006088a``
"Resource not found for the segment 'Microsoft.Dynamics.CRM.WhoAmI'." — the unknown-segment
answer any other name at the service root gets.

Order. Without ``$orderby`` rows come in primary-key order, as in a real org (reference 3.2:
"without `$orderby` Dataverse orders by primary key"), the same order as ``$orderby=<pk>``.
That order and key comparisons follow SQL Server's GUID order (guids.py): the keys are
sequential GUIDs (values.py), so that order is node by node (2–3 per table), each node's rows
in creation order; the text order of keys is neither. A page resumes past the last key of the
previous one (its paging cookie), so rows created meanwhile with a key before it are not read
and none after it is skipped. An unfiltered read streams that order in O(page) (keyorder.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

import orjson

from sync.simulator.aggregate import count_rows
from sync.simulator.csdl import XML_CONTENT_TYPE, csdl_document
from sync.simulator.dataset import (
    BASE_VERSION,
    HOSTILE_KINDS,
    Table,
    TableSpec,
    VersionCounter,
    build_tables,
)
from sync.simulator.keyorder import key_ordered_rows
from sync.simulator.metadata import MetadataView, attribute_definition, metadata_id
from sync.simulator.odata import Preferences, Query, parse_preferences, parse_query
from sync.simulator.protocol import (
    ApiError,
    ApiRequest,
    ApiResponse,
    bad_request,
    base_headers,
    json_response,
    not_found_segment,
)
from sync.simulator.reads import ReadContext, count_collection, read_collection, read_single
from sync.simulator.relationships import Relationships, RelationshipSpec
from sync.simulator.render import plain_row
from sync.simulator.solutions import Solutions, SolutionSpec

__all__ = ["ApiRequest", "ApiResponse", "DataverseModel", "TableSpec"]

_SINGLE = re.compile(r"^(?P<set>\w+)\((?P<key>\{?[0-9a-fA-F-]{36}\}?)\)$")
_RECORD_COUNT = re.compile(r"^RetrieveTotalRecordCount\(EntityNames=(?P<names>.*)\)$")
_QUALIFIED_UNBOUND = re.compile(
    r"^(?P<name>Microsoft\.Dynamics\.CRM\.(?:WhoAmI|RetrieveTotalRecordCount))(?:\(.*\))?$"
)
SNAPSHOT_SECONDS = 24 * 3600
_RECORD_COUNT_TYPE = "Microsoft.Dynamics.CRM.RetrieveTotalRecordCountResponse"


class DataverseModel:
    """One simulated environment's Web API semantics (pure; one instance per environment)."""

    def __init__(
        self,
        tables: Sequence[TableSpec],
        seed: int,
        *,
        retention_days: float,
        clock: Callable[[], float] = time.time,
        top_policy: str = "top_wins",
        solutions: Sequence[SolutionSpec] = (),
        relationships: Sequence[RelationshipSpec] = (),
    ) -> None:
        if top_policy not in ("top_wins", "top_ignored"):
            raise ValueError("top_policy must be 'top_wins' or 'top_ignored'")
        self.tables, first_version = build_tables(tables, seed)
        self.relationships, first_version = Relationships.build(
            relationships, self.tables, first_version, BASE_VERSION
        )
        self.counter = VersionCounter(first_version)
        self.initial_version = first_version
        self.seed = seed
        self.retention_seconds = retention_days * 86_400
        self.clock = clock
        self.top_policy = top_policy
        self.started_at = int(clock())
        self._by_set = {t.template.entity_set: t for t in self.tables.values()}
        self.solutions = Solutions(solutions, metadata_id)
        self._snapshot: tuple[int, dict[str, int]] = (self.started_at, self._counts())
        self.snapshot_seconds = SNAPSHOT_SECONDS  # how old a count snapshot grows before renewal

    # -- requests -------------------------------------------------------------------------

    def handle(self, request: ApiRequest) -> ApiResponse:
        """Answer one Web API request (never raises for a bad request: errors are responses)."""
        try:
            return self._route(request)
        except ApiError as error:
            return error.response()

    def _route(self, request: ApiRequest) -> ApiResponse:  # noqa: PLR0911, PLR0912 - a router
        path = unquote(request.path).strip("/")
        base = request.base_url.rstrip("/")
        qualified = _QUALIFIED_UNBOUND.match(path.split("/", 1)[0])
        if qualified:  # unbound functions "must not use the full name"
            raise not_found_segment(qualified["name"])
        if path in ("WhoAmI", "WhoAmI()"):
            if request.method.upper() != "GET":
                raise ApiError(
                    404,
                    "",
                    f"No HTTP resource was found that matches the request URI '{base}/WhoAmI'.",
                )
            return json_response(
                {
                    "@odata.context": f"{base}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
                    "BusinessUnitId": request.business_unit_id,
                    "UserId": request.user_id,
                    "OrganizationId": request.organization_id,
                }
            )
        if request.method.upper() not in ("GET", "HEAD"):
            raise ApiError(
                405,
                "0x80060888",
                f"The requested resource does not support http method '{request.method.upper()}'.",
            )
        query = parse_query(request.raw_query)
        prefs = parse_preferences(request.header("Prefer"))
        if path == "":
            return self._service_document(base)
        if path == "$metadata":
            return self._metadata(query, prefs)
        if path.startswith("EntityDefinitions"):
            many_to_many = self.relationships.handle(path, query, base)
            if many_to_many is not None:
                return many_to_many
            return MetadataView(self.tables, base).handle(path, query)
        if path in ("solutions", "solutioncomponents"):
            return self.solutions.handle(path, query, base)
        found = _RECORD_COUNT.match(path)
        if found:
            return self._record_count(base, found["names"], query)
        segments = path.split("/")
        single = _SINGLE.match(segments[0])
        table = self._by_set.get(single["set"] if single else segments[0])
        if table is None:
            raise not_found_segment(segments[0])
        ctx = self._read_context(table, base)
        if single and len(segments) == 1:
            return read_single(ctx, single["key"].strip("{}"), query, prefs)
        if len(segments) == 2 and segments[1] == "$count" and not single:
            return count_collection(ctx, query, prefs)
        if len(segments) > 1 or single:
            raise not_found_segment(segments[-1])
        if query.get("$apply") is not None:  # a server-side aggregate: one row of counts
            body = count_rows(table, query.get("$apply") or "")
            return json_response({"@odata.context": ctx.context(None), **body})
        return read_collection(ctx, query, prefs)

    def _read_context(self, table: Table, base: str) -> ReadContext:
        return ReadContext(
            table,
            self.counter,
            base,
            int(self.clock()),
            self.initial_version,
            self.started_at,
            self.retention_seconds,
            self.top_policy,
        )

    def _service_document(self, base: str) -> ApiResponse:
        sets = [*self._by_set, "EntityDefinitions"]
        return json_response(
            {
                "@odata.context": f"{base}/$metadata",
                "value": [{"name": s, "kind": "EntitySet", "url": s} for s in sets],
            }
        )

    def _metadata(self, query: Query, prefs: Preferences) -> ApiResponse:
        """The CSDL document; ``annotations=true`` or annotations "*" add annotations."""
        flag = (query.get("annotations") or "false").lower()
        if flag not in ("true", "false"):
            raise bad_request(f"The value '{flag}' is not valid for the annotations option.")
        annotated = flag == "true" or prefs.annotations == "*"
        body = csdl_document(self.tables.values(), annotations=annotated)
        return ApiResponse(200, base_headers(XML_CONTENT_TYPE), body)

    def _counts(self) -> dict[str, int]:
        return {name: table.live_count() for name, table in self.tables.items()}

    def _record_count(self, base: str, names_text: str, query: Query) -> ApiResponse:
        if names_text.startswith("@"):
            names_text = query.get(names_text) or ""
        try:
            names = orjson.loads(names_text.replace("'", '"'))
        except orjson.JSONDecodeError as exc:
            raise bad_request("EntityNames must be a list of table logical names.") from exc
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise bad_request("EntityNames must be a list of table logical names.")
        taken, counts = self._snapshot
        if int(self.clock()) - taken >= self.snapshot_seconds:  # within the last day by default
            taken, counts = self._snapshot = (int(self.clock()), self._counts())
        for name in names:
            if name not in counts:
                raise ApiError(
                    404,
                    "0x80040217",
                    f"The entity with a name = '{name}' was not found in the MetadataCache.",
                )
        return json_response(
            {
                "@odata.context": f"{base}/$metadata#{_RECORD_COUNT_TYPE}",
                "EntityRecordCountCollection": {
                    "Count": len(names),
                    "IsReadOnly": False,
                    "Keys": names,
                    "Values": [counts[n] for n in names],
                },
            }
        )

    # -- the rest of the contract ---------------------------------------------------------

    def table_for_entity_set(self, entity_set: str) -> str | None:
        """Logical name behind an entity-set name (case-sensitive), for privilege checks."""
        table = self._by_set.get(entity_set)
        return table.name if table else None

    def _table(self, table: str) -> Table:
        try:
            return self.tables[table]
        except KeyError:
            raise KeyError(f"no table {table!r} in this environment") from None

    def churn(
        self, table: str, *, creates: int, updates: int, deletes: int, seed: int
    ) -> dict[str, int]:
        """Create/update/delete rows deterministically; returns counts and the new version.
        On an intersect table, creates associate and deletes disassociate; deleted rows of a
        related table take their associations with them."""
        now = int(self.clock())
        counts = self._table(table).churn(
            self.counter, now, creates=creates, updates=updates, deletes=deletes, seed=seed
        )
        if counts.get("deleted"):
            self.relationships.cascade(table, self.counter, now)
            counts["version"] = self.counter.value
        return counts

    def add_column(self, table: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Add a column at runtime; returns its attribute metadata (ValueError for a bad spec)."""
        target = self._table(table)
        attr = target.add_column(spec, self.counter.value)
        return attribute_definition(target, attr, target.attributes.index(attr) + 1)

    def remove_column(self, table: str, name: str) -> dict[str, Any]:
        """Delete a custom column; its values are gone (ValueError for a system column)."""
        return self._table(table).remove_column(name)

    def restore(self, table: str, count: int) -> dict[str, Any]:
        """Bring the most recently deleted rows back under their old ids."""
        return self._table(table).restore(self.counter, int(self.clock()), count=count)

    def count_snapshot(
        self, *, refresh: bool = False, max_age_seconds: int | None = None
    ) -> dict[str, Any]:
        """RetrieveTotalRecordCount's snapshot: take it again now (`refresh`), or let it grow
        `max_age_seconds` old before the service renews it (a stale estimate, as in Dataverse)."""
        if max_age_seconds is not None:
            self.snapshot_seconds = max_age_seconds
        if refresh:
            self._snapshot = (int(self.clock()), self._counts())
        taken, counts = self._snapshot
        return {"taken_at": taken, "max_age_seconds": self.snapshot_seconds, "counts": counts}

    def expire_change_tracking(self, table: str) -> None:
        """Every delta token issued so far for that table becomes expired (0x80044352)."""
        target = self._table(table)
        target.expired_below = self.counter.next()

    def set_hostile(self, table: str, kind: str | None) -> None:
        """Make the table's entity-set and delta pages defective until cleared with None."""
        if kind is not None and kind not in HOSTILE_KINDS:
            raise ValueError(f"hostile kind must be one of {sorted(HOSTILE_KINDS)} or None")
        self._table(table).hostile = kind

    def dump_rows(self, table: str, *, exact: bool = False) -> Iterator[dict[str, Any]]:
        """Current rows in primary-key order, Web API names and values, no annotations
        (`exact`: decimals as JSON numbers with their scale, for orjson, not floats)."""
        target = self._table(table)
        for row in key_ordered_rows(target, None, descending=False, after=None):
            yield plain_row(target, row, exact=exact)

    def row_count(self, table: str) -> int:
        """Live rows of a table now."""
        return self._table(table).live_count()

    @property
    def version(self) -> int:
        """The environment's current versionnumber."""
        return self.counter.value
