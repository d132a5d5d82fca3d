"""`watchdog.interlocks.decide`, table-driven: the same function the daemon and replay use."""

from __future__ import annotations

from watchdog.interlocks import HOUR, History, PastRun, decide, effective_dry_run, lookback
from watchdog.model import Action

M = 60.0


def action(**kw: object) -> Action:
    return Action.model_validate({"steps": [{"wait": {"for": "1s"}}], **kw})


def test_never_twice_per_incident_even_without_cooldown() -> None:
    a = action()
    past = [PastRun("undo", 0.0, "fp", "fp@0")]
    v = decide("undo", a, 10 * HOUR, past, fingerprint="fp", incident_id="fp@0")
    assert not v.allowed and v.reason == "already_ran"
    assert decide("undo", a, 10 * HOUR, past, fingerprint="fp", incident_id="fp@99").allowed
    # another action's run of the same incident does not count
    assert decide("notify", a, 1.0, past, fingerprint="fp", incident_id="fp@0").allowed


def test_cooldown_is_per_alert_instance_from_the_last_start() -> None:
    a = action(cooldown="30m")
    past = [PastRun("undo", 0.0, "fp", "fp@0")]
    v = decide("undo", a, 29 * M, past, fingerprint="fp", incident_id="fp@2")
    assert not v.allowed and v.reason == "cooldown" and v.retry_at == 30 * M
    assert "29m ago; cooldown 30m" in v.detail
    assert decide("undo", a, 30 * M, past, fingerprint="fp", incident_id="fp@2").allowed
    assert decide("undo", a, 1 * M, past, fingerprint="other", incident_id="o@1").allowed


def test_max_runs_per_hour_across_instances() -> None:
    a = action(max_runs_per_hour=2)
    past = [PastRun("undo", 0.0, "a", "a@0"), PastRun("undo", 20 * M, "b", "b@0")]
    v = decide("undo", a, 30 * M, past, fingerprint="c", incident_id="c@0")
    assert not v.allowed and v.reason == "rate_limited" and v.retry_at == HOUR
    assert decide("undo", a, HOUR, past, fingerprint="c", incident_id="c@0").allowed


def test_manual_skips_incident_and_cooldown_but_not_the_rate_unless_forced() -> None:
    a = action(cooldown="1h", max_runs_per_hour=1)
    past = [PastRun("undo", 0.0, "fp", "fp@0")]
    v = decide("undo", a, M, past, manual=True)
    assert not v.allowed and v.reason == "rate_limited"
    assert decide("undo", a, M, past, manual=True, force=True).allowed
    assert decide("undo", action(cooldown="1h"), M, past, manual=True).allowed


def test_history_for_replay_and_lookback() -> None:
    a = action(cooldown="30m")
    h = History()
    verdicts = []
    for t in (0, 5, 10, 31, 32):
        verdicts.append(h.check_and_record("undo", a, t * M, fingerprint="fp",
                                           incident_id=f"fp@{t}"))
        h.resolved(f"fp@{t}")  # each flap resolves before the next: one instance at a time
    assert [v.allowed for v in verdicts] == [True, False, False, True, False]
    assert len(h.runs) == 2
    assert lookback(a) == 30 * M
    assert lookback(action(cooldown="10m", max_runs_per_hour=3)) == HOUR


def test_any_dry_run_switch_wins() -> None:
    assert not effective_dry_run(False, False)
    assert effective_dry_run(True, False) and effective_dry_run(False, True)
    assert effective_dry_run(False, False, requested=True)
