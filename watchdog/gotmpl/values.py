"""What templates compute with: the data an alert template sees, the values it can hold, their Go
type names, and the error every stage raises.

The bottom layer of `watchdog.gotmpl`: it imports nothing of the engine. Pure data: it must not
do I/O or read the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

__all__ = [
    "HTML",
    "PRELUDE_BYTES",
    "STRUCT_TYPE",
    "TemplateData",
    "TemplateError",
    "Value",
    "line_col",
    "type_name",
]


class TemplateError(ValueError):
    """A template failed to parse or to execute; the message says what and where.

    `str(err)` is `template: LINE:COL: ...` (COL is a 0-based byte offset, as in
    Go).  `prometheus_message(name)` renders the error the way Prometheus
    reports it for an alert called `name`.
    """

    def __init__(
        self, msg: str, line: int, col: int, *, executing: bool = False, context: str = ""
    ) -> None:
        self.msg = msg
        self.line = line
        self.col = col
        self.executing = executing
        self.context = context
        super().__init__(self._render("", 0))

    def _render(self, name: str, col_shift: int) -> str:
        prefix = f"{name}:" if name else ""
        if not self.executing:
            # Go's parse errors carry only a line number.
            if name:
                return f"template: {prefix}{self.line}: {self.msg}"
            return f"template: {self.line}:{self.col}: {self.msg}"
        col = self.col + (col_shift if self.line == 1 else 0)
        where = f'executing "{name}" at' if name else "executing at"
        return f"template: {prefix}{self.line}:{col}: {where} <{self.context}>: {self.msg}"

    def prometheus_message(self, name: str) -> str:
        """The error text Prometheus logs for template `name` (e.g. `__alert_HighLoad`)."""
        stage = "executing" if self.executing else "parsing"
        return f"error {stage} template {name}: {self._render(name, len(PRELUDE_BYTES))}"


@dataclass(frozen=True)
class TemplateData:
    """What a Prometheus alert template sees: `.Labels`, `.Value`, ... and `$labels`, ..."""

    labels: Mapping[str, str]
    value: float
    external_labels: Mapping[str, str] = field(default_factory=dict)
    external_url: str = ""


# Prometheus prepends these definitions (rules/alerting.go); they shift columns on line 1.
PRELUDE_BYTES = (
    b"{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}"
    b"{{$externalURL := .ExternalURL}}{{$value := .Value}}"
)
STRUCT_TYPE = (
    "struct { Labels map[string]string; ExternalLabels map[string]string; "
    "ExternalURL string; Value float64 }"
)


class HTML(str):
    """Go's html/template.HTML, returned by safeHtml: prints as a string but is another type."""

    __slots__ = ()


Value: TypeAlias = (
    str | int | float | bool | Mapping[str, str] | tuple["Value", ...] | TemplateData | None
)


def type_name(v: object) -> str:
    """The Go type of a template value, as %T and error messages spell it."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, HTML):
        return "template.HTML"
    if isinstance(v, str):
        return "string"
    if isinstance(v, TemplateData):
        return STRUCT_TYPE
    if isinstance(v, tuple):
        return "[]interface {}"
    return "map[string]string"


def line_col(text: str, pos: int) -> tuple[int, int]:
    """Go's error position of character offset `pos`: 1-based line, 0-based byte column."""
    before = text[:pos]
    line_start = before.rfind("\n") + 1
    return before.count("\n") + 1, len(before[line_start:].encode("utf-8", "surrogatepass"))
