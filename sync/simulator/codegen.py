"""Straight-line functions generated from per-column plans (as namedtuple and dataclasses do).

A loop over a column plan pays, for every row and column, for unpacking the plan entry and
testing which steps apply: that was a third of the simulator's per-row work. Generating one
function per plan, with only the steps that apply written out, removes it. The generated
source holds nothing but identifiers made here (``f0``, ``l3``, ...) and literals written by
``repr``; every object it uses comes in through the namespace, so no data is run as code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class FunctionBuilder:
    """Collects the lines and the namespace of one generated function."""

    def __init__(self, name: str, params: str) -> None:
        self._name = name
        self._params = params
        self._lines: list[str] = []
        self._namespace: dict[str, Any] = {}

    def bind(self, prefix: str, value: Any) -> str:
        """A fresh identifier under which the generated code sees `value`."""
        name = f"{prefix}{len(self._namespace)}"
        self._namespace[name] = value
        return name

    def line(self, text: str, indent: int = 0) -> None:
        """Append one line of the body (`indent` levels deeper than the body)."""
        self._lines.append("    " * (indent + 1) + text)

    def build(self) -> Callable[..., Any]:
        """Compile the function; its source stays readable as ``__source__``."""
        source = f"def {self._name}({self._params}):\n" + "\n".join(self._lines) + "\n"
        scope = dict(self._namespace)
        exec(compile(source, f"<generated {self._name}>", "exec"), scope)  # noqa: S102 - see above
        function: Callable[..., Any] = scope[self._name]
        function.__source__ = source  # type: ignore[attr-defined]
        return function
