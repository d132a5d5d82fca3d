"""`watchdog check`: every problem as `file:line: message`, exit 1; good folders exit 0; no input
crashes the loader."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watchdog.cli import main
from watchdog.rulefile import parse_rule_file
from watchdog.rulesdir import build, load

ROOT = Path(__file__).resolve().parent.parent
BROKEN = ROOT / "tests" / "data" / "broken"
# shared/ sits beside the repository, here and in CI; WATCHDOG_TEMPLATE_CORPUS overrides it
CORPUS = Path(os.environ.get("WATCHDOG_TEMPLATE_CORPUS",
                             ROOT.parent / "shared" / "corpus" / "awesome-prometheus-alerts"))

EXPECTED = {
    # every problem in one run: schema, PromQL, references and names together
    "bad_schema_and_promql.yml": [
        "5: expr: invalid PromQL in rule 'A': unclosed left parenthesis",
        "6: groups[0].rules[0].for: not a valid duration: '5x'",
        "13: groups[0].rules[1].fro: unknown field",
        "14: rule 'B' refers to undefined action 'nope'",
        "15: group 'g' is repeated in the same file (first on line 2)",
    ],
    "bad_comparison.yml": ["6: groups[0].rules[0].threshold: not a comparison: 'bigger than 3'",
                           "11: route refers to undefined receiver 'ghost'"],
    "bad_yaml.yml": ["5: invalid YAML"],
    "duplicate_key.yml": ["2: duplicate key 'groups' (first defined on line 1)"],
    "undefined_action.yml": ["6: rule 'Fine' refers to undefined action 'nope'"],
    "bad_template.yml": ["8: annotations.broken: invalid template in rule 'T'"],
    "dup_group_and_receiver.yml": [
        "4: receiver 'chat' is defined twice (first on line 2)",
        "9: group 'same' is repeated in the same file (first on line 7)",
    ],
    "bad_route.yml": [
        "2: route refers to undefined receiver 'nobody'",
        "4: escalation refers to undefined receiver 'ghost'",
    ],
}


def test_each_broken_file_reports_file_and_line(capsys: object) -> None:
    rc = main(["check", str(BROKEN)])
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert rc == 1
    lines = out.splitlines()
    for name, expected in EXPECTED.items():
        mine = [line for line in lines if line.startswith(f"{BROKEN / name}:")]
        assert len(mine) == len(expected), (name, mine)
        for got, want in zip(mine, expected, strict=True):
            assert got.startswith(f"{BROKEN / name}:{want}"), (got, want)


def test_recording_rules_are_a_warning_not_an_error(tmp_path: Path, capsys: object) -> None:
    f = tmp_path / "r.yml"
    f.write_text("groups:\n- name: g\n  rules:\n  - record: job:up:sum\n    expr: sum(up)\n")
    assert main(["check", str(f)]) == 0
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert f"{f}:4: warning: recording rule 'job:up:sum' skipped" in err


def test_example_rules_pass() -> None:
    proc = subprocess.run([sys.executable, "-m", "watchdog", "check", str(ROOT / "rules")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ""


def test_every_corpus_file_loads() -> None:
    if not CORPUS.is_dir():
        message = f"rule corpus not found at {CORPUS}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    files = sorted(CORPUS.glob("*.yml"))
    assert len(files) == 112
    rs = load([CORPUS])
    assert [str(p) for p in rs.problems] == []
    assert sum(len(g.alerting_rules) for _, g in rs.groups()) == 954


def test_last_good_version_keeps_running() -> None:
    good = b"groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up == 0\n"
    first = build({"rules/a.yml": good})
    second = build({"rules/a.yml": b"groups:\n- name: g\n  rules:\n  - alert: A\n    expr: (\n"},
                   first)
    st_ = second.status["rules/a.yml"]
    assert not st_.ok and st_.running_previous
    assert [g.name for _, g in second.groups()] == ["g"]
    assert "rules/a.yml:5: expr: invalid PromQL" in str(st_.problems[0])


def test_an_unchanged_file_is_checked_as_on_a_fresh_load() -> None:
    # An unchanged file is not parsed again at a reload: the cross-file checks must still find
    # what a fresh load finds, at the same lines: here the action and receiver it uses moved
    # away from b.yml.
    a = (b"groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up == 0\n"
         b"    labels: {team: x}\n    annotations: {summary: s}\n    actions: [fix]\n"
         b"routes:\n- receivers: [chat]\n  escalate:\n  - {after: 5m, receivers: [chat]}\n")
    b = (b"actions:\n  fix:\n    steps: [{webhook: {url: 'http://x/'}}]\n"
         b"receivers:\n- {name: chat, webhook: {url: 'http://x/'}}\n")
    first = build({"r/a.yml": a, "r/b.yml": b})
    assert all(st_.ok for st_ in first.status.values())
    gone = b"groups: []\n"
    reloaded = build({"r/a.yml": a, "r/b.yml": gone}, first)
    fresh = build({"r/a.yml": a, "r/b.yml": gone})
    assert [str(p) for p in reloaded.status["r/a.yml"].problems] == \
        [str(p) for p in fresh.status["r/a.yml"].problems] == [
            "r/a.yml:8: rule 'A' refers to undefined action 'fix'",
            "r/a.yml:10: route refers to undefined receiver 'chat'",
            "r/a.yml:12: escalation refers to undefined receiver 'chat'"]


yaml_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
              st.text(max_size=20)),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(
            ["groups", "name", "rules", "alert", "expr", "for", "labels", "annotations",
             "threshold", "severities", "baseline", "actions", "steps", "receivers", "routes",
             "webhook", "offset", "keep_firing_for", "x"]), children, max_size=5)),
    max_leaves=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_loader_never_crashes_on_text(text: str) -> None:
    pf = parse_rule_file(text, "fuzz.yml")
    assert pf.ok or pf.errors


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(yaml_like)
def test_loader_never_crashes_on_structures(doc: object) -> None:
    import yaml

    text = yaml.safe_dump(doc)
    pf = parse_rule_file(text, "fuzz.yml")
    for p in pf.problems:
        assert p.file == "fuzz.yml" and p.line >= 1 and p.message


# Durations at the edges of Prometheus's grammar: non-ASCII digits (Python's \d takes them, Go's
# [0-9] does not) and time.Duration's range (int64 nanoseconds: 292 years fit, 293 do not).
DURATION_EDGES = ["292y", "293y", "106751d", "106752d", "9223372036854ms", "9223372036855s",
                  "٣m", "1y52w", "0", "5m30s"]


@pytest.mark.prometheus
@pytest.mark.parametrize("duration", DURATION_EDGES)
def test_rule_durations_are_accepted_exactly_when_promtool_accepts_them(
        duration: str, tmp_path: Path, promtool_binary: str) -> None:
    f = tmp_path / "r.yml"
    f.write_text("groups:\n- name: g\n  rules:\n  - alert: A\n    expr: vector(1)\n"
                 f"    for: {duration}\n", encoding="utf-8")
    oracle = subprocess.run([promtool_binary, "check", "rules", str(f)], capture_output=True,
                            text=True)
    ours = subprocess.run([sys.executable, "-m", "watchdog", "check", str(f)],
                          capture_output=True, text=True)
    assert (ours.returncode == 0) == (oracle.returncode == 0), (oracle.stdout + oracle.stderr,
                                                                ours.stdout + ours.stderr)


TIER_PROBLEMS = """groups:
  - name: g
    rules:
      - alert: PlainListOnTiers
        expr: up
        severities: {warning: "> 1", critical: "> 2"}
        actions: [fix]
      - alert: MapWithoutTiers
        expr: up
        threshold: "> 1"
        actions: {critical: [fix]}
      - alert: UnknownTier
        expr: up
        severities: {warning: "> 1"}
        actions: {critical: [fix]}
      - alert: Refs
        expr: up
        severities: {warning: "> 1"}
        actions: {warning: [ghost]}
        on_resolved: [phantom]
actions:
  fix:
    lock: "deploy/{{ $labels.deployment"
    on_not_helped: {page: true, action: nobody}
    steps: [{webhook: {url: "http://x"}}]
  lonely:
    on_not_helped: {page: true}
    steps: [{kubernetes: {rollout_undo: {namespace: a}}}]
"""


def test_check_reports_tier_lock_and_escalation_problems_at_their_lines(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "tiers.yml"
    f.write_text(TIER_PROBLEMS)
    assert main(["check", str(f)]) == 1
    captured = capsys.readouterr()
    out = captured.out + captured.err  # warnings go to stderr, with the summary
    got = sorted(line.removeprefix(f"{f}:") for line in out.splitlines()
                 if line.startswith(str(f)))
    assert got == sorted([
        "7: warning: rule 'PlainListOnTiers' has severities but a plain list of actions: they "
        "run once, when it starts firing (at its lowest firing tier), never when it gets "
        "worse; to act per tier write actions: {warning: [...], ...}",
        "8: groups[0].rules[1]: actions by tier need severities: on the rule (or use a list)",
        "12: groups[0].rules[2]: actions: tier 'critical' is not one of the rule's severities "
        "(warning)",
        "19: rule 'Refs' refers to undefined action 'ghost'",
        "20: rule 'Refs' refers to undefined action 'phantom'",
        "22: actions.fix: on_not_helped needs verify_for (when to judge whether it helped)",
        "23: lock: invalid template in action 'fix': template: 1:28: unclosed action",
        "24: action 'fix': on_not_helped refers to undefined action 'nobody'",
        "28: actions.lonely.steps[0].kubernetes.rollout_undo: rollout_undo needs exactly one of "
        "deployment, rollout",
    ]), out
