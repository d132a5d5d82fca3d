"""Fakes for the seams, for our tests and for users writing their own: a source that answers from
fixed data (optionally failing), and a fixed clock.

Shell-side helpers with no network I/O; nothing in the daemon imports this module.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from watchdog.evaluate import Sample
from watchdog.source import QueryError

Answer = Sequence[Sample] | Callable[[float], Sequence[Sample]] | Exception


def sample(value: float, **labels: str) -> Sample:
    return Sample(dict(labels), value)


@dataclass
class FakeSource:
    """Answers `query(expr, at)` from `answers[expr]`: a fixed vector, a function of time, or an
    exception to raise. Unknown expressions answer an empty vector. Counts every call."""

    answers: dict[str, Answer] = field(default_factory=dict)
    calls: Counter[tuple[str, float]] = field(default_factory=Counter)

    async def query(self, expr: str, at: float) -> list[Sample]:
        self.calls[(expr, at)] += 1
        a = self.answers.get(expr, [])
        if isinstance(a, Exception):
            raise a
        if callable(a):
            return list(a(at))
        return list(a)

    def fail(self, expr: str, message: str = "fake outage") -> None:
        self.answers[expr] = QueryError(message)


@dataclass
class FixedClock:
    """A clock the test moves by hand."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now
