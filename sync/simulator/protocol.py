"""Request/response values of the simulated Web API and the documented error body.

webapi.py re-exports ApiRequest and ApiResponse (the contract with the HTTPS layer); they live
here so the read and metadata modules can build responses without importing the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

JSON_CONTENT_TYPE = "application/json; odata.metadata=minimal"


@dataclass(frozen=True)
class ApiRequest:
    """One Web API request, already stripped of the HTTP transport."""

    method: str
    path: str  # after "/api/data/v9.x/", e.g. "accounts", "EntityDefinitions(LogicalName='x')"
    raw_query: str  # still percent-encoded, so a re-encoded skiptoken is visible
    headers: Mapping[str, str]  # all Prefer values joined by ", "
    base_url: str  # "https://127.0.0.1:PORT/api/data/v9.2"
    user_id: str
    business_unit_id: str
    organization_id: str

    def header(self, name: str) -> str | None:
        """Case-insensitive header lookup."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None


@dataclass(frozen=True)
class ApiResponse:
    """The simulated reply; the HTTPS layer adds rate-limit and request-id headers.

    A reply serving rows says how many, and how many of the table's columns each carried
    (``columns_selected`` of ``columns_total``; 0 of 0 when no columns apply): its modelled
    execution time depends on both (`protection.Limits.execution_time`)."""

    status: int
    headers: dict[str, str]
    body: bytes
    rows_served: int = 0
    columns_selected: int = 0
    columns_total: int = 0

    def json(self) -> Any:
        """The decoded body (for tests and the admin API)."""
        return orjson.loads(self.body)


class ApiError(Exception):
    """A documented Web API error: HTTP status plus ``{"error":{"code","message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> ApiResponse:
        """The error as the Web API sends it (no innererror)."""
        body = orjson.dumps({"error": {"code": self.code, "message": self.message}})
        return ApiResponse(self.status, base_headers(), body)


def base_headers(content_type: str = JSON_CONTENT_TYPE) -> dict[str, str]:
    """Headers on every Web API reply."""
    return {"OData-Version": "4.0", "Content-Type": content_type}


def json_response(
    payload: Any, *, applied: list[str] | None = None, rows: int = 0, status: int = 200
) -> ApiResponse:
    """A JSON reply, with ``Preference-Applied`` when preferences were honoured."""
    headers = base_headers()
    if applied:
        headers["Preference-Applied"] = ", ".join(applied)
    return ApiResponse(status, headers, orjson.dumps(payload), rows)


def text_response(text: str, *, applied: list[str] | None = None) -> ApiResponse:
    """A ``text/plain`` reply (``<set>/$count``)."""
    headers = base_headers("text/plain")
    if applied:
        headers["Preference-Applied"] = ", ".join(applied)
    return ApiResponse(200, headers, text.encode())


def bad_request(message: str, code: str = "0x0") -> ApiError:
    """400 with the given code (``0x0`` is what OData parsing errors carry)."""
    return ApiError(400, code, message)


def not_found_segment(segment: str) -> ApiError:
    """404 for an unknown resource segment (entity-set names are case-sensitive)."""
    return ApiError(404, "0x8006088a", f"Resource not found for the segment '{segment}'.")


def unknown_property(name: str, type_name: str) -> ApiError:
    """400 for a property the type does not have."""
    return ApiError(
        400,
        "0x0",
        f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{type_name}'.",
    )
