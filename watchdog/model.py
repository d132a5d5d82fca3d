"""The rules folder as typed models: groups and alerting rules (Prometheus-compatible, plus our
extensions), actions, receivers, routes and inhibition rules.

Pure data and validation: no I/O, no clock. Field names follow Prometheus/Alertmanager so that
their files load unchanged; every model forbids unknown keys so that a typo is reported at its line
instead of silently ignored.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from watchdog.durations import parse_duration
from watchdog.labels import RegexError, match_re_regexp
from watchdog.schema import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

Duration = Annotated[float, BeforeValidator(parse_duration)]


def _prometheus_duration(v: Any) -> Any:
    # Prometheus's own duration fields (`for`, `keep_firing_for`, a group's `interval` and
    # `query_offset`) read an empty value as zero, as Go's YAML decoder does: `for:` is `for: 0`.
    return 0.0 if v is None else parse_duration(v)


# A duration in one of Prometheus's own rule fields: like `Duration`, but empty means 0.
PromDuration = Annotated[float, BeforeValidator(_prometheus_duration)]

# Go's `int` on the 64-bit platforms Prometheus runs on.
GO_INT_MAX = 2**63 - 1


def _go_int(v: Any) -> Any:
    """An int the way Go's YAML decoder fills an `int` field: a whole number (an integral
    float too); never a boolean or a string, never past int64."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"expected a whole number, got {_type_name(v)}")
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError(f"expected a whole number, got {v!r}")
        v = int(v)
    if not -GO_INT_MAX - 1 <= v <= GO_INT_MAX:
        raise ValueError("number out of range (at most 9223372036854775807)")
    return v


def _type_name(v: Any) -> str:
    return {bool: "a boolean", str: "a string", list: "a list", dict: "a mapping",
            type(None): "nothing"}.get(type(v), type(v).__name__)


def _alertmanager_regex(pattern: str) -> str:
    # compiled (and cached) now, so a bad pattern is reported at its line by `watchdog check`
    # instead of failing every evaluation later; the message is Alertmanager's own
    try:
        match_re_regexp(pattern)
    except RegexError as e:
        raise ValueError(f"invalid regex {pattern!r}: {e}") from None
    return pattern


# A `match_re` value: Go RE2 syntax, anchored as in Alertmanager (see match_re_regexp).
AlertmanagerRegex = Annotated[str, AfterValidator(_alertmanager_regex)]

# Why a fixed rank: "the severity label is the highest tier met" needs an order that does not
# depend on how the author listed the tiers; unknown names rank by their position after these.
SEVERITY_RANK: dict[str, int] = {
    "none": 0, "info": 10, "low": 20, "warning": 30, "medium": 40, "high": 50, "error": 60,
    "major": 70, "critical": 80, "page": 90, "emergency": 100,
}

_COMPARISON = re.compile(
    r"^\s*(>=|<=|==|!=|>|<)\s*([-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|inf|Inf))\s*$"
)
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def check_label_names(labels: dict[str, str], what: str = "label") -> dict[str, str]:
    """Prometheus's rulefmt check: valid names, and never `__name__` on an alert's labels (an
    alert is not a metric; Prometheus refuses the rule)."""
    for k in labels:
        if not _LABEL_NAME.match(k) or (what == "label" and k == "__name__"):
            raise ValueError(f"invalid {what} name {k!r}")
    return labels


_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "==": operator.eq, "!=": operator.ne,
}


@dataclass(frozen=True)
class Comparison:
    """`> 0.10` — the operator and the number a value is compared with."""

    op: str
    number: float

    @classmethod
    def parse(cls, text: Any) -> Comparison:
        if isinstance(text, Comparison):
            return text
        m = _COMPARISON.match(str(text)) if isinstance(text, str) else None
        if m is None:
            raise ValueError(
                f"not a comparison: {text!r} (expected an operator and a number, e.g. \"> 0.10\")"
            )
        return cls(m.group(1), float(m.group(2)))

    def holds(self, value: float) -> bool:
        if math.isnan(value):
            return self.op == "!="
        return _OPS[self.op](value, self.number)

    def __str__(self) -> str:
        return f"{self.op} {self.number:g}"


ComparisonField = Annotated[Comparison, BeforeValidator(Comparison.parse)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Baseline(_Strict):
    offset: Duration | None = None
    expr: str | None = None
    deploy: bool = False
    compare: Literal["ratio", "delta"] = "ratio"

    @model_validator(mode="after")
    def _exactly_one(self) -> Baseline:
        given = [k for k, v in (("offset", self.offset), ("expr", self.expr),
                                ("deploy", self.deploy or None)) if v is not None]
        if len(given) != 1:
            raise ValueError("baseline needs exactly one of offset, expr or deploy: true")
        if self.offset is not None and self.offset <= 0:
            raise ValueError("baseline offset must be positive")
        return self


class Judge(_Strict):
    """A canary judge (CONTRACT §10, Kayenta's approach): samples of `canary` and `control`
    over `window` (a range query each, one sample per `step`), compared with a nonparametric
    test. The rule trips when the canary is worse in `direction` with p < `alpha`, each side has
    at least `min_samples` samples, and the effect — the relative difference of the medians,
    oriented so that worse is positive — is at least `min_effect`."""

    canary: str
    control: str
    window: Duration = 600.0
    # One sample per step: Prometheus's default scrape interval, so 10m gives 41 samples a side.
    step: Duration = 15.0
    test: Literal["mann_whitney"] = "mann_whitney"
    alpha: float = Field(0.05, gt=0.0, lt=1.0)
    direction: Literal["increase", "decrease", "either"] = "increase"
    min_samples: int = Field(20, ge=1)
    min_effect: float = Field(0.0, ge=0.0)

    @model_validator(mode="after")
    def _sizes(self) -> Judge:
        if self.window <= 0:
            raise ValueError("judge window must be positive")
        if not 0 < self.step <= self.window:
            raise ValueError("judge step must be positive and at most the window")
        return self


class AlertingRule(_Strict):
    alert: str
    expr: str
    for_: PromDuration = Field(0.0, alias="for")
    keep_firing_for: PromDuration = 0.0
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    # Extensions (CONTRACT §3)
    threshold: ComparisonField | None = None
    severities: dict[str, ComparisonField] | None = None
    baseline: Baseline | None = None
    when: str | None = None
    no_data: Literal["ok", "alerting", "keep"] = "ok"
    # A list runs at the lowest firing tier (when the alert starts firing); a map by tier runs
    # each tier's list when the alert reaches that tier (CONTRACT §9).
    actions: list[str] | dict[str, list[str]] = Field(default_factory=list)
    on_resolved: list[str] = Field(default_factory=list)
    dry_run: bool = False
    judge: Judge | None = None

    @model_validator(mode="before")
    @classmethod
    def _judge_expr(cls, v: Any) -> Any:
        # A judge's queries are its own; `expr` (what /api/v1/rules shows) defaults to the
        # canary's.
        if isinstance(v, dict) and "expr" not in v and isinstance(v.get("judge"), dict) \
                and isinstance(v["judge"].get("canary"), str):
            return {**v, "expr": v["judge"]["canary"]}
        return v

    @field_validator("alert")
    @classmethod
    def _alert_name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("alert name must not be empty")
        return v

    @field_validator("expr")
    @classmethod
    def _expr_present(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("expr must not be empty")
        return v

    @field_validator("labels", "annotations", mode="before")
    @classmethod
    def _stringify(cls, v: Any) -> Any:
        # Prometheus reads label values as strings; YAML may give `priority: 1`.
        if isinstance(v, dict):
            return {k: (str(x).lower() if isinstance(x, bool) else str(x))
                    if isinstance(x, int | float | bool) else x for k, x in v.items()}
        return v

    @field_validator("labels")
    @classmethod
    def _label_names(cls, v: dict[str, str]) -> dict[str, str]:
        return check_label_names(v)

    @field_validator("annotations")
    @classmethod
    def _annotation_names(cls, v: dict[str, str]) -> dict[str, str]:
        return check_label_names(v, "annotation")

    @field_validator("severities")
    @classmethod
    def _tiers(cls, v: dict[str, Comparison] | None) -> dict[str, Comparison] | None:
        if v is not None and not v:
            raise ValueError("severities needs at least one tier")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> AlertingRule:
        if self.threshold is not None and self.severities is not None:
            raise ValueError("use either threshold or severities, not both")
        if self.baseline is not None and self.threshold is None and self.severities is None:
            raise ValueError("baseline needs a threshold or severities to compare against")
        if self.severities is not None and "severity" in self.labels:
            raise ValueError("severities sets the severity label; remove labels.severity")
        if isinstance(self.actions, dict):
            if self.severities is None:
                raise ValueError("actions by tier need severities: on the rule (or use a list)")
            unknown = [t for t in self.actions if t not in self.severities]
            if unknown:
                raise ValueError(f"actions: tier {unknown[0]!r} is not one of the rule's "
                                 f"severities ({', '.join(self.severities)})")
        if self.judge is not None and (self.threshold is not None or self.baseline is not None
                                       or self.severities is not None):
            raise ValueError("a judge decides by itself: it takes no threshold, severities "
                             "or baseline")
        return self

    @property
    def action_names(self) -> list[str]:
        """Every action the rule starts while firing, each once, in the order written."""
        if isinstance(self.actions, dict):
            return list(dict.fromkeys(n for names in self.actions.values() for n in names))
        return list(self.actions)

    def actions_for(self, severity: str | None) -> list[str]:
        """What reaching `severity` starts: a tier's own list for a map; for a plain list,
        the whole list (it runs when the alert starts firing, at whatever tier that is)."""
        if isinstance(self.actions, dict):
            return list(self.actions.get(severity or "", []))
        return list(self.actions)

    @property
    def tiered(self) -> bool:
        return self.severities is not None

    def ranked_tiers(self) -> list[tuple[str, Comparison]]:
        """Tiers from the highest to the lowest severity."""
        assert self.severities is not None
        names = list(self.severities)
        def rank(name: str) -> tuple[int, int]:
            return (SEVERITY_RANK.get(name.lower(), -1), names.index(name))
        return sorted(self.severities.items(), key=lambda kv: rank(kv[0]), reverse=True)


class RecordingRule(_Strict):
    record: str
    expr: str
    labels: dict[str, str] = Field(default_factory=dict)


def _rule_kind(v: Any) -> str:
    if isinstance(v, dict):
        return "<recording rule>" if "record" in v and "alert" not in v else "<alerting rule>"
    return "<recording rule>" if isinstance(v, RecordingRule) else "<alerting rule>"


# A tagged union so that a validation error points into the one model the author meant.
RuleEntry = Annotated[
    Annotated[AlertingRule, Tag("<alerting rule>")]
    | Annotated[RecordingRule, Tag("<recording rule>")],
    Discriminator(_rule_kind),
]


class Group(_Strict):
    name: str
    interval: PromDuration | None = None
    limit: Annotated[int, BeforeValidator(_go_int)] = 0
    query_offset: PromDuration = 0.0
    labels: dict[str, str] = Field(default_factory=dict)
    rules: list[RuleEntry] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v:
            raise ValueError("group name must not be empty")  # promtool: Groupname must not…
        return v

    @field_validator("labels")
    @classmethod
    def _label_names(cls, v: dict[str, str]) -> dict[str, str]:
        return check_label_names(v)

    @field_validator("rules", mode="before")
    @classmethod
    def _null_rules(cls, v: Any) -> Any:
        return [] if v is None else v

    @field_validator("limit")
    @classmethod
    def _limit(cls, v: int) -> int:
        if v < 0:
            raise ValueError("limit must not be negative")
        return v

    @property
    def alerting_rules(self) -> list[AlertingRule]:
        return [r for r in self.rules if isinstance(r, AlertingRule)]

    def interval_or(self, default: float) -> float:
        return self.interval if self.interval else default


# ---- actions -------------------------------------------------------------------------------

class Retry(_Strict):
    """`retry: {attempts: 5, backoff: 2s}`: connection errors, timeouts, HTTP 5xx and 429 are
    tried again, up to `attempts` in all, waiting `backoff` doubled after each failure (or the
    server's Retry-After, when it gives one and asks for longer)."""

    attempts: int = Field(3, ge=1, le=20)
    backoff: Duration = 1.0
    max_backoff: Duration = 300.0

    @field_validator("backoff", "max_backoff")
    @classmethod
    def _non_negative(cls, v: float) -> float:
        if v < 0:
            raise ValueError("must not be negative")
        return v


class WebhookStep(_Strict):
    url: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    json_: Any = Field(None, alias="json")
    body: str | None = None
    timeout: Duration = 10.0  # bounds each attempt
    retry: Retry | None = None


class WaitStep(_Strict):
    for_: Duration = Field(alias="for")
    until: Literal["resolved"] | None = None


class RolloutUndo(_Strict):
    """`kubectl rollout undo deployment/NAME`, or with `rollout:` an Argo Rollouts `Rollout`
    (`kubectl argo rollouts undo NAME`)."""

    namespace: str = "default"
    deployment: str | None = None
    rollout: str | None = None
    to_revision: int | None = Field(None, ge=1)
    # The guard after promotion (argo-rollouts#1978): a Rollout fully promoted and healthy for
    # longer than this is not undone by automation — by then the "previous" revision is old
    # news and undoing it is a person's call. Rollouts only; 0 turns the guard off.
    stable_for_at_most: Duration = 3600.0

    @model_validator(mode="after")
    def _target(self) -> RolloutUndo:
        if (self.deployment is None) == (self.rollout is None):
            raise ValueError("rollout_undo needs exactly one of deployment, rollout")
        return self

    @property
    def target(self) -> str:
        return self.rollout if self.rollout is not None else (self.deployment or "")


class RolloutAbort(_Strict):
    """`kubectl argo rollouts abort NAME`: back to the stable ReplicaSet."""

    namespace: str = "default"
    rollout: str


class CanaryRollback(_Strict):
    """Flagger: open the rollback gate of the canary's flagger-loadtester (what `kubectl flagger
    rollback` does), through the API server's service proxy; the canary must have a `rollback`
    webhook pointing at that loadtester, which the step checks first."""

    namespace: str = "default"
    canary: str
    loadtester: str = "flagger-loadtester"  # the Service
    loadtester_namespace: str | None = None  # default: the canary's
    loadtester_port: int = Field(80, ge=1, le=65535)


class Scale(_Strict):
    namespace: str = "default"
    deployment: str
    replicas: int = Field(ge=0)


class SetImage(_Strict):
    namespace: str = "default"
    deployment: str
    container: str
    image: str


class KubernetesStep(_Strict):
    rollout_undo: RolloutUndo | None = None
    rollout_abort: RolloutAbort | None = None
    canary_rollback: CanaryRollback | None = None
    scale: Scale | None = None
    set_image: SetImage | None = None
    timeout: Duration = 30.0  # bounds each attempt (every API call of it)
    retry: Retry | None = None

    @model_validator(mode="after")
    def _one(self) -> KubernetesStep:
        given = (self.rollout_undo, self.rollout_abort, self.canary_rollback, self.scale,
                 self.set_image)
        if sum(x is not None for x in given) != 1:
            raise ValueError("kubernetes step needs exactly one of rollout_undo, rollout_abort, "
                             "canary_rollback, scale, set_image")
        return self


class CommandStep(_Strict):
    argv: list[str]
    timeout: Duration = 60.0
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("argv", mode="before")
    @classmethod
    def _argv_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            raise ValueError("argv must be a list of arguments, never a shell string")
        return v

    @field_validator("argv")
    @classmethod
    def _argv_nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("argv must not be empty")
        return v


class MqttStep(_Strict):
    topic: str
    payload: str = ""
    qos: Literal[0, 1, 2] = 0
    retain: bool = False
    timeout: Duration = 10.0  # bounds each attempt
    retry: Retry | None = None


class Step(_Strict):
    webhook: WebhookStep | None = None
    wait: WaitStep | None = None
    kubernetes: KubernetesStep | None = None
    command: CommandStep | None = None
    mqtt: MqttStep | None = None

    @model_validator(mode="after")
    def _one(self) -> Step:
        kinds = [k for k in ("webhook", "wait", "kubernetes", "command", "mqtt")
                 if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                "a step needs exactly one of webhook, wait, kubernetes, command, mqtt"
            )
        return self

    @property
    def kind(self) -> str:
        for k in ("webhook", "wait", "kubernetes", "command", "mqtt"):
            if getattr(self, k) is not None:
                return k
        raise AssertionError("validated to have one kind")

    @property
    def retry(self) -> Retry | None:
        for cfg in (self.webhook, self.kubernetes, self.mqtt):
            if cfg is not None:
                return cfg.retry
        return None

    @property
    def attempt_timeout(self) -> float | None:
        """What bounds one attempt of a step the runner may retry."""
        for cfg in (self.webhook, self.kubernetes, self.mqtt):
            if cfg is not None:
                return cfg.timeout
        return None


class Escalate(_Strict):
    """What happens when automation did not do it: `page` sends a critical notification to the
    routes matching severity=critical (a PagerDuty trigger); `action` starts the next action."""

    page: bool = False
    action: str | None = None

    @model_validator(mode="after")
    def _something(self) -> Escalate:
        if not self.page and self.action is None:
            raise ValueError("needs page: true, an action, or both")
        return self


class Action(_Strict):
    cooldown: Duration = 0.0
    max_runs_per_hour: int | None = Field(None, ge=1)
    # The target: never two runs for one lock key within `cooldown`, nor while the run holding
    # it is running or its incident is open (default: the action name + alert fingerprint).
    lock: str | None = None
    verify_for: Duration | None = None
    on_not_helped: Escalate | None = None
    on_failure: Escalate | None = None
    steps: list[Step] = Field(min_length=1)

    @field_validator("lock")
    @classmethod
    def _lock_text(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("lock must not be empty")
        return v

    @model_validator(mode="after")
    def _verify(self) -> Action:
        if self.on_not_helped is not None and self.verify_for is None:
            raise ValueError("on_not_helped needs verify_for (when to judge whether it helped)")
        return self

    def next_actions(self) -> list[str]:
        return [e.action for e in (self.on_not_helped, self.on_failure)
                if e is not None and e.action is not None]


# ---- receivers, routes, inhibition ---------------------------------------------------------

class SlackConfig(_Strict):
    webhook_url: str | None = None
    webhook_url_file: str | None = None
    channel: str | None = None
    username: str | None = None

    @model_validator(mode="after")
    def _url(self) -> SlackConfig:
        if (self.webhook_url is None) == (self.webhook_url_file is None):
            raise ValueError("slack needs exactly one of webhook_url, webhook_url_file")
        return self


class PagerDutyConfig(_Strict):
    routing_key: str | None = None
    routing_key_file: str | None = None
    url: str = "https://events.pagerduty.com/v2/enqueue"

    @model_validator(mode="after")
    def _key(self) -> PagerDutyConfig:
        if (self.routing_key is None) == (self.routing_key_file is None):
            raise ValueError("pagerduty needs exactly one of routing_key, routing_key_file")
        return self


class WebhookConfig(_Strict):
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Duration = 10.0


class AlertmanagerConfig(_Strict):
    url: str
    timeout: Duration = 10.0


class EmailConfig(_Strict):
    to: list[str] = Field(min_length=1)
    from_: str = Field(alias="from")
    smarthost: str
    auth_username: str | None = None
    auth_password_file: str | None = None
    require_tls: bool = True
    ca_file: str | None = None  # PEM bundle to verify the server with, instead of the system's
    insecure_skip_verify: bool = False  # STARTTLS without verifying the server's certificate


class MqttReceiverConfig(_Strict):
    topic: str
    qos: Literal[0, 1, 2] = 1
    retain: bool = False


class Receiver(_Strict):
    name: str
    slack: SlackConfig | None = None
    pagerduty: PagerDutyConfig | None = None
    webhook: WebhookConfig | None = None
    alertmanager: AlertmanagerConfig | None = None
    email: EmailConfig | None = None
    mqtt: MqttReceiverConfig | None = None

    @model_validator(mode="after")
    def _one(self) -> Receiver:
        kinds = [k for k in ("slack", "pagerduty", "webhook", "alertmanager", "email", "mqtt")
                 if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a receiver needs exactly one of slack, pagerduty, webhook, "
                             "alertmanager, email, mqtt")
        return self


class Escalation(_Strict):
    after: Duration
    receivers: list[str] = Field(min_length=1)


_CLOCK = re.compile(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])$")


class Digest(_Strict):
    """`digest: "09:00"` or `{at: "09:00", timezone: "Europe/Berlin"}` on a route: its alerts
    are not notified one by one; once a day its receivers get a summary of the day's incidents."""

    at: str
    timezone: str = "UTC"

    @model_validator(mode="before")
    @classmethod
    def _short(cls, v: Any) -> Any:
        return {"at": v} if isinstance(v, str) else v

    @field_validator("at")
    @classmethod
    def _clock(cls, v: str) -> str:
        if not _CLOCK.match(v.strip()):
            raise ValueError(f"expected a time of day like 09:00, got {v!r}")
        return v.strip()

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name like Europe/Berlin)"
                             ) from None
        return v

    @property
    def hour_minute(self) -> tuple[int, int]:
        h, mm = self.at.split(":")
        return int(h), int(mm)


class Route(_Strict):
    match: dict[str, str] = Field(default_factory=dict)
    match_re: dict[str, AlertmanagerRegex] = Field(default_factory=dict)
    receivers: list[str] = Field(min_length=1)
    group_by: list[str] = Field(default_factory=list)
    group_wait: Duration = 30.0
    group_interval: Duration = 300.0
    repeat_interval: Duration = 4 * 3600.0
    send_resolved: bool = True
    escalate: list[Escalation] = Field(default_factory=list)
    digest: Digest | None = None

    @model_validator(mode="after")
    def _digest_alone(self) -> Route:
        if self.digest is not None and self.escalate:
            raise ValueError("a route with a digest sends one summary a day: it cannot "
                             "escalate (use a second route without digest for paging)")
        return self


class InhibitRule(_Strict):
    source_match: dict[str, str] = Field(default_factory=dict)
    source_match_re: dict[str, AlertmanagerRegex] = Field(default_factory=dict)
    target_match: dict[str, str] = Field(default_factory=dict)
    target_match_re: dict[str, AlertmanagerRegex] = Field(default_factory=dict)
    equal: list[str] = Field(default_factory=list)


# ---- deploy reports (CONTRACT §10) ------------------------------------------------------------

_DECREASE = frozenset({"faster", "lower", "less", "fewer", "smaller", "cheaper", "down"})
_INCREASE = frozenset({"slower", "higher", "more", "greater", "larger", "up"})
_TARGET = re.compile(r"^\s*(>=|<=|>|<)\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*([A-Za-z]+)\s*$")


@dataclass(frozen=True)
class Goal:
    """What a report item must show after the deploy: its `stat` changed in the `better`
    direction by more than (`strict`) or at least `min_improvement` percent — negative for
    "no worse than": "< 5% slower" is lower-is-better with at least −5%."""

    better: Literal["lower", "higher"]
    min_improvement: float
    strict: bool
    text: str

    def met(self, change_pct: float) -> bool:
        improvement = -change_pct if self.better == "lower" else change_pct
        if self.strict:
            return improvement > self.min_improvement
        return improvement >= self.min_improvement

    @classmethod
    def parse(cls, text: str) -> Goal:
        """"> 10% faster", ">= 5% higher", "< 5% slower" (at most 5% worse), "< 2% lower"."""
        m = _TARGET.match(text)
        word = m.group(3).lower() if m else ""
        if m is None or word not in _DECREASE | _INCREASE:
            raise ValueError(f"not a target: {text!r} (e.g. \"> 10% faster\", \"< 5% slower\", "
                             "\">= 2% higher\")")
        op, pct = m.group(1), float(m.group(2))
        down = word in _DECREASE
        if op.startswith(">"):  # a change of at least pct in the word's direction
            return cls("lower" if down else "higher", pct, op == ">", text.strip())
        # "< pct slower": the change in that (worse) direction stays below pct
        return cls("higher" if down else "lower", -pct, op == "<", text.strip())


def _percent(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError("expected a percentage like 10%")
    if isinstance(v, int | float):
        try:
            return float(v)
        except OverflowError:  # an int past a float's range: bad input, not a crash
            raise ValueError("expected a percentage like 10%, got a number too large") from None
    if isinstance(v, str):
        try:
            return float(v.strip().removesuffix("%"))
        except ValueError:
            pass
    raise ValueError(f"expected a percentage like 10%, got {v!r}")


Percent = Annotated[float, BeforeValidator(_percent), Field(allow_inf_nan=False)]


class ReportQuery(_Strict):
    """A query a deploy report compares before and after the deploy (a marker's `report`, or
    a rule file's `reports:`). The target is either text ("> 10% faster") or `better` with an
    optional `min_change` (a percentage; negative allows that much worse)."""

    name: str = Field(min_length=1, max_length=200)
    query: str = Field(min_length=1)
    target: str | None = None
    better: Literal["lower", "higher"] | None = None
    min_change: Percent | None = None
    stat: Literal["mean", "p95"] = "mean"  # which figure the target is about
    service: str | None = None  # in a rule file: only markers of this service (default: all)

    @field_validator("target")
    @classmethod
    def _target(cls, v: str | None) -> str | None:
        if v is not None:
            Goal.parse(v)
        return v

    @model_validator(mode="after")
    def _one_target(self) -> ReportQuery:
        if self.target is not None and (self.better is not None or self.min_change is not None):
            raise ValueError("give either target or better/min_change, not both")
        if self.min_change is not None and self.better is None:
            raise ValueError("min_change needs better: lower or higher")
        return self

    @property
    def goal(self) -> Goal | None:
        if self.target is not None:
            return Goal.parse(self.target)
        if self.better is None:
            return None
        pct = self.min_change or 0.0
        text = (f"{self.better} by at least {pct:g}%" if pct >= 0
                else f"{self.better}, or at most {-pct:g}% worse")
        return Goal(self.better, pct, False, text)


# ---- SLOs (CONTRACT §10; Sloth's spec, see watchdog.slo) -------------------------------------

# Sloth's names for a service and an SLO: they become label values, the generated group's name
# and the text of the default annotations, so nothing a template or a matcher could misread.
_SLO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _slo_name(v: str) -> str:
    if not _SLO_NAME.match(v):
        raise ValueError(f"expected letters, digits, '_', '.' or '-' (starting with a letter or "
                         f"digit), got {v!r}")
    return v


SloName = Annotated[str, AfterValidator(_slo_name)]


def _string_values(v: Any) -> Any:
    # Label values are strings, as in a rule's labels (`tier: 1`).
    if isinstance(v, dict):
        return {k: (str(x).lower() if isinstance(x, bool) else str(x))
                if isinstance(x, int | float | bool) else x for k, x in v.items()}
    return v


StrMap = Annotated[dict[str, str], BeforeValidator(_string_values)]
LabelMap = Annotated[dict[str, str], BeforeValidator(_string_values),
                     AfterValidator(check_label_names)]


class SloAlertTier(_Strict):
    """Sloth's `page_alert` / `ticket_alert`: what the tier adds, or `disable: true`."""

    labels: LabelMap = Field(default_factory=dict)
    annotations: StrMap = Field(default_factory=dict)
    disable: bool = False


class SloAlerting(_Strict):
    name: str | None = None  # the alertname of both tiers (Sloth's); default <Service><Name>
    labels: LabelMap = Field(default_factory=dict)
    annotations: StrMap = Field(default_factory=dict)
    page_alert: SloAlertTier = Field(default_factory=SloAlertTier)
    ticket_alert: SloAlertTier = Field(default_factory=SloAlertTier)

    @field_validator("name")
    @classmethod
    def _named(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("alert name must not be empty")
        return v


class SliEvents(_Strict):
    error_query: str
    total_query: str


class Sli(_Strict):
    """The SLI as two queries with Sloth's `{{.window}}` in their range selectors: the bad
    events and all events. Written flat (`sli: {error_query, total_query}`) or as Sloth
    writes it (`sli: {events: {error_query, total_query}}`)."""

    events: SliEvents | None = None
    error_query: str | None = None
    total_query: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Sli:
        flat = (self.error_query, self.total_query)
        if self.events is not None and any(q is not None for q in flat):
            raise ValueError("write the queries either under events or directly, not both")
        if self.events is None and None in flat:
            raise ValueError("sli needs error_query and total_query (or events: {error_query, "
                             "total_query})")
        return self

    @property
    def queries(self) -> SliEvents:
        if self.events is not None:
            return self.events
        assert self.error_query is not None and self.total_query is not None
        return SliEvents(error_query=self.error_query, total_query=self.total_query)


class Slo(_Strict):
    """One SLO (Sloth's `slos[]` item plus its `service`): generates the multiwindow,
    multi-burn-rate alerts (`watchdog.slo`)."""

    service: SloName
    name: SloName
    objective: float  # a percentage: 99.9
    description: str = ""
    time_window: Duration = 30 * 86400.0  # the SLO period: what the error budget is over
    interval: PromDuration | None = None  # ours: the generated group's evaluation interval
    labels: LabelMap = Field(default_factory=dict)
    sli: Sli
    alerting: SloAlerting = Field(default_factory=SloAlerting)

    @field_validator("objective", mode="before")
    @classmethod
    def _percentage(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise ValueError(f"expected a percentage like 99.9, got {_type_name(v)}")
        try:
            x = float(v)
        except ValueError:
            raise ValueError(f"expected a percentage like 99.9, got {v!r}") from None
        if not 0.0 < x < 100.0:  # NaN fails this too
            raise ValueError(f"objective must be a percentage above 0 and below 100 (e.g. "
                             f"99.9), got {v!r}")
        return x

    @field_validator("time_window")
    @classmethod
    def _window(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("time_window must be positive (e.g. 30d)")
        return v

    @property
    def error_budget(self) -> float:
        """The error budget as a ratio, computed as Sloth computes it (100 − objective) / 100,
        so a threshold matches Sloth's to the last digit."""
        return (100.0 - self.objective) / 100.0

    @property
    def slo_id(self) -> str:
        return f"{self.service}-{self.name}"


class RuleFileModel(_Strict):
    """One YAML file of the rules folder; every top-level key is optional."""

    groups: list[Group] = Field(default_factory=list)
    actions: dict[str, Action] = Field(default_factory=dict)
    receivers: list[Receiver] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    inhibit_rules: list[InhibitRule] = Field(default_factory=list)
    slos: list[Slo] = Field(default_factory=list)
    reports: list[ReportQuery] = Field(default_factory=list)

    @field_validator("groups", "receivers", "routes", "inhibit_rules", "slos", "reports",
                     mode="before")
    @classmethod
    def _null_list(cls, v: Any) -> Any:
        return [] if v is None else v

    @field_validator("actions", mode="before")
    @classmethod
    def _null_map(cls, v: Any) -> Any:
        return {} if v is None else v

