"""The alert template engine's old import path, kept so that code written against it still runs.

The engine is the package `watchdog.gotmpl` (lexer, parser, executor, Go's fmt, Prometheus's
functions); import it from there. This module only re-exports its public API and must not grow
anything else (no I/O, no clock: it is part of the functional core like the engine).
"""

from __future__ import annotations

from watchdog.gotmpl import Template, TemplateData, TemplateError, compile_template, expand

__all__ = ["Template", "TemplateData", "TemplateError", "compile_template", "expand"]
