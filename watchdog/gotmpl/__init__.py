"""Prometheus alert templates: a small, safe re-implementation of Go's text/template.

Alert labels and annotations in a Prometheus rule file are Go text/template strings with
Prometheus's template functions (`humanize`, `printf`, ...). This package parses such a template
once (`compile_template`) and renders it against one alert's labels and value (`Template.render`,
`expand`), producing the same bytes Prometheus 2.42 produces, including Go's number formatting.

It is part of the functional core and must not do I/O, read the clock or run code: templates see
only the data in `TemplateData`. `query` (which would need Prometheus) is rejected at compile
time, there is no eval and no attribute access on Python objects, and nesting depth is bounded.

Layout, after Go's text/template (each module imports only those listed before it):
  values  the data a template sees, the value types, their Go names, TemplateError
  lex     text -> tokens                                        (Go's parse/lex.go)
  parse   tokens -> nodes; told which functions exist            (Go's parse/parse.go, node.go)
  fmt     Go's fmt for template values: print, printf, %v        (Go's fmt)
  funcs   Go's builtins and Prometheus's template functions       (text/template funcs.go,
          Prometheus template/template.go)
  exec    nodes + data -> text; compile_template, expand         (Go's exec.go)
Go's strconv (Quote, FormatFloat, ParseFloat) and Prometheus's ParseDuration come from
`watchdog.gocompat`, shared with the rest of the code base. Where Go behaves oddly, the code
follows Go and says so, because byte-identical output is the point.
"""

from __future__ import annotations

from watchdog.gotmpl.exec import Template, compile_template, expand
from watchdog.gotmpl.values import TemplateData, TemplateError

__all__ = ["Template", "TemplateData", "TemplateError", "compile_template", "expand"]
