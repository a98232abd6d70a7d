"""OData request parts: query options, ``Prefer`` preferences, skiptoken and deltatoken codecs.

Skiptoken (documented shape, URL-encoded exactly once in the link)::

    <cookie pagenumber="2" pagingcookie="%3ccookie%20page%3d%221%22%3e...%3c%2fcookie%3e"
            istracking="False" />

whose pagingcookie is itself the URL-encoded inner cookie
``<cookie page="1"><accountid last="{GUID}" first="{GUID}" /></cookie>``. The inner cookie is
opaque to clients; the simulator keeps all paging state in it (last key, ordering values, the
change-tracking version a read started at), so links stay valid across client restarts.
Deltatoken: ``<version>!<MM/dd/yyyy HH:mm:ss>``, URL-encoded.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote, unquote, unquote_plus

from sync.simulator.filters import Node, parse_filter
from sync.simulator.protocol import ApiError, bad_request

MAX_PAGE_SIZE = 5000
SUPPORTED = frozenset(
    {
        "$select",
        "$filter",
        "$orderby",
        "$top",
        "$count",
        "$skiptoken",
        "$deltatoken",
        "$expand",
        "$apply",
    }
)
UNSUPPORTED = frozenset({"$skip", "$search", "$format"})
_COOKIE = re.compile(
    r'^<cookie pagenumber="(\d+)" pagingcookie="([^"]*)" istracking="(True|False)" />$'
)
_INNER = re.compile(
    r"^<cookie((?:\s+[\w.]+=\"[^\"]*\")*)\s*>((?:<[\w.]+(?:\s+[\w.]+=\"[^\"]*\")*\s*/>)*)</cookie>$"
)
_ELEMENT = re.compile(r"<([\w.]+)((?:\s+[\w.]+=\"[^\"]*\")*)\s*/>")
_ATTRIBUTE = re.compile(r"([\w.]+)=\"([^\"]*)\"")
_DELTA = re.compile(r"^(\d{1,19})!(\d{2})/(\d{2})/(\d{4}) (\d{2}):(\d{2}):(\d{2})$")
_LOWER_HEX = re.compile(r"%[0-9A-F]{2}")


def _lower_quote(text: str) -> str:
    """Percent-encode everything but unreserved characters, with lower-case hex (as .NET does)."""
    return _LOWER_HEX.sub(lambda m: m.group().lower(), quote(text, safe="-_.~"))


def invalid_skiptoken(reason: str) -> ApiError:
    """400 for a skiptoken the server did not issue in this form (tampered or re-encoded)."""
    return bad_request(f"The $skiptoken value is not valid: {reason}.", "0x80040203")


# -- query string ------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """The query options of one request; `raw` keeps each option as received (for links)."""

    raw: tuple[tuple[str, str, str], ...] = ()  # (decoded name, raw name, raw value)
    values: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        """The decoded value of an option."""
        return self.values.get(name)

    def has(self, name: str) -> bool:
        """True when the option was given."""
        return name in self.values

    def raw_value(self, name: str) -> str | None:
        """The still-encoded value of an option."""
        return next((value for key, _, value in self.raw if key == name), None)

    def link_query(self, keep: set[str] | None = None, drop: set[str] | None = None) -> str:
        """The raw query for a next/delta link: options kept verbatim, never re-encoded."""
        return "&".join(
            f"{raw_key}={value}"
            for key, raw_key, value in self.raw
            if (keep is None or key in keep) and (drop is None or key not in drop)
        )


def parse_query(raw_query: str) -> Query:
    """Split a raw query string; unsupported or repeated system options are 400."""
    raw: list[tuple[str, str, str]] = []
    values: dict[str, str] = {}
    for part in raw_query.split("&") if raw_query else []:
        if not part:
            continue
        raw_key, _, raw_value = part.partition("=")
        name = unquote(raw_key)
        if name in values:
            raise bad_request(
                f"Query option '{name}' was specified more than once, "
                "but it must be specified at most once."
            )
        if name in UNSUPPORTED or (name.startswith("$") and name not in SUPPORTED):
            raise bad_request(f"The query parameter '{name}' is not supported.")
        raw.append((name, raw_key, raw_value))
        values[name] = unquote_plus(raw_value)
    return Query(tuple(raw), values)


def parse_select(query: Query) -> tuple[str, ...] | None:
    """``$select`` names in request order (None when absent)."""
    text = query.get("$select")
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise bad_request(f"Syntax error in $select '{text}'.")
    return names


def parse_orderby(query: Query) -> tuple[tuple[str, bool], ...]:
    """``$orderby`` as (property, descending) pairs."""
    text = query.get("$orderby")
    if text is None:
        return ()
    items: list[tuple[str, bool]] = []
    for part in text.split(","):
        words = part.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1] not in ("asc", "desc")):
            raise bad_request(f"Syntax error in $orderby '{text}'.")
        items.append((words[0], len(words) == 2 and words[1] == "desc"))
    return tuple(items)


def parse_top(query: Query) -> int | None:
    """``$top`` as a non-negative integer."""
    text = query.get("$top")
    if text is None:
        return None
    if not text.isdigit():
        raise bad_request(f"Invalid value '{text}' for $top query option found.")
    return int(text)


def parse_count(query: Query) -> bool:
    """``$count=true``."""
    text = query.get("$count")
    if text is None or text == "false":
        return False
    if text == "true":
        return True
    raise bad_request(f"'{text}' is not a valid count option.")


def parse_filter_option(query: Query) -> Node | None:
    """``$filter`` parsed, or None."""
    text = query.get("$filter")
    return None if text is None else parse_filter(text)


# -- Prefer ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preferences:
    """The preferences of a request (several Prefer headers arrive joined by ", ")."""

    maxpagesize: int | None = None  # honoured value (1..5000) or None
    annotations: str | None = None  # the include-annotations value as sent
    track_changes: bool = False

    def page_size(self) -> int:
        """Rows per page: the honoured maxpagesize or the 5,000 default."""
        return self.maxpagesize or MAX_PAGE_SIZE

    def wants(self, term: str) -> bool:
        """True when annotation `term` was asked for (exactly, by ``*`` or by ``Namespace.*``)."""
        if not self.annotations:
            return False
        for item in (p.strip() for p in self.annotations.split(",")):
            if item in ("*", term) or (item.endswith(".*") and term.startswith(item[:-1])):
                return True
        return False


def _split_preferences(header: str) -> list[str]:
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for char in header:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    items.append("".join(current).strip())
    return [item for item in items if item]


def parse_preferences(header: str | None) -> Preferences:
    """Read ``odata.maxpagesize`` (values above 5,000 are ignored), annotations, track-changes."""
    maxpagesize: int | None = None
    annotations: str | None = None
    track = False
    for item in _split_preferences(header or ""):
        name, _, value = item.partition("=")
        name = name.strip().lower()
        value = value.split(";")[0].strip()
        if name == "odata.maxpagesize" and value.isdigit() and 0 < int(value) <= MAX_PAGE_SIZE:
            maxpagesize = int(value)
        elif name == "odata.include-annotations" and value:
            annotations = value.strip('"')
        elif name == "odata.track-changes":
            track = True
    return Preferences(maxpagesize, annotations, track)


# -- skiptoken ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PagingCookie:
    """A decoded skiptoken: the page it asks for plus the inner cookie's attributes/elements."""

    page_number: int
    tracking: bool
    attrs: dict[str, str]
    elements: dict[str, dict[str, str]]


def encode_skiptoken(cookie: PagingCookie) -> str:
    """The ``$skiptoken`` value as it appears in a link (URL-encoded exactly once)."""
    head = "".join(f' {k}="{html.escape(v)}"' for k, v in cookie.attrs.items())
    body = "".join(
        f"<{name}" + "".join(f' {k}="{html.escape(v)}"' for k, v in attrs.items()) + " />"
        for name, attrs in cookie.elements.items()
    )
    inner = f'<cookie page="{cookie.page_number - 1}"{head}>{body}</cookie>'
    tracking = "True" if cookie.tracking else "False"
    outer = (
        f'<cookie pagenumber="{cookie.page_number}" pagingcookie="{_lower_quote(inner)}" '
        f'istracking="{tracking}" />'
    )
    return quote(outer, safe="=/")


def decode_skiptoken(raw_value: str) -> PagingCookie:
    """Decode a raw (encoded) skiptoken; anything the server would not have issued is 400."""
    outer = unquote_plus(raw_value)
    if outer[:3].lower() == "%3c":
        raise invalid_skiptoken("it was URL-encoded more than once")
    match = _COOKIE.match(outer)
    if not match:
        raise invalid_skiptoken("unrecognised cookie")
    page_number, encoded_inner, tracking = int(match[1]), match[2], match[3] == "True"
    inner = unquote(encoded_inner)
    found = _INNER.match(inner)
    if not found or page_number < 2:
        raise invalid_skiptoken("unrecognised paging cookie")
    attrs = {k: html.unescape(v) for k, v in _ATTRIBUTE.findall(found[1])}
    if attrs.pop("page", None) != str(page_number - 1):
        raise invalid_skiptoken("page numbers disagree")
    elements = {
        name: {k: html.unescape(v) for k, v in _ATTRIBUTE.findall(body)}
        for name, body in _ELEMENT.findall(found[2])
    }
    return PagingCookie(page_number, tracking, attrs, elements)


def cookie_int(cookie: PagingCookie, name: str) -> int:
    """An integer attribute of the inner cookie (400 when missing or malformed)."""
    value = cookie.attrs.get(name, "")
    if not value.isdigit():
        raise invalid_skiptoken(f"missing {name}")
    return int(value)


# -- deltatoken --------------------------------------------------------------------------


def encode_deltatoken(version: int, instant: int) -> str:
    """``<version>!<MM/dd/yyyy HH:mm:ss>`` URL-encoded, as in the documented deltaLink."""
    stamp = datetime.fromtimestamp(instant, UTC).strftime("%m/%d/%Y %H:%M:%S")
    return _lower_quote(f"{version}!{stamp}")


def decode_deltatoken(raw_value: str) -> tuple[int, int]:
    """(version, epoch seconds) of a raw deltatoken; garbage is 400."""
    match = _DELTA.match(unquote_plus(raw_value))
    if not match:
        raise bad_request("The $deltatoken value is not valid.", "0x80040203")
    month, day, year, hour, minute, second = (int(g) for g in match.groups()[1:])
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise bad_request("The $deltatoken value is not valid.", "0x80040203") from exc
    return int(match[1]), int(moment.timestamp())
