"""What a deployment does not use is not imported: the clients for Sentry, MQTT, SMTP and
PostgreSQL, RE2 (for regular expressions in routes, silences and templates), replay and the
Kubernetes client cost memory in every process (bench/daemon.py --memory measures it), so they
load only when a setting or a rule asks for them.

Each check runs in a fresh interpreter (`sys.modules` of this test process is shared with every
other test) and looks at `sys.modules` after real work: the CLI parsed, a daemon started on
SQLite with alerts going pending -> firing -> resolved through the notification and action
subsystems, and a replay.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

OPTIONAL = ("sentry_sdk", "aiomqtt", "paho", "aiosmtplib", "asyncpg", "numpy", "re2",
            # our own: replay and backtest (the console's backtest, `watchdog replay`) and the
            # Kubernetes client (kubernetes steps)
            "watchdog.replay", "watchdog.backtest", "watchdog.actions.kube",
            # never, not only lazily: watchdog.schema and watchdog.settings replace them (13 MiB
            # of resident memory, bench/README.md); a test environment may still have them
            "pydantic", "pydantic_core", "pydantic_settings")


def loaded_after(code: str, tmp_path: Path) -> dict[str, bool]:
    script = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        print(json.dumps({{m: any(k == m or k.startswith(m + ".") for k in sys.modules)
                          for m in {OPTIONAL!r}}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    loaded: dict[str, bool] = json.loads(proc.stdout.strip().splitlines()[-1])
    return loaded


def test_the_cli_imports_no_optional_client(tmp_path: Path) -> None:
    loaded = loaded_after("""
        from watchdog.cli import build_parser, main
        build_parser().parse_args(["run"])
        assert main(["check", "."]) == 1  # no rule files: exit 1, and nothing optional loaded
    """, tmp_path)
    assert not any(loaded.values()), loaded


def test_watchdog_run_imports_no_optional_client(tmp_path: Path) -> None:
    # `watchdog run` as far as settings go: the CLI, the daemon module, every settings source
    # (a config file, the environment, a secrets directory) and the refusal of a bad one
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "WATCHDOG_API_TOKEN").write_text("t\n")
    (tmp_path / "w.yml").write_text("external_labels: {env: prod}\n")
    loaded = loaded_after(f"""
        import os
        from watchdog.cli import main
        os.environ.update({{"WATCHDOG_SECRETS_DIR": {str(tmp_path / "secrets")!r},
                           "WATCHDOG_EXTERNAL_LABELS__TEAM": "db",
                           "WATCHDOG_HTTP_LISTEN": "nowhere"}})
        assert main(["run", "--config", {str(tmp_path / "w.yml")!r}]) == 2
    """, tmp_path)
    assert not any(loaded.values()), loaded


def test_a_minimal_daemon_with_alerts_imports_no_optional_client(tmp_path: Path) -> None:
    # An alert that goes pending, fires and resolves runs through incidents, notifications and
    # actions (a webhook receiver and a webhook action exist): still no MQTT, SMTP, Sentry or
    # PostgreSQL client, since no setting or rule asks for one.
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yml").write_text(textwrap.dedent("""
        groups:
          - name: g
            interval: 10s
            rules:
              - {alert: Hot, expr: hot, for: 10s, actions: [hook]}
        actions:
          hook:
            steps: [{webhook: {url: "http://127.0.0.1:9/hook"}}]
        receivers:
          - {name: team, webhook: {url: "http://127.0.0.1:9/notify"}}
        routes:
          - {receivers: [team]}
    """))
    loaded = loaded_after(f"""
        import asyncio
        from pathlib import Path
        from watchdog.daemon import Daemon
        from watchdog.settings import Settings
        from watchdog.testing import FakeSource, FixedClock, sample

        async def main() -> None:
            tmp = Path({str(tmp_path)!r})
            s = Settings.load(None, rules_dir=tmp / "rules", state_url=f"sqlite:///{{tmp}}/s.db",
                              http_listen="127.0.0.1:0", rules_poll_interval=3600.0,
                              sentry_dsn=None, mqtt_url=None, dry_run=True)
            clock = FixedClock(1_000_000.0)
            src = FakeSource({{"hot": [sample(1.0, instance="a")]}})
            async with Daemon(s, clock=clock, source=src, schedule=False) as d:
                kinds = []
                for _ in range(3):
                    await d.evaluate_all()
                    kinds += [a.state for a in d.alerts() if a.rule == "Hot"]
                    clock.advance(10.0)
                src.answers["hot"] = []
                await d.evaluate_all()
                assert "firing" in kinds, kinds

        asyncio.run(main())
    """, tmp_path)
    assert not any(loaded.values()), loaded


def test_mqtt_is_imported_when_configured(tmp_path: Path) -> None:
    # The other side of the lazy import: the check above can fail. With MQTT_URL set the
    # daemon loads the client (it connects in the background; nobody listens on port 9).
    (tmp_path / "rules").mkdir()
    loaded = loaded_after(f"""
        import asyncio
        from pathlib import Path
        from watchdog.daemon import Daemon
        from watchdog.settings import Settings
        from watchdog.testing import FakeSource, FixedClock

        async def main() -> None:
            tmp = Path({str(tmp_path)!r})
            s = Settings.load(None, rules_dir=tmp / "rules", state_url=f"sqlite:///{{tmp}}/s.db",
                              http_listen="127.0.0.1:0", rules_poll_interval=3600.0,
                              mqtt_url="mqtt://127.0.0.1:9")
            async with Daemon(s, clock=FixedClock(1e6), source=FakeSource(), schedule=False):
                pass

        asyncio.run(main())
    """, tmp_path)
    assert loaded["aiomqtt"], loaded
