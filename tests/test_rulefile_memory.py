"""A loaded rule file keeps little besides its rules (bench/daemon.py --memory): the line of
every node is read from the text only when a problem or an SLO needs one, and the heap freed by
loading is handed back to the OS. The lines given must be the same either way."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from watchdog.app import heap
from watchdog.rulefile import parse_rule_file
from watchdog.rulesdir import build

GOOD = textwrap.dedent("""\
    groups:
      - name: g
        rules:
          - alert: A
            expr: up == 0
            actions: [restart]
    actions:
      restart:
        steps: [{webhook: {url: "http://127.0.0.1:9/x"}}]
""")


def test_a_good_file_never_builds_its_lines() -> None:
    pf = parse_rule_file(GOOD, "a.yml")
    assert pf.ok
    lines = pf.lines
    assert not getattr(lines, "built", True), "lines were built for a file without problems"
    assert pf.line_of(("groups", 0, "rules", 0, "expr")) == 5  # read from the text on demand


def test_a_bad_file_gets_the_same_lines_as_before() -> None:
    pf = parse_rule_file(GOOD.replace("expr: up == 0", "expr: up ==") + textwrap.dedent("""\
        receivers:
          - {name: team, webhook: {url: "http://127.0.0.1:9/n"}}
          - {name: team, webhook: {url: "http://127.0.0.1:9/n"}}
    """), "b.yml")
    assert not pf.ok
    assert any(p.line == 5 and "PromQL" in p.message for p in pf.problems), pf.problems
    twice = [p for p in pf.problems if "defined twice" in p.message]
    assert [p.line for p in twice] == [12], pf.problems
    assert "first on line 11" in twice[0].message


def test_repeated_group_names_point_at_both_lines() -> None:
    pf = parse_rule_file("groups:\n  - name: g\n    rules: []\n  - name: g\n    rules: []\n",
                         "c.yml")
    [p] = [p for p in pf.problems if "repeated" in p.message]
    assert p.line == 4 and "first on line 2" in p.message


def test_a_kept_file_broken_by_another_still_names_its_own_line() -> None:
    # a.yml uses `restart`, defined in b.yml; b.yml then drops it: a.yml (kept from the last
    # build, lines not held) is told about line 6, its `actions:` item.
    a = GOOD.split("actions:\n  restart")[0]
    b = "actions:\n  restart:\n    steps: [{webhook: {url: \"http://127.0.0.1:9/x\"}}]\n"
    first = build({"a.yml": a.encode(), "b.yml": b.encode()})
    assert first.status["a.yml"].ok and first.status["b.yml"].ok
    second = build({"a.yml": a.encode(), "b.yml": b"actions: {}\n"}, first)
    [p] = [p for p in second.status["a.yml"].problems if "undefined action" in p.message]
    assert p.line == 6


def test_heap_release_works_on_this_linux() -> None:
    assert heap.release() is True  # glibc's malloc_trim is found and called


def test_a_load_and_a_changing_reload_release_the_heap(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from watchdog.daemon import Daemon
    from watchdog.settings import Settings
    from watchdog.testing import FakeSource, FixedClock

    calls: list[int] = []
    monkeypatch.setattr(heap, "release", lambda: calls.append(1) or True)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.yml").write_text(GOOD.split("            actions")[0])

    async def run() -> None:
        s = Settings.load(None, rules_dir=rules, state_url=f"sqlite:///{tmp_path}/s.db",
                          http_listen="127.0.0.1:0", rules_poll_interval=3600.0)
        async with Daemon(s, clock=FixedClock(1_000_000.0), source=FakeSource({}),
                          schedule=False) as d:
            assert len(calls) == 1  # after the load at start
            await d.reload()
            assert len(calls) == 1  # nothing changed: nothing to give back
            (rules / "b.yml").write_text("groups: [{name: h, rules: [{alert: B, expr: up}]}]\n")
            await d.reload()
            assert len(calls) == 2

    asyncio.run(run())
