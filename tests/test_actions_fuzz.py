"""Hypothesis over the new shapes of CONTRACT §9, through the paths users reach them by:
`actions` by tier, `on_resolved`, `lock`, `retry`, `on_not_helped` / `on_failure` and the Argo /
Flagger steps in a rule file (`rulesdir.build`, what `watchdog check` runs), and the pause body
(`ActionsHandler.pause`, what HTTP and MQTT call). Per input: no exception but the one meant for
bad input, every problem one `file:line: message` line, and what is accepted is what was meant.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from watchdog.actions.errors import CommandError
from watchdog.actions.handler import ActionsHandler
from watchdog.actions.testing import make_context
from watchdog.rulesdir import build
from watchdog.storage import open_storage
from watchdog.testing import FakeSource, FixedClock

PROBLEM = re.compile(r"^f\.yml:(\d+): (?:warning: )?[^\n\r]+$")

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**12),
                    st.floats(allow_nan=True), st.text(max_size=12),
                    st.sampled_from(["warning", "critical", "2s", "0", "-1s", "{{ $labels.x",
                                     "{{ $labels.service }}", "page", "true", "nope"]))
names = st.sampled_from(["a", "b", "undefined", "", "warning", "critical"])
values: Any = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                     st.dictionaries(st.text(max_size=8) | names, inner,
                                                     max_size=3)),
    max_leaves=8)


def rule_file(actions: Any, on_resolved: Any, extra: dict[str, Any]) -> str:
    doc = {
        "groups": [{"name": "g", "rules": [{
            "alert": "A", "expr": "up", "severities": {"warning": "> 1", "critical": "> 2"},
            "actions": actions, "on_resolved": on_resolved}]}],
        "actions": {"a": {"steps": [{"webhook": {"url": "http://x"}}], **extra},
                    "b": {"steps": [{"kubernetes": {"rollout_abort": {"rollout": "r"}}}]}},
    }
    return yaml.safe_dump(doc, allow_unicode=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=st.one_of(values, st.lists(names, max_size=3),
                         st.dictionaries(names, st.lists(names, max_size=2), max_size=3)),
       on_resolved=st.one_of(values, st.lists(names, max_size=2)),
       extra=st.dictionaries(st.sampled_from(["lock", "retry", "on_not_helped", "on_failure",
                                              "verify_for", "cooldown"]), values, max_size=3))
def test_rule_files_with_tiers_locks_and_escalations_never_crash_check(
        actions: Any, on_resolved: Any, extra: dict[str, Any]) -> None:
    text = rule_file(actions, on_resolved, extra)
    rs = build({"f.yml": text.encode()})
    lines = text.count("\n") + 1
    for p in rs.problems:
        assert PROBLEM.match(str(p)), str(p)
        assert 1 <= p.line <= lines, str(p)
    if not rs.rejected:
        [(_, group)] = list(rs.groups())
        [rule] = group.alerting_rules
        # an accepted map names only tiers of the rule and defined actions
        assert all(n in ("a", "b") for n in [*rule.action_names, *rule.on_resolved])
        if isinstance(rule.actions, dict):
            assert set(rule.actions) <= {"warning", "critical"}


times = st.one_of(values, st.floats(1.7e9, 1.9e9), st.sampled_from(
    ["2027-01-15T09:00:00Z", "1800003600", "2h", "30m", "8d", "1e400", "-1"]))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(body={"\n": None})  # found by this test: an unknown key with a newline in it
@given(body=st.one_of(values, st.fixed_dictionaries(
    {}, optional={"until": times, "for": times, "reason": values, "by": values,
                  "request_id": values})))
async def test_pause_bodies_are_accepted_or_refused_in_one_line(body: Any) -> None:
    db = await open_storage("memory://")
    async with aiohttp.ClientSession() as session:
        clock = FixedClock(1_800_000_000.0)
        h = ActionsHandler(make_context(db, session, FakeSource(), clock=clock))
        try:
            doc = await h.pause(body)
        except CommandError as e:
            assert e.status == 400 and "\n" not in str(e) and str(e)
            assert await h.pause_state() == {"paused": False}
            return
        assert doc["paused"] and 1_800_000_000.0 < doc["until"] <= 1_800_000_000.0 + 7 * 86400
        assert isinstance(body, dict) and isinstance(body.get("reason"), str)
        assert doc["notice"].startswith("actions paused until ")
        assert (await h.pause_state())["until"] == doc["until"]


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
