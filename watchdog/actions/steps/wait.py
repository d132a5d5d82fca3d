"""The `wait` step's decisions: when it ends, and — with `until: resolved` — whether the sequence
goes on after it (staged rollback: "disable the newest feature, watch 30 minutes, go further
only if it is still bad").

Pure functions over the alert state; the waiting itself is the runner's, which persists the
deadline so a restart resumes the same wait. No I/O, no clock.

Why the alert is judged at the deadline and not the moment it resolves: a flapping alert
resolves and fires again within minutes, and its re-fire is a new incident that the action's
cooldown keeps from starting another run. Ending the sequence at the first resolution would make
the next stage unreachable exactly when it is needed; watching the whole window and asking "is it
firing now?" at its end is what the runbooks describe.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from watchdog.actions.expand import Subject
from watchdog.model import WaitStep
from watchdog.state import Alert


def deadline(step: WaitStep, started_at: float) -> float:
    return started_at + step.for_


def still_firing(subject: Subject, alerts: Iterable[Alert],
                 rules_using_action: Collection[str] = ()) -> bool:
    """Is what the run acts for still firing? For an alert-triggered run: that alert instance
    (same rule and fingerprint, whichever incident). For a manual run, which belongs to no
    alert: any firing alert of a rule that lists this action whose labels include the labels
    the run was given."""
    for a in alerts:
        if a.state != "firing":
            continue
        if subject.fingerprint is not None:
            if a.rule == subject.rule and a.fingerprint == subject.fingerprint:
                return True
        elif a.rule in rules_using_action and all(
                a.labels.get(k) == v for k, v in subject.labels.items()):
            return True
    return False
