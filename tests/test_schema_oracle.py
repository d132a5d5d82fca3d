"""watchdog.schema against pydantic as the oracle, the way promtool is the oracle for firing.

The promise of dropping pydantic: rule files, outbox documents and API bodies are accepted and
refused exactly as before, `watchdog check` shows the same problems at the same lines with the
same messages, and accepted values convert the same (pydantic's lax mode). So each models module
is loaded twice: as it is, and as its pydantic twin — its own source with the `watchdog.schema`
import made the same names from `pydantic`, nothing else changed (except, for the API requests,
`watchdog.model` made the model twin: they nest its models). Random documents, mostly right and
wrong in every way an author or a client gets them wrong, go through both: the same verdict;
when accepted, the same `model_dump()` (types and all); when refused, the same errors (loc,
type, message) in the same order. Real rule files (the corpus, rules/, the test data) too, read
by the loader as `watchdog check` reads them, down to the problems it prints.

Differences kept on purpose (asserted at the end, so that a change to them shows here):
- Python-only containers (sets, deques, generators) for a list or tuple field: no YAML or JSON
  document holds one and the package never passes one; pydantic takes them, watchdog.schema
  refuses them (`list_type`).
- Assigning to a frozen model raises TypeError, not pydantic's ValidationError (code, not
  data: tests/test_schema.py).

Tests only: pydantic is a dev dependency for this oracle and never imported by the package.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import re
import sys
import types
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watchdog import model as model_mod
from watchdog import rulefile, schema
from watchdog.actions import errors as action_errors
from watchdog.actions import handler as handler_mod
from watchdog.notify import message as message_mod

pydantic = pytest.importorskip("pydantic")

ROOT = Path(__file__).resolve().parent.parent


# ---- the twins ------------------------------------------------------------------------------

def _twin(module: types.ModuleType, swaps: dict[str, str] | None = None) -> types.ModuleType:
    """`module` exec'd again from its own source with `from watchdog.schema import` made
    `from pydantic import` (and each `swaps` import line's module replaced), as a module of its
    own in sys.modules so that pydantic resolves the postponed annotations in it."""
    path = Path(module.__file__ or "")
    source = path.read_text()
    source, n = re.subn(r"^from watchdog\.schema import", "from pydantic import", source,
                        flags=re.M)
    assert n == 1, f"{path}: expected one `from watchdog.schema import`"
    for old, new in (swaps or {}).items():
        source, n = re.subn(rf"^from {re.escape(old)} import", f"from {new} import", source,
                            flags=re.M)
        assert n == 1, f"{path}: expected one `from {old} import`"
    name = f"_oracle_twin.{module.__name__}"
    twin = types.ModuleType(name, module.__doc__)
    twin.__file__ = str(path)
    sys.modules[name] = twin
    exec(compile(source, str(path), "exec"), twin.__dict__)
    return twin


twin_model = _twin(model_mod)
twin_message = _twin(message_mod)
twin_handler = _twin(handler_mod, {"watchdog.model": twin_model.__name__})


# ---- one outcome per library, comparable -----------------------------------------------------

def _canon(v: Any) -> Any:
    """A value with its types made visible (1, 1.0 and True differ; NaN equals NaN; a tuple is
    not a list; dict order counts), dataclasses by name and fields (each twin has its own
    classes)."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return ("int", v)
    if isinstance(v, float):
        return ("float", "nan" if math.isnan(v) else repr(v))
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        return ["list", *(_canon(x) for x in v)]
    if isinstance(v, tuple):
        return ("tuple", *(_canon(x) for x in v))
    if isinstance(v, dict):
        return ("dict", *((_canon(k), _canon(x)) for k, x in v.items()))
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return (type(v).__name__, _canon({f.name: getattr(v, f.name)
                                          for f in dataclasses.fields(v)}))
    return (type(v).__name__, repr(v))


Errors = list[tuple[tuple[Any, ...], str, str]]


@dataclasses.dataclass
class Outcome:
    dump: Any = None  # when accepted: model_dump(), canonical
    errors: Errors | None = None  # when refused: (loc, type, msg) in the library's order
    raised: str | None = None  # neither: the exception's type (a model's own bug, for both)
    model: Any = None
    exc: Any = None


def _outcome(model: Any, data: Any) -> Outcome:
    try:
        got = model.model_validate(data)
    except (pydantic.ValidationError, schema.ValidationError) as e:
        return Outcome(errors=[(tuple(x["loc"]), x["type"], x["msg"]) for x in e.errors()],
                       exc=e)
    except Exception as e:  # compared: a model's own bug must show in both alike
        return Outcome(raised=type(e).__name__)
    return Outcome(dump=_canon(got.model_dump()), model=got)


def _show(errors: Errors | None) -> str:
    return "\n".join(f"    {loc} {t}: {m}" for loc, t, m in sorted(errors or [], key=repr))


def assert_same(ours: Any, theirs: Any, data: Any) -> tuple[Outcome, Outcome]:
    """Both models on `data`: the same verdict, dump, errors (loc, type, msg, in order)."""
    mine, oracle = _outcome(ours, data), _outcome(theirs, data)
    where = f"{ours.__name__} on {data!r}"
    assert mine.raised == oracle.raised, where
    assert (mine.errors is None) == (oracle.errors is None), (
        f"{where}: accepted by {'pydantic' if mine.errors else 'watchdog.schema'} only\n"
        f"  schema:\n{_show(mine.errors)}\n  pydantic:\n{_show(oracle.errors)}")
    if mine.errors is None:
        assert mine.dump == oracle.dump, f"{where}: dumps differ"
    else:
        assert Counter(mine.errors) == Counter(oracle.errors), (
            f"{where}: errors differ\n  schema:\n{_show(mine.errors)}\n"
            f"  pydantic:\n{_show(oracle.errors)}")
        # and in the same order: `watchdog check` and the API list them so
        assert mine.errors == oracle.errors, f"{where}: errors in another order"
    return mine, oracle


# ---- random values: mostly right, sometimes wrong in every way a document can be -------------

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)
_NUMBER_TEXT = ["5", " 5 ", "5.0", "5.00", "5.5", "1e3", "1E3", "1_000", "_1", "1__0", "1_",
                "+5", "-5", "-0", "+-1", "--1", "0x10", "007", "-007", "0_0", "00.0", "0.0",
                "1.", ".5", "-.5", "5.", "inf", "-inf", "+inf", "Inf", "nan", "-nan", "NaN",
                "infinity", "-Infinity", "1e309", "-1e309", "١٢", "5\n", "\t5\t", "\u00a05",
                "\u30005", "\x1c5", "5 5", "", " ", "9" * 25, "-" + "9" * 25, "1" + "0" * 20 + ".0",
                "1 000", "½"]
_BOOL_TEXT = ["yes", "no", "on", "off", "t", "f", "y", "n", "true", "false", "True", "FALSE",
              "Yes", "oN", " yes", "yes ", "1", "0", "2", "maybe", "ｙｅｓ"]
_BIG_INTS = [2**63 - 1, 2**63, -2**63, -2**63 - 1, 2**64, 2**1100, -(2**1100)]
_ODD_FLOATS = [0.0, -0.0, 1.0, 1.5, -1.0, 2.0, 1e20, -1e20, 1e300, 9.2e18, 9.3e18,
               math.inf, -math.inf, math.nan, 5e-324]

_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.integers(-2**70, 2**70),
    st.sampled_from(_BIG_INTS), st.floats(), st.sampled_from(_ODD_FLOATS),
    _TEXT, st.sampled_from(_NUMBER_TEXT), st.sampled_from(_BOOL_TEXT),
    st.binary(max_size=3), st.sampled_from([b"5", b"yes", b"\xff", b"ratio"]),
    st.dates(min_value=datetime.date(1970, 1, 1)),
    st.datetimes(min_value=datetime.datetime(1970, 1, 1)),
)
_shapes = st.one_of(_scalar, st.lists(_scalar, max_size=3),
                    st.dictionaries(st.one_of(_TEXT, st.integers(-2, 2), st.none()), _scalar,
                                    max_size=3))


# How often a value is wrong, drawn once per document: never (a whole valid document, deep
# into every model), now and then, or often (many problems in one document).
_WRONG_ONE_IN = st.shared(st.sampled_from([0, 40, 12, 4]), key="wrong_one_in")


def _mostly(valid: st.SearchStrategy[Any], wrong: st.SearchStrategy[Any] = _shapes
            ) -> st.SearchStrategy[Any]:
    """`valid`, or `wrong` as often as this document's `_WRONG_ONE_IN` says."""
    return _WRONG_ONE_IN.flatmap(
        lambda n: valid if n == 0 else st.integers(0, n - 1).flatmap(
            lambda i: valid if i else wrong))


def _leaf(valid: list[Any] | st.SearchStrategy[Any], odd: list[Any] | None = None
          ) -> st.SearchStrategy[Any]:
    """A field's value: mostly one of `valid`, else one of `odd` (what an author gets nearly
    right: "5" for 5, "yes" for true, a duration without unit) or anything at all."""
    good = st.sampled_from(valid) if isinstance(valid, list) else valid
    bad = st.one_of(st.sampled_from(odd), _shapes) if odd else _shapes
    return _mostly(good, bad)


def _doc(fields: dict[str, st.SearchStrategy[Any]], required: tuple[str, ...] = (),
         extra: tuple[str, ...] = (), one_of: tuple[str, ...] = ()) -> st.SearchStrategy[Any]:
    """A mapping for a model: the required keys (rarely one missing), one of the keys `one_of`
    names (a model that takes exactly one; rarely none or two), each other key half the time;
    sometimes an unknown key (or one of `extra`: a field's Python name, which populate_by_name
    accepts too); rarely not a mapping at all."""

    @st.composite
    def build(draw: Callable[..., Any]) -> Any:
        def wrong() -> bool:
            return bool(draw(_mostly(st.just(False), st.just(True))))

        chosen = draw(st.sampled_from(one_of)) if one_of else None
        out: dict[str, Any] = {}
        for key, strategy in fields.items():
            if key in required or key == chosen:
                if wrong():
                    continue  # missing
            elif key in one_of:
                if not wrong():
                    continue  # else a second one
            elif not draw(st.booleans()):
                continue
            out[key] = draw(strategy)
        if wrong():
            out[draw(st.sampled_from(("typo", "", "Name", *extra)))] = draw(_shapes)
        return out

    return _mostly(build())


def _lists(item: st.SearchStrategy[Any], max_size: int = 3) -> st.SearchStrategy[Any]:
    return _mostly(st.lists(item, min_size=1, max_size=max_size),
                   st.one_of(st.sampled_from([[], None]), _shapes))


def _maps(key: st.SearchStrategy[Any], value: st.SearchStrategy[Any], max_size: int = 3
          ) -> st.SearchStrategy[Any]:
    return _mostly(st.dictionaries(key, value, max_size=max_size),
                   st.one_of(st.none(), _shapes))


_durations = _leaf(["5m", "30s", "1h30m", "0", "0s", "1d", "2w", "10ms", "1.5h", "90s", 0, 0.0],
                   ["", "-5m", "5", "1y", "5m ", "abc", "99999999999y", "9223372036855ms",
                    5, 1.5, -1, True, None])
_comparisons = _leaf(["> 0.1", ">=5", "< 1", "== 0", "!= 1", " <= 2e3 ", "> -1"],
                     ["> inf", "> -Inf", ">", "0.1", "> abc", 1, 0.5, None])
_tiers = st.sampled_from(["warning", "critical", "info", "page", "custom", "Severity"])
_label_names = _mostly(st.sampled_from(["severity", "team", "job", "_ok", "tier"]),
                       st.sampled_from(["__name__", "9x", "a-b", "", "alertname", "é"]))
_label_values = _leaf(st.one_of(_TEXT, st.sampled_from(["api", "1", ""])),
                      [1, -2, 0.5, math.nan, True, False, None, ["x"]])
_labels = _maps(_label_names, _label_values)
_keys = _mostly(st.one_of(st.sampled_from(["rollback", "page", "scale-down", "api", "Api_1"]),
                          st.text("abc_-", min_size=1, max_size=5)),
                st.sampled_from(["", " ", "a b", "é"]))
_names = _mostly(_keys, st.one_of(st.sampled_from([1, True, None]), _shapes))
_name_lists = _mostly(st.lists(_names, max_size=3))
_bools = _leaf([True, False, "yes", "no", "true", "False", 0, 1, 1.0, "on", "OFF"],
               ["maybe", 2, 0.5, " yes", "", None])
_exprs = _leaf(st.one_of(st.sampled_from(["up == 0", "rate(x[5m]) > 1", "1", "x"]),
                        _TEXT.map(lambda t: "x" + t)),
               ["", " ", None, 1])
_ints = _leaf(st.integers(0, 30), ["5", "5.0", " 7 ", "1e3", "-1", "1_000", 1.0, 2.5, 2**63,
                                   True, -1, None, 1e20])
_floats = _leaf(st.floats(0.001, 0.999), ["0.01", "0.5", "1e-3", "nan", "inf", 0, 1, True,
                                          None, -0.5, 1.5])
_texts = _leaf(_TEXT)

_baselines = _doc({"offset": _durations, "expr": _exprs, "deploy": _bools,
                   "compare": _leaf(["ratio", "delta"], ["Ratio", "diff"])},
                  one_of=("offset", "expr", "deploy"))
_judges = _doc({"canary": _exprs, "control": _exprs, "window": _durations, "step": _durations,
                "test": _leaf(["mann_whitney"], ["t_test"]), "alpha": _floats,
                "direction": _leaf(["increase", "decrease", "either"], ["up"]),
                "min_samples": _ints, "min_effect": _floats},
               required=("canary", "control"))
_severities = _leaf(st.dictionaries(_tiers, _comparisons, max_size=3), [{}, None])
_alerting = _doc({
    "alert": _names, "expr": _exprs, "for": _durations, "keep_firing_for": _durations,
    "labels": _labels, "annotations": _labels, "threshold": _comparisons,
    "severities": _severities, "baseline": _baselines, "when": _exprs,
    "no_data": _leaf(["ok", "alerting", "keep"], ["OK", "error"]),
    "actions": st.one_of(_name_lists, _maps(_tiers, _name_lists, 2)), "on_resolved": _name_lists,
    "dry_run": _bools, "judge": _judges},
    required=("alert", "expr"), extra=("for_", "record"))
_recording = _doc({"record": _names, "expr": _exprs, "labels": _labels},
                  required=("record", "expr"), extra=("alert", "for"))
_groups = _doc({"name": _names, "interval": _durations, "limit": _ints,
                "query_offset": _durations, "labels": _labels,
                "rules": _lists(st.one_of(_alerting, _recording), 4)},
               required=("name",))

_retries = _doc({"attempts": _ints, "backoff": _durations, "max_backoff": _durations})
_webhook_steps = _doc({"url": _texts, "method": _leaf(["GET", "POST"], ["post", "HEAD"]),
                       "headers": _labels, "json": _shapes, "body": _texts,
                       "timeout": _durations, "retry": _retries},
                      required=("url",), extra=("json_",))
_waits = _doc({"for": _durations, "until": _leaf(["resolved", None], ["fixed"])},
              required=("for",), extra=("for_",))
_namespaces = _leaf(["default", "prod"], [""])
_kube = _doc({
    "rollout_undo": _doc({"namespace": _namespaces, "deployment": _names, "rollout": _names,
                          "to_revision": _leaf([None, 1, 3], [0, "2", 1.0, -1]),
                          "stable_for_at_most": _durations},
                         one_of=("deployment", "rollout")),
    "rollout_abort": _doc({"namespace": _namespaces, "rollout": _names}, required=("rollout",)),
    "canary_rollback": _doc({"namespace": _namespaces, "canary": _names, "loadtester": _names,
                             "loadtester_namespace": _names,
                             "loadtester_port": _leaf([80, 8080, 65535], [0, 65536, "80"])},
                            required=("canary",)),
    "scale": _doc({"namespace": _namespaces, "deployment": _names, "replicas": _ints},
                  required=("deployment", "replicas")),
    "set_image": _doc({"namespace": _namespaces, "deployment": _names, "container": _names,
                       "image": _names}, required=("deployment", "container", "image")),
    "timeout": _durations, "retry": _retries},
    one_of=("rollout_undo", "rollout_abort", "canary_rollback", "scale", "set_image"))
_commands = _doc({"argv": st.one_of(_name_lists, _texts), "timeout": _durations,
                  "env": _labels}, required=("argv",))
_qos = _leaf([0, 1, 2], [3, -1, "1", "0", 1.0, 0.0, True, False, 2**63, -(2**63) - 1])
_mqtt_steps = _doc({"topic": _names, "payload": _texts, "qos": _qos, "retain": _bools,
                    "timeout": _durations, "retry": _retries}, required=("topic",))
_steps = _doc({"webhook": _webhook_steps, "wait": _waits, "kubernetes": _kube,
               "command": _commands, "mqtt": _mqtt_steps},
              one_of=("webhook", "wait", "kubernetes", "command", "mqtt"))
_escalates = _doc({"page": _bools, "action": _leaf([None, "page"], [""])})
_actions = _doc({"cooldown": _durations, "max_runs_per_hour": _leaf([None, 1, 10], [0, "5"]),
                 "lock": _leaf([None, "{{ $labels.job }}"], ["", " "]),
                 "verify_for": _leaf(["5m", None], ["x"]),
                 "on_not_helped": _escalates, "on_failure": _escalates,
                 "steps": _lists(_steps)},
                required=("steps",))

_urls = _leaf(["https://hooks.example/x", "http://[::1]:9/"], [""])
_receivers = _doc({
    "name": _names,
    "slack": _doc({"webhook_url": _urls, "webhook_url_file": _names, "channel": _names,
                   "username": _names}, one_of=("webhook_url", "webhook_url_file")),
    "pagerduty": _doc({"routing_key": _names, "routing_key_file": _names, "url": _urls},
                      one_of=("routing_key", "routing_key_file")),
    "webhook": _doc({"url": _urls, "headers": _labels, "timeout": _durations}, required=("url",)),
    "alertmanager": _doc({"url": _urls, "timeout": _durations}, required=("url",)),
    "email": _doc({"to": _name_lists, "from": _names, "smarthost": _names,
                   "auth_username": _names, "auth_password_file": _names, "require_tls": _bools,
                   "ca_file": _names, "insecure_skip_verify": _bools},
                  required=("to", "from", "smarthost"), extra=("from_",)),
    "mqtt": _doc({"topic": _names, "qos": _qos, "retain": _bools}, required=("topic",))},
    required=("name",), one_of=("slack", "pagerduty", "webhook", "alertmanager", "email", "mqtt"))
_regexes = _leaf(["api|web", ".*", "(?i)x", "\\d+", "", "x+"],
                 ["(", "a{1001}", "[z-a]", "(?P<n>x)", "x**", 1, None])
_matchers_re = _maps(_label_names, _regexes)
_clock = _leaf(["09:00", "9:00", " 23:59 ", "0:00"], ["24:00", "09:60", "0900", "", "noon", 9])
_zones = _leaf(["UTC", "Europe/Berlin", "Asia/Kolkata"],
               ["America", "", "../x", "Mars/Base", "Factory"])
_digests = st.one_of(_clock, _doc({"at": _clock, "timezone": _zones}, required=("at",)))
_routes = _doc({"match": _labels, "match_re": _matchers_re, "receivers": _name_lists,
                "group_by": _name_lists, "group_wait": _durations,
                "group_interval": _durations, "repeat_interval": _durations,
                "send_resolved": _bools,
                "escalate": _lists(_doc({"after": _durations, "receivers": _name_lists},
                                        required=("after", "receivers")), 2),
                "digest": _digests},
               required=("receivers",))
_inhibits = _doc({"source_match": _labels, "source_match_re": _matchers_re,
                  "target_match": _labels, "target_match_re": _matchers_re,
                  "equal": _name_lists})

_slo_names = _leaf(["api", "checkout-v2", "a.b_c", "X9"], ["-x", "", "a b", "Ünï", 5])
_objectives = _leaf([99.9, 99, "99.9", 95.5, 50], ["99.9%", 0, 100, -1, "nan", "inf", True,
                                                   None, [99], 1e400, "1e400", ""])
_tier_docs = _doc({"labels": _labels, "annotations": _labels, "disable": _bools})
_slos = _doc({
    "service": _slo_names, "name": _slo_names, "objective": _objectives,
    "description": _texts, "time_window": _durations, "interval": _durations,
    "labels": _labels,
    "sli": _doc({"events": _doc({"error_query": _exprs, "total_query": _exprs},
                                required=("error_query", "total_query")),
                 "error_query": _exprs, "total_query": _exprs},
                one_of=("events", "error_query")),
    "alerting": _doc({"name": _leaf([None, "ApiDown"], ["", " "]), "labels": _labels,
                      "annotations": _labels, "page_alert": _tier_docs,
                      "ticket_alert": _tier_docs})},
    required=("service", "name", "objective", "sli"))
_percents = _leaf([10, 2.5, "10%", " 5 % ", "-3", -3], ["x%", "nan", "inf", True, None, "1e400",
                                                        math.nan, math.inf])
_reports = _doc({"name": _mostly(_names, st.text(min_size=199, max_size=201)),
                 "query": _exprs,
                 "target": _leaf(["> 10% faster", "< 5% slower", ">= 2% higher", None],
                                 ["10% faster", "> 10% sideways"]),
                 "better": _leaf(["lower", "higher", None], ["up"]),
                 "min_change": _percents, "stat": _leaf(["mean", "p95"], ["p99"]),
                 "service": _leaf([None, "api"], [""])},
                required=("name", "query"))


def _rule_file(**parts: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return _doc(parts, required=tuple(parts), extra=("group", "templates"))


# ---- rule files ----------------------------------------------------------------------------

_PROPERTY = settings(max_examples=300, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _check_as_watchdog_check_does(data: Any) -> None:
    """`data` as YAML through the loader (lines, Go's string reading) and both models: the same
    problems, as `watchdog check` prints them, in the same order."""
    try:
        text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
        loaded, where = rulefile._load_documents(text)
    except (yaml.YAMLError, rulefile.DuplicateKeyError, rulefile._NotRules,
            rulefile._LimitExceeded):
        return  # not a document the loader takes: nothing to compare
    if not isinstance(loaded, dict):
        return
    rulefile._go_strings(loaded, where.raw)
    mine, oracle = assert_same(model_mod.RuleFileModel, twin_model.RuleFileModel, loaded)
    if mine.exc is not None:
        ours, theirs = ([str(p) for p in sorted(
            rulefile._schema_problems("f.yml", got.exc, where.lines), key=lambda p: p.line)]
            for got in (mine, oracle))
        assert ours == theirs


@_PROPERTY
@given(_rule_file(groups=_lists(_groups)))
def test_groups_and_rules_as_pydantic(data: Any) -> None:
    assert_same(model_mod.RuleFileModel, twin_model.RuleFileModel, data)
    _check_as_watchdog_check_does(data)


@_PROPERTY
@given(_rule_file(actions=_mostly(st.dictionaries(_keys, _actions, min_size=1, max_size=3),
                                  st.sampled_from([{}, None]))))
def test_actions_as_pydantic(data: Any) -> None:
    assert_same(model_mod.RuleFileModel, twin_model.RuleFileModel, data)
    _check_as_watchdog_check_does(data)


@_PROPERTY
@given(_rule_file(receivers=_lists(_receivers), routes=_lists(_routes),
                  inhibit_rules=_lists(_inhibits)))
def test_receivers_routes_inhibitions_as_pydantic(data: Any) -> None:
    assert_same(model_mod.RuleFileModel, twin_model.RuleFileModel, data)
    _check_as_watchdog_check_does(data)


@_PROPERTY
@given(_rule_file(slos=_lists(_slos), reports=_lists(_reports)))
def test_slos_and_reports_as_pydantic(data: Any) -> None:
    assert_same(model_mod.RuleFileModel, twin_model.RuleFileModel, data)
    _check_as_watchdog_check_does(data)


# ---- real rule files -----------------------------------------------------------------------

CORPUS = ROOT.parent / "shared" / "corpus"
_REAL_DIRS = [CORPUS, ROOT / "rules", ROOT / "tests" / "data"]


def _real_files() -> list[Path]:
    return sorted(f for d in _REAL_DIRS if d.is_dir()
                  for f in d.rglob("*") if f.suffix in (".yml", ".yaml") and f.is_file())


def test_real_rule_files_as_pydantic() -> None:
    """Every YAML file of the corpus, rules/ and the test data through the loader as
    `watchdog check` reads it, then both models: the same verdict, dump and problems."""
    files = _real_files()
    assert files, "no rule files found"
    accepted = refused = 0
    for path in files:
        try:
            data, where = rulefile._load_documents(path.read_text())
        except (UnicodeDecodeError, yaml.YAMLError, rulefile.DuplicateKeyError,
                rulefile._NotRules, rulefile._LimitExceeded):
            continue  # refused before the models: nothing to compare
        data = {} if data is None else data
        if not isinstance(data, dict):
            continue
        rulefile._go_strings(data, where.raw)
        mine, oracle = assert_same(model_mod.RuleFileModel, twin_model.RuleFileModel, data)
        if mine.exc is None:
            accepted += 1
            continue
        refused += 1
        name = str(path.relative_to(path.parents[1]))
        ours = [str(p) for p in rulefile._schema_problems(name, mine.exc, where.lines)]
        theirs = [str(p) for p in rulefile._schema_problems(name, oracle.exc, where.lines)]
        assert ours == theirs, path
    # most are rule files both take; the broken ones and promtool's test files are refused
    assert accepted >= 100 and refused >= 3, (accepted, refused)


# ---- outbox documents ----------------------------------------------------------------------

_times = _leaf(st.floats(0, 2e9), [0, 1_700_000_000, "1700000000", "1.7e9", None, math.nan,
                                   math.inf, True])
_maybe_times = _leaf(st.one_of(st.none(), st.floats(0, 2e9)), [5, "5", math.nan])
_maybe_floats = _leaf(st.one_of(st.none(), st.floats()), [1, "0.5", "", True, 2**1100])
_counts = _leaf(st.integers(0, 1000), ["3", "3.0", 3.0, 3.5, True, -1, None, 1e20, "1e3"])
_opt_texts = _leaf(st.one_of(st.none(), _TEXT), [b"x", 1, True])
_notes = _doc({"action": _keys, "kind": _leaf(["started", "succeeded", "failed"]),
               "at": _times, "step": _opt_texts, "detail": _texts, "run_id": _opt_texts,
               "page": _bools}, required=("action", "kind", "at"))
_alert_docs = _doc({
    "fingerprint": _keys, "rule": _keys, "group": _keys, "labels": _labels,
    "annotations": _labels, "status": _leaf(["firing", "resolved"], ["Firing", "pending"]),
    "starts_at": _times, "fired_at": _maybe_times, "ends_at": _maybe_times,
    "value": _maybe_floats, "severity": _opt_texts, "threshold": _opt_texts,
    "baseline": _maybe_floats, "compared": _maybe_floats, "generator_url": _texts,
    "incident_id": _texts, "acked": _bools, "actions": _lists(_notes),
    "series_dedup": _bools},
    required=("fingerprint", "rule", "group", "labels", "status", "starts_at"))
_digest_items = _doc({"id": _keys, "rule": _keys, "labels": _labels, "severity": _opt_texts,
                      "fired_at": _times, "resolved_at": _maybe_times, "acked_by": _opt_texts,
                      "actions": _lists(_keys)},
                     required=("id", "rule", "fired_at"))
_digest_docs = _doc({
    "scope": _texts, "start": _times, "end": _times, "timezone": _zones, "count": _counts,
    "resolved": _counts, "open": _counts, "mttr": _maybe_floats, "longest": _digest_items,
    "actions": _maps(_keys, _counts), "items": _lists(_digest_items), "more": _counts},
    required=("scope", "start", "end", "timezone", "count", "resolved", "open", "mttr",
              "longest"))
_figures = _doc({"mean": _maybe_floats, "p95": _maybe_floats, "samples": _counts},
                required=("mean", "p95", "samples"))
_report_items = _doc({"name": _keys, "labels": _labels, "before": _figures, "after": _figures,
                      "change": _maps(st.sampled_from(["mean", "p95"]), _maybe_floats),
                      "target": _opt_texts, "stat": _texts, "verdict": _opt_texts},
                     required=("name",))
_report_docs = _doc({"id": _keys, "service": _keys, "version": _keys, "at": _times,
                     "days": _times, "complete": _bools, "items": _lists(_report_items),
                     "errors": _lists(_labels), "truncated": _bools},
                    required=("id", "service", "version", "at", "days"))
_notifications = _doc({
    "kind": _leaf(["firing", "resolved", "repeated", "escalated", "action", "digest", "report"],
                  ["Firing", "page"]),
    "receiver": _keys, "group_key": _texts, "created_at": _times, "group_labels": _labels,
    "alerts": _lists(_alert_docs), "external_url": _texts,
    "level": _leaf([None, 2, 3], ["2", 2.0, 2.5, True]), "escalated_after": _maybe_times,
    "previous_severity": _opt_texts, "action": _notes, "action_labels": _labels,
    "digest": _digest_docs, "report": _report_docs, "paused": _opt_texts},
    required=("kind", "receiver", "group_key", "created_at"))


@_PROPERTY
@given(_notifications)
def test_outbox_documents_as_pydantic(data: Any) -> None:
    mine, oracle = assert_same(message_mod.Notification, twin_message.Notification, data)
    if isinstance(data, dict) and all(isinstance(k, str) for k in data):
        # the pipeline builds documents with the constructor: the same as model_validate
        built = []
        for model in (message_mod.Notification, twin_message.Notification):
            try:
                built.append(_canon(model(**data).model_dump()))
            except (pydantic.ValidationError, schema.ValidationError) as e:
                built.append([(tuple(x["loc"]), x["type"], x["msg"]) for x in e.errors()])
        assert built[0] == built[1]
    if mine.model is None:
        return
    # The outbox stores the JSON: the same document by value, and what pydantic wrote (the
    # rows queued before the upgrade) reads back as what we write
    ours, theirs = mine.model.model_dump_json(), oracle.model.model_dump_json()
    assert _canon(json.loads(ours)) == _canon(json.loads(theirs))
    assert message_mod.Notification.model_validate_json(theirs) == \
        message_mod.Notification.model_validate_json(ours)


# ---- API request bodies --------------------------------------------------------------------

_json_texts = st.one_of(_TEXT, st.sampled_from(["\ud800", "a\udfff", "", " ", "x" * 201]))
_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _json_texts,
                       st.sampled_from(_NUMBER_TEXT + _BOOL_TEXT))
_json = st.recursive(_json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_json_texts, inner, max_size=3)), max_leaves=8)
_api_texts = _leaf(st.one_of(_keys, _json_texts), [None, 1, True, []])
_api_labels = _maps(_json_texts, _leaf(_json_texts, [1, None, True]))
_run_requests = _doc({"action": _api_texts, "labels": _api_labels, "force": _bools,
                      "dry_run": _bools, "request_id": _json}, extra=("for_", "dryRun"))
_pause_requests = _doc({"until": _json, "for": _json, "reason": _api_texts, "by": _api_texts,
                        "request_id": _json},
                       required=("reason",), extra=("for_",))
_deploy_requests = _doc({
    "id": _api_texts, "service": _api_texts, "version": _api_texts, "labels": _api_labels,
    "window": _leaf(["30m", None, "1h"], ["", "5", 5, 0]), "on_fail": _lists(_api_texts),
    "report": _mostly(st.lists(_reports, max_size=3), st.lists(st.just({"name": "n", "query": "q"}),
                                                                min_size=19, max_size=22)),
    "report_days": _leaf([None, 0, 7, 7.5, 90], [-1, 91, "7", math.nan, math.inf, True]),
    "request_id": _json},
    required=("service", "version"))


def _command(handler: Any, request: str, body: Any) -> Any:
    """The request as the HTTP API and MQTT commands parse it: a dump, or the error text."""
    try:
        got = handler._parse(getattr(handler, request), body)
    except action_errors.CommandError as e:
        return ("refused", str(e))
    return ("accepted", _canon(got.model_dump()))


@_PROPERTY
@given(st.sampled_from(["RunRequest", "PauseRequest", "DeployRequest"]).flatmap(
    lambda r: st.tuples(st.just(r), {"RunRequest": _run_requests,
                                     "PauseRequest": _pause_requests,
                                     "DeployRequest": _deploy_requests}[r])))
def test_api_requests_as_pydantic(request_and_body: tuple[str, Any]) -> None:
    request, body = request_and_body
    if isinstance(body, dict):
        assert_same(getattr(handler_mod, request), getattr(twin_handler, request), body)
    # what the caller reads: the same message, the problems in the same order
    assert _command(handler_mod, request, body) == _command(twin_handler, request, body)


# ---- scalars, one field at a time -----------------------------------------------------------

# Text that is nearly a number or a boolean: signs, points, exponents, underscores, blanks, zeros
_numberish = st.one_of(
    st.from_regex(r"\A[ \t\n]?[+-]{0,2}[0-9_]{0,5}(\.[0-9_]{0,3})?([eE][+-]?[0-9]{0,3})?"
                  r"[ \t\n]?\Z"),
    st.from_regex(r"\A[+-]?(inf|infinity|nan|[0-9]{18,22})\Z", fullmatch=True).map(
        lambda t: t.upper() if len(t) % 2 else t),
    st.sampled_from(["yes", "no", "on", "off", "true", "false", "t", "f", "y", "n", "1", "0"])
    .flatmap(lambda w: st.sampled_from([w, w.upper(), w.title(), f" {w}", f"{w}\n"])),
    st.sampled_from(_NUMBER_TEXT), st.text(max_size=3), st.sampled_from(["\ud800", "1\udc00"]),
)
_any_scalar = st.one_of(_scalar, _numberish,
                        _numberish.map(lambda t: t.encode("utf-8", "surrogatepass")))

# (model, the fields it requires, the field under test), from every kind of scalar the models use
_SCALAR_FIELDS: list[tuple[str, str, dict[str, Any], str]] = [
    ("message", "ReportFigures", {"mean": 1.0, "p95": 1.0, "samples": 1}, "mean"),  # float
    ("message", "ReportFigures", {"mean": 1.0, "p95": 1.0, "samples": 1}, "samples"),  # int
    ("message", "ActionNote", {"action": "a", "kind": "k", "at": 1.0}, "page"),  # bool
    ("message", "ActionNote", {"action": "a", "kind": "k", "at": 1.0}, "step"),  # str | None
    ("message", "Notification", {"kind": "firing", "receiver": "r", "group_key": "g",
                                 "created_at": 1.0}, "level"),  # int | None
    ("message", "Notification", {"kind": "firing", "receiver": "r", "group_key": "g",
                                 "created_at": 1.0}, "kind"),  # a text literal
    ("model", "MqttStep", {"topic": "t"}, "qos"),  # an int literal
    ("model", "Retry", {}, "attempts"),  # int, 1..20
    ("model", "Judge", {"canary": "a", "control": "b"}, "alpha"),  # float, (0, 1)
    ("model", "Judge", {"canary": "a", "control": "b"}, "min_effect"),  # float, >= 0
    ("model", "RolloutUndo", {"deployment": "d"}, "to_revision"),  # int | None, >= 1
    ("model", "ReportQuery", {"name": "n", "query": "q", "better": "lower"}, "min_change"),
    ("model", "ReportQuery", {"query": "q"}, "name"),  # str, 1..200 characters
    ("model", "EmailConfig", {"to": ["a"], "from": "b", "smarthost": "c"}, "require_tls"),
    ("model", "Slo", {"service": "s", "name": "n", "sli": {"error_query": "e",
                                                          "total_query": "t"}}, "objective"),
    ("handler", "DeployRequest", {"service": "s", "version": "v"}, "report_days"),
    ("handler", "RunRequest", {}, "action"),  # str | None, at least 1 character
    ("handler", "PauseRequest", {}, "reason"),  # str, 1..500 characters
]
_TWINS = {"message": (message_mod, twin_message), "model": (model_mod, twin_model),
          "handler": (handler_mod, twin_handler)}


@_PROPERTY
@given(st.sampled_from(_SCALAR_FIELDS), _any_scalar)
def test_scalars_as_pydantic(case: tuple[str, str, dict[str, Any], str], value: Any) -> None:
    module, model, required, field = case
    ours, theirs = _TWINS[module]
    assert_same(getattr(ours, model), getattr(theirs, model), {**required, field: value})


# ---- the differences kept on purpose ---------------------------------------------------------

def test_python_only_containers_are_the_one_difference() -> None:
    for value in ({"api"}, frozenset({"api"})):
        data = {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up",
                                                     "actions": value}]}]}
        assert twin_model.RuleFileModel.model_validate(data).groups[0].rules[0].actions == \
            ["api"]
        with pytest.raises(schema.ValidationError) as e:
            model_mod.RuleFileModel.model_validate(data)
        assert [(err["loc"][-1], err["type"]) for err in e.value.errors()] == [
            ("list[str]", "list_type"), ("dict[str,list[str]]", "dict_type")]
