"""``$filter``: a small OData expression parser and evaluator.

Grammar (what Dataverse documents for reads): comparisons ``eq ne gt ge lt le``, ``and``,
``or``, ``not``, parentheses, ``contains``/``startswith``/``endswith``, and the Dataverse query
function ``Microsoft.Dynamics.CRM.In(PropertyName='<p>',PropertyValues=['v1','v2'])`` (its
values are ``Collection(Edm.String)``). OData 4.01's ``<p> in (…)`` operator is not among them:
it is a syntax error like any other unknown syntax. Literals: strings
('it''s'), numbers, true/false/null, GUIDs, ``2024-01-31T10:00:00Z`` date-times, ``2024-01-31``
dates, and enum literals ``Microsoft.Dynamics.CRM.OwnershipTypes'UserOwned'`` (metadata queries).
String comparisons are case-insensitive, as in Dataverse; a comparison with a GUID literal
follows SQL Server's ``uniqueidentifier`` order (guids.py), not the order of the text. Pure:
values in, booleans out.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson

from sync.simulator.guids import sqlserver_guid_key
from sync.simulator.protocol import ApiError, bad_request

COMPARISONS = frozenset({"eq", "ne", "gt", "ge", "lt", "le"})
FUNCTIONS = frozenset({"contains", "startswith", "endswith"})
IN_FUNCTION = "Microsoft.Dynamics.CRM.In"

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,7})?)?(?:Z|[+-]\d{2}:\d{2}))
  | (?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})
  | (?P<date>\d{4}-\d{2}-\d{2})
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<enum>[A-Za-z_][\w.]*'(?:[^']|'')*')
  | (?P<string>'(?:[^']|'')*')
  | (?P<jstring>"(?:[^"\\]|\\.)*")
  | (?P<name>[A-Za-z_@$][\w/.]*)
  | (?P<punct>[(),=\[\]])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Literal:
    """A typed literal; `value` is normalised for comparison (datetimes as epoch seconds)."""

    kind: str  # string, number, bool, null, guid, datetime, date, enum
    value: Any


@dataclass(frozen=True)
class Compare:
    """``<property> <op> <literal>``."""

    prop: str
    op: str
    literal: Literal


@dataclass(frozen=True)
class Call:
    """``contains|startswith|endswith(<property>, '<text>')``."""

    func: str
    prop: str
    literal: Literal


@dataclass(frozen=True)
class InList:
    """``Microsoft.Dynamics.CRM.In(PropertyName='<prop>',PropertyValues=[…])``: `folded` holds
    the values as compared (casefolded text: GUIDs match in any case)."""

    prop: str
    values: tuple[str, ...]
    folded: frozenset[str]


@dataclass(frozen=True)
class Not:
    """``not <expression>``."""

    operand: Node


@dataclass(frozen=True)
class Logical:
    """``<left> and|or <right>``."""

    op: str
    left: Node
    right: Node


Node = Compare | Call | InList | Not | Logical


def _syntax(text: str, position: int) -> ApiError:
    return bad_request(f"Syntax error at position {position} in '{text}'.")


def _tokens(text: str) -> Iterator[tuple[str, str, int]]:
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.lastgroup is None:
            raise _syntax(text, position)
        if match.lastgroup != "space":
            yield match.lastgroup, match.group(), position
        position = match.end()


def _parse_datetime(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def _date(text: str) -> int:
    day = date.fromisoformat(text)
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def _unquote(text: str) -> str:
    return text[text.index("'") + 1 : -1].replace("''", "'")


_LITERALS: dict[str, Callable[[str], Any]] = {
    "string": _unquote,
    "number": Decimal,
    "guid": str.lower,
    "datetime": _parse_datetime,
    "date": _date,
    "enum": _unquote,
}
_KEYWORDS = {
    "true": Literal("bool", True),
    "false": Literal("bool", False),
    "null": Literal("null", None),
}


def _literal(kind: str, text: str) -> Literal:
    """A literal token as a typed value; ValueError when it is not a literal."""
    if kind in _LITERALS:
        return Literal(kind, _LITERALS[kind](text))
    if text.lower() in _KEYWORDS:
        return _KEYWORDS[text.lower()]
    raise ValueError(kind)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        try:
            self.tokens = list(_tokens(text))
        except ValueError as exc:  # bad date inside a date-shaped token
            raise _syntax(text, 0) from exc
        self.at = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> tuple[str, str, int]:
        token = self.peek()
        if token is None:
            raise _syntax(self.text, len(self.text))
        self.at += 1
        return token

    def expect(self, text: str) -> None:
        _, value, position = self.take()
        if value != text:
            raise _syntax(self.text, position)

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token and token[0] == "name" and token[1] == word:
            self.at += 1
            return True
        return False

    def parse(self) -> Node:
        node = self.disjunction()
        if self.peek() is not None:
            raise _syntax(self.text, self.take()[2])
        return node

    def disjunction(self) -> Node:
        node = self.conjunction()
        while self.keyword("or"):
            node = Logical("or", node, self.conjunction())
        return node

    def conjunction(self) -> Node:
        node = self.unary()
        while self.keyword("and"):
            node = Logical("and", node, self.unary())
        return node

    def unary(self) -> Node:
        if self.keyword("not"):
            return Not(self.unary())
        return self.primary()

    def primary(self) -> Node:
        kind, value, position = self.take()
        if value == "(":
            node = self.disjunction()
            self.expect(")")
            return node
        if kind != "name":
            raise _syntax(self.text, position)
        if value == IN_FUNCTION:
            return self.in_function()
        if value in FUNCTIONS:
            self.expect("(")
            prop = self.take()
            self.expect(",")
            lit = self.literal()
            self.expect(")")
            if prop[0] != "name" or lit.kind != "string":
                raise _syntax(self.text, prop[2])
            return Call(value, prop[1], lit)
        _, op, op_position = self.take()
        if op not in COMPARISONS:
            raise _syntax(self.text, op_position)
        return Compare(value, op, self.literal())

    def in_function(self) -> InList:
        """``(PropertyName='p',PropertyValues=['a',…])``, its two parameters in either order."""
        self.expect("(")
        given: dict[str, object] = {}
        while True:
            _, name, position = self.take()
            if name not in ("PropertyName", "PropertyValues") or name in given:
                raise _syntax(self.text, position)
            self.expect("=")
            given[name] = self.collection() if name == "PropertyValues" else self.string()
            _, after, position = self.take()
            if after == ")":
                break
            if after != ",":
                raise _syntax(self.text, position)
        prop, values = given.get("PropertyName"), given.get("PropertyValues")
        if not isinstance(prop, str) or not isinstance(values, tuple):
            raise _syntax(self.text, len(self.text))
        return InList(prop, values, frozenset(v.casefold() for v in values))

    def string(self) -> str:
        """An Edm.String parameter: a single-quoted literal."""
        kind, value, position = self.take()
        if kind != "string":
            raise _syntax(self.text, position)
        return _unquote(value)

    def text_value(self) -> str:
        """A collection item: a single-quoted literal or a JSON string."""
        kind, value, position = self.take()
        if kind == "string":
            return _unquote(value)
        if kind == "jstring":
            try:
                decoded = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise _syntax(self.text, position) from exc
            if isinstance(decoded, str):
                return decoded
        raise _syntax(self.text, position)

    def collection(self) -> tuple[str, ...]:
        self.expect("[")
        values: list[str] = []
        while True:
            values.append(self.text_value())
            _, after, position = self.take()
            if after == "]":
                return tuple(values)
            if after != ",":
                raise _syntax(self.text, position)

    def literal(self) -> Literal:
        kind, value, position = self.take()
        try:
            return _literal(kind, value)
        except ValueError as exc:
            raise _syntax(self.text, position) from exc


def parse_filter(text: str) -> Node:
    """Parse a ``$filter`` value; syntax errors become 400 ``0x0``."""
    if not text.strip():
        raise bad_request("The $filter expression must not be empty.")
    return _Parser(text).parse()


def properties(node: Node) -> Iterator[str]:
    """Every property a filter reads."""
    if isinstance(node, Compare | Call | InList):
        yield node.prop
    elif isinstance(node, Not):
        yield from properties(node.operand)
    else:
        yield from properties(node.left)
        yield from properties(node.right)


def comparisons(node: Node) -> Iterator[Compare | Call | InList]:
    """Every leaf (comparison or function call) of a filter."""
    if isinstance(node, Compare | Call | InList):
        yield node
    elif isinstance(node, Not):
        yield from comparisons(node.operand)
    else:
        yield from comparisons(node.left)
        yield from comparisons(node.right)


def conjuncts(node: Node) -> Iterator[Node]:
    """The top-level ``and`` terms (every one must hold for a row to match)."""
    if isinstance(node, Logical) and node.op == "and":
        yield from conjuncts(node.left)
        yield from conjuncts(node.right)
    else:
        yield node


def comparable(value: Any, kind: str | None = None) -> Any:
    """A value as Dataverse compares and sorts it: strings case-insensitively, exact numbers,
    and GUIDs (`kind` ``"guid"``: Edm.Guid columns and literals) in SQL Server's order.

    The one ordering rule for both ``$filter`` and ``$orderby``; ValueError for a `kind`
    ``"guid"`` text that is not a GUID."""
    if kind == "guid" and isinstance(value, str):
        return sqlserver_guid_key(value)
    if isinstance(value, str):
        return value.casefold()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    return value


_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}


def compare(value: Any, op: str, literal: Literal) -> bool:
    """Apply one comparison the way Dataverse does (nulls only equal null)."""
    if literal.kind == "null" or value is None:
        equal = value is None and literal.kind == "null"
        return {"eq": equal, "ne": not equal}.get(op, False)
    kind = "guid" if literal.kind == "guid" else None
    try:
        return bool(_OPERATORS[op](comparable(value, kind), comparable(literal.value, kind)))
    except (TypeError, ValueError):
        return False


def _call(node: Call, value: Any) -> bool:
    if value is None:
        return False
    haystack, needle = str(value).casefold(), str(node.literal.value).casefold()
    if node.func == "contains":
        return needle in haystack
    if node.func == "startswith":
        return haystack.startswith(needle)
    return haystack.endswith(needle)


def _listed(node: InList, value: Any) -> bool:
    """Whether a value is among In's values (text, compared as Dataverse converts them)."""
    if value is None:
        return False
    if isinstance(value, bool):
        return str(value).casefold() in node.folded
    if isinstance(value, int | float | Decimal):
        number = comparable(value)
        for text in node.values:
            try:
                if Decimal(text) == number:
                    return True
            except ArithmeticError:
                continue
        return False
    return str(value).casefold() in node.folded


def evaluate(node: Node, get: Callable[[str], Any]) -> bool:
    """True when the row/record that `get` reads from matches the filter."""
    if isinstance(node, Compare):
        return compare(get(node.prop), node.op, node.literal)
    if isinstance(node, InList):
        return _listed(node, get(node.prop))
    if isinstance(node, Call):
        return _call(node, get(node.prop))
    if isinstance(node, Not):
        return not evaluate(node.operand, get)
    if node.op == "and":
        return evaluate(node.left, get) and evaluate(node.right, get)
    return evaluate(node.left, get) or evaluate(node.right, get)
