"""The daemon's live state: the running groups (one `GroupRuntime` each, alert state inside),
the accepted rule set, and the built-in group. Also the `AlertView` the handlers read.

Plain data and lookups; it must not evaluate, persist or schedule anything. The rule manager
swaps `runtimes`/`rules` without an await in between, so readers see old or new, never a mix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from watchdog.engine import GroupRuntime
from watchdog.rulesdir import RuleSet
from watchdog.state import Alert


@dataclass
class Live:
    builtin: GroupRuntime  # the built-in self-alert's group (see `app.health`)
    runtimes: dict[str, GroupRuntime] = field(default_factory=dict)
    rules: RuleSet = field(default_factory=RuleSet)
    rules_loaded: bool = False

    def alerts(self) -> list[Alert]:
        out = [a for rt in self.runtimes.values() for r in rt.rules for a in r.alerts.values()]
        out.extend(self.builtin.alerts())
        return out

    def find(self, rule: str, fingerprint: str) -> Alert | None:
        for a in self.alerts():
            if a.rule == rule and a.fingerprint == fingerprint:
                return a
        return None
