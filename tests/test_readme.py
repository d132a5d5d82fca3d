"""The README stays true: its YAML loads, its settings table matches the code."""

from __future__ import annotations

import re
from pathlib import Path

from watchdog.rulesdir import build
from watchdog.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_yaml_is_valid_together() -> None:
    """The rule example refers to the action the actions example defines."""
    blocks = re.findall(r"```yaml\n(.*?)```", README, re.S)
    assert len(blocks) >= 2, "the README lost its rule or action example"
    raw = {f"README.md#{i}": b.encode() for i, b in enumerate(blocks)}
    rs = build(raw)
    assert [str(p) for p in rs.problems] == []
    assert any(r.alert == "CheckoutErrorRate" and r.threshold is not None
               for _, g in rs.groups() for r in g.alerting_rules)
    assert [s.kind for s in rs.actions["rollback-checkout"].steps] == [
        "webhook", "wait", "kubernetes", "command", "mqtt"]


def test_settings_table_matches_the_code() -> None:
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", section, re.M))
    fields = {name.upper() for name in Settings.model_fields}
    assert documented == fields, (sorted(fields - documented), sorted(documented - fields))


def test_settings_defaults_in_the_table_match() -> None:
    s = Settings()
    section = README.split("## Configuration", 1)[1]
    assert f"| `PROMETHEUS_URL` | `{s.prometheus_url}` |" in section
    assert f"| `HTTP_LISTEN` | `{s.http_listen}` |" in section
    assert s.evaluation_interval == 30.0 and "| `EVALUATION_INTERVAL` | `30s` |" in section
