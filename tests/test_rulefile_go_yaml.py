"""The rule loader reads YAML as Prometheus's (go-yaml v3) does, and PrometheusRule manifests and
multi-document files load as they are. Where promtool has an opinion, it is the oracle."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watchdog.model import AlertingRule, RecordingRule
from watchdog.rulefile import parse_rule_file

TIERS = """\
groups:
  - name: tiers
    rules:
      - &base
        alert: ErrorRate
        expr: job:errors:ratio > 0.1
        for: 5m
        labels: {severity: warning, team: checkout}
        annotations: {summary: "errors at {{ $value }}"}
      - <<: *base
        expr: job:errors:ratio > 0.3
        labels: {severity: critical}
      - labels: {severity: page}
        <<: *base
"""

SCALARS = """\
groups:
  - name: scalars
    rules:
      - alert: Number
        expr: 1
        labels:
          job_name:
          flag: true
          hex: 0x10
          float: 1.50
          date: 2024-01-02
      - record: one
        expr: 1
"""


def _rules(text: str) -> list[AlertingRule | RecordingRule]:
    pf = parse_rule_file(text, "f.yml")
    assert pf.ok, [str(p) for p in pf.problems]
    assert pf.model is not None
    return list(pf.model.groups[0].rules)


def _promtool_check(tmp_path: Path, promtool: str, text: str) -> int:
    f = tmp_path / "rules.yml"
    f.write_text(text)
    return subprocess.run([promtool, "check", "rules", str(f)], capture_output=True).returncode


def test_merge_keys_explicit_keys_win_wherever_written() -> None:
    warn, crit, page = _rules(TIERS)
    assert isinstance(warn, AlertingRule) and isinstance(crit, AlertingRule)
    assert isinstance(page, AlertingRule)
    assert crit.expr == "job:errors:ratio > 0.3" and crit.for_ == 300
    assert crit.labels == {"severity": "critical"}  # a mapping is replaced, not deep-merged
    assert crit.annotations == warn.annotations
    assert page.labels == {"severity": "page"} and page.expr == warn.expr


@pytest.mark.prometheus
def test_merge_keys_agree_with_promtool(tmp_path: Path, promtool_binary: str) -> None:
    assert _promtool_check(tmp_path, promtool_binary, TIERS) == 0
    # an explicit key written twice is still a duplicate
    dup = TIERS.replace("{severity: critical}\n", "{severity: critical}\n        expr: up\n")
    assert _promtool_check(tmp_path, promtool_binary, dup) == 1
    pf = parse_rule_file(dup, "f.yml")
    assert not pf.ok and "duplicate key 'expr'" in str(pf.problems[0])


def test_scalars_in_string_fields_keep_their_text() -> None:
    alert, record = _rules(SCALARS)
    assert isinstance(alert, AlertingRule) and isinstance(record, RecordingRule)
    assert alert.expr == "1" and record.expr == "1"
    assert alert.labels == {"job_name": "", "flag": "true", "hex": "0x10", "float": "1.50",
                            "date": "2024-01-02"}


@pytest.mark.prometheus
def test_scalars_agree_with_promtool(tmp_path: Path, promtool_binary: str) -> None:
    assert _promtool_check(tmp_path, promtool_binary, SCALARS) == 0


@pytest.mark.prometheus
@pytest.mark.parametrize(("bad", "line"), [
    ("      - record: x\n        expr: 'up +'\n", 5),  # PromQL syntax in a recording rule
    ("      - record: 'not a name'\n        expr: up\n", 4),
    ("      - record: x\n        expr: up\n        labels: {__name__: y}\n", 6),
])
def test_bad_recording_rules_are_errors_like_promtool(tmp_path: Path, promtool_binary: str,
                                                      bad: str, line: int) -> None:
    text = "groups:\n  - name: g\n    rules:\n" + bad
    assert _promtool_check(tmp_path, promtool_binary, text) == 1
    pf = parse_rule_file(text, "f.yml")
    assert not pf.ok and pf.errors[0].line == line


MANIFEST = """\
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: checkout
  labels: {release: prometheus}
spec:
  groups:
    - name: checkout
      rules:
        - alert: CheckoutDown
          expr: up{job="checkout"} == 0
---
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata: {name: payments}
spec:
  groups:
    - name: payments
      rules:
        - alert: PaymentsDown
          expr: up{job="payments"} == (
"""


def test_prometheusrule_manifests_and_documents_load_with_lines_into_the_file() -> None:
    good = MANIFEST.replace("== (\n", "== 0\n")
    pf = parse_rule_file(good, "m.yaml")
    assert pf.ok and pf.model is not None
    assert [g.name for g in pf.model.groups] == ["checkout", "payments"]
    assert pf.line_of(("groups", 1, "rules", 0, "expr")) == 21
    bad = parse_rule_file(MANIFEST, "m.yaml")
    assert not bad.ok
    assert [p.line for p in bad.errors] == [21]
    assert "PaymentsDown" in bad.errors[0].message


def test_plain_documents_combine_and_other_kinds_are_refused() -> None:
    two = "groups:\n  - name: a\n    rules: []\n---\ngroups:\n  - name: b\n    rules: []\n"
    pf = parse_rule_file(two, "f.yml")
    assert pf.ok and pf.model is not None and [g.name for g in pf.model.groups] == ["a", "b"]
    same = two.replace("name: b", "name: a")
    dup = parse_rule_file(same, "f.yml")
    assert not dup.ok and dup.errors[0].line == 6 and "repeated" in dup.errors[0].message
    cm = parse_rule_file("apiVersion: v1\nkind: ConfigMap\ndata: {}\n", "cm.yaml")
    assert not cm.ok and cm.errors[0].line == 2 and "ConfigMap" in cm.errors[0].message


_names = st.sampled_from(["a", "b", "expr", "labels", "x"])
_values = st.one_of(st.integers(-5, 5), st.booleans(), st.none(),
                    st.text("abc xyz", max_size=4))


@settings(max_examples=60, deadline=None)
@given(base=st.dictionaries(_names, _values, max_size=4),
       over=st.dictionaries(_names, _values, max_size=4),
       merge_first=st.booleans())
def test_merge_keys_fuzz_explicit_over_merged(base: dict[str, object], over: dict[str, object],
                                              merge_first: bool) -> None:
    from watchdog.rulefile import load_yaml_with_lines

    def flow(d: dict[str, object]) -> str:
        def v(x: object) -> str:
            return "null" if x is None else ("true" if x is True else "false" if x is False
                                             else repr(x) if isinstance(x, str) else str(x))
        return "{" + ", ".join(f"{k}: {v(x)}" for k, x in d.items()) + "}"

    own = ", ".join(f"{k}: {flow({k: x})[len(k) + 3:-1]}" for k, x in over.items())
    merge = "<<: *b"
    body = ", ".join(p for p in ([merge, own] if merge_first else [own, merge]) if p)
    data, _ = load_yaml_with_lines(f"base: &b {flow(base)}\nitem: {{{body}}}\n")
    assert data["item"] == {**base, **over}
