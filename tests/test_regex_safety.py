"""User-supplied regular expressions run on RE2: linear time, Go's syntax, Go's errors.

Every pattern a rule author or an API caller writes (template `match` and `reReplaceAll`, route
and inhibit-rule `match_re`, regex silence matchers) is compiled by `watchdog.labels.go_regexp`.
Python's backtracking `re` needs about 2^n steps for `(a+)+$` against n a's and a b, which
would stall the daemon's event loop; RE2 is linear.  These tests assert on results; the deadline
only turns a regression into a failure instead of a hang (Python's `re` checks for signals, so
the alarm interrupts it), and it is generous enough never to flake.

Byte-for-byte agreement with Go (Prometheus 2.42) is checked against promtool in
tests/test_templates_corpus.py; the few Go behaviours here do not need promtool.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import pytest

from watchdog.cli import main
from watchdog.gotmpl import TemplateData, TemplateError, compile_template, expand
from watchdog.labels import (
    RegexError,
    alertmanager_match,
    alertmanager_regexp,
    go_regexp,
    matches,
)
from watchdog.model import InhibitRule, Route
from watchdog.notify.silences import MAX_REGEX_LENGTH, InputError, Matcher, parse_matchers
from watchdog.schema import ValidationError

EVIL = "(a+)+$"
NOT_QUITE = "a" * 5000 + "b"  # about 2^5000 backtracking steps for Python's re
DEADLINE = 10.0  # seconds; RE2 needs a few milliseconds, backtracking would need hours: a
# bound far from both, so a loaded CI machine cannot fail it


class _TooSlow(Exception):
    pass


@contextmanager
def deadline(seconds: float = DEADLINE) -> Iterator[None]:
    def expire(signum: int, frame: FrameType | None) -> None:
        raise _TooSlow

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.perf_counter()
    try:
        yield
    except _TooSlow:
        pytest.fail(f"matching took more than {seconds}s: catastrophic backtracking?")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.perf_counter() - start < seconds


def _render(text: str, **labels: str) -> str:
    return expand(text, TemplateData(labels=labels, value=1.0), alert_name="T")


# --------------------------------------------------------------------------- linear time


def test_template_match_is_linear() -> None:
    with deadline():
        assert _render('{{ match "(a+)+$" .Labels.x }}', x=NOT_QUITE) == "false"
        assert _render('{{ match "(a+)+$" .Labels.x }}', x=NOT_QUITE[:-1]) == "true"


def test_template_re_replace_all_is_linear() -> None:
    text = "x" * 5000 + "z"
    with deadline():
        assert _render('{{ reReplaceAll "(x+x+)+y" "-" .Labels.x }}', x=text) == text
        replaced = _render('{{ reReplaceAll "(x+x+)+z" "<$1>" .Labels.x }}', x=text)
        assert replaced == "<" + "x" * 5000 + ">"


def test_route_match_re_is_linear() -> None:
    route = Route(receivers=["chat"], match_re={"x": EVIL})
    with deadline():
        assert not matches({"x": NOT_QUITE}, route.match, route.match_re)
        assert matches({"x": NOT_QUITE[:-1]}, route.match, route.match_re)


def test_inhibit_rule_match_re_is_linear() -> None:
    rule = InhibitRule(source_match_re={"x": EVIL}, target_match_re={"y": "(.*a){20}"})
    with deadline():
        assert not matches({"x": NOT_QUITE}, rule.source_match, rule.source_match_re)
        assert not matches({"y": "a" * 19 + "b" * 5000}, rule.target_match, rule.target_match_re)


def test_silence_regex_is_linear() -> None:
    (matcher,) = parse_matchers([{"name": "x", "value": EVIL, "isRegex": True}])
    negated = Matcher("x", EVIL, is_regex=True, is_equal=False)
    with deadline():
        assert not matcher.matches({"x": NOT_QUITE})
        assert matcher.matches({"x": NOT_QUITE[:-1]})
        assert negated.matches({"x": NOT_QUITE})


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("(a)" * 5000, "<a>" + "a" * 1000),
        ("(?P<n>a)" * 5000, "<a>" + "a" * 1000),
        ("(a*)*" * 3000, "<" + "a" * 6000 + ">"),  # as in Go: the first star takes all
    ],
)
def test_many_groups_stay_cheap(pattern: str, expected: str) -> None:
    # RE2 tracks every capture group of a match (seconds and gigabytes for these); a boolean
    # match needs none, and reReplaceAll only those its replacement names
    text = "a" * 6000
    with deadline():
        assert go_regexp(pattern).match_string(text)
        replaced = _render('{{ reReplaceAll .Labels.p "<$1>" .Labels.x }}', p=pattern, x=text)
    assert replaced == expected


def test_silence_patterns_from_the_api_are_bounded() -> None:
    # RE2 needs memory in proportion to the pattern before it refuses one as too large
    hosts = "|".join(f"host-{i:03}" for i in range(500))
    assert len(hosts) > MAX_REGEX_LENGTH
    with pytest.raises(InputError, match=r"matchers\[0\]\.value: a regex may be at most 4096"):
        parse_matchers([{"name": "instance", "value": hosts, "isRegex": True}])
    (m,) = parse_matchers([{"name": "instance", "value": hosts[:4000], "isRegex": True}])
    assert m.matches({"instance": "host-007"})
    (literal,) = parse_matchers([{"name": "instance", "value": hosts}])  # not a regex: no limit
    assert literal.matches({"instance": hosts})


def test_compiled_patterns_and_results_are_cached() -> None:
    # matching runs on every evaluation: compile each pattern once, match each value once
    route = Route(receivers=["chat"], match_re={"svc": "api-[0-9]+"})
    go_regexp.cache_clear()
    alertmanager_match.cache_clear()
    for _ in range(2):
        for i in range(50):
            assert matches({"svc": f"api-{i}"}, route.match, route.match_re)
    assert go_regexp.cache_info()[:2] == (49, 1)  # (hits, misses)
    assert alertmanager_match.cache_info()[:2] == (50, 50)


# --------------------------------------------------------------------------- RE2 syntax


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ('{{ match "^\\\\p{Lu}+$" "ÉTÉ" }}|{{ match "^\\\\p{Lu}+$" "été" }}', "true|false"),
        ('{{ reReplaceAll "(?U)a+" "-" "baaac" }}', "b---c"),  # ungreedy: one a per match
        ('{{ match "\\\\Q.*\\\\E" "a.*b" }}|{{ match "\\\\Q.*\\\\E" "ab" }}', "true|false"),
        ('{{ match "prod(?i)-EU" "prod-eu" }}|{{ match "(?i)PROD(?-i)-EU" "prod-eu" }}',
         "true|false"),
        ('{{ reReplaceAll "\\\\pL+" "<$0>" "héllo 漢字 42" }}', "<héllo> <漢字> 42"),
        # Go tries matches only at rune boundaries (RE2 alone would find \B inside "é")
        ('{{ match "\\\\B" "aéb" }}|{{ reReplaceAll "\\\\B" "-" "aébc" }}', "false|aéb-c"),
        # a repeated group name: Go expands the first group of that name that took part
        ('{{ reReplaceAll "(?P<n>a)|(?P<n>b)" "[$n]" "ab" }}', "[a][b]"),
    ],
)
def test_templates_take_go_re2_syntax(template: str, expected: str) -> None:
    assert _render(template) == expected


def test_route_and_silence_take_go_re2_syntax() -> None:
    route = Route(receivers=["chat"], match_re={"team": "\\p{Lu}\\pL+", "env": "prod(?i)-EU"})
    assert matches({"team": "Ärzte", "env": "prod-eu"}, route.match, route.match_re)
    assert not matches({"team": "ärzte", "env": "prod-eu"}, route.match, route.match_re)
    (m,) = parse_matchers([{"name": "path", "value": "\\Q/a.b\\E(/.*)?", "isRegex": True}])
    assert m.matches({"path": "/a.b/c"}) and not m.matches({"path": "/axb"})


def test_regexes_are_anchored_the_way_alertmanager_anchors_them() -> None:
    # A silence's matcher is ^(?:PATTERN)$, so "a)|(b" means "starts with a or ends with b";
    # a match_re value is anchored twice (amtool agrees), so there it means "a" or "b".
    (silence,) = parse_matchers([{"name": "x", "value": "a)|(b", "isRegex": True}])
    route = Route(receivers=["chat"], match_re={"x": "a)|(b"})
    values = ("a", "b", "ax", "xb", "x")
    assert [silence.matches({"x": v}) for v in values] == [True, True, True, True, False]
    assert [matches({"x": v}, {}, route.match_re) for v in values] == [
        True, True, False, False, False]
    assert not alertmanager_regexp("api").match_string("api-2")  # fully anchored
    assert alertmanager_regexp("(?m)api").match_string("api")
    assert not alertmanager_regexp("api").match_string("api\n")  # $ is the end of the text


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("(?=a)", "invalid or unsupported Perl syntax: `(?=`"),  # lookahead: Python only
        ("(a)\\1", "invalid escape sequence: `\\1`"),  # backreference: Python only
        ("a\\Z", "invalid escape sequence: `\\Z`"),  # Python's end of text
        ("(?<n>a)", "invalid or unsupported Perl syntax: `(?<`"),  # RE2 takes it, Go 1.19 not
        ("a\\C", "invalid escape sequence: `\\C`"),  # RE2 takes it, Go does not
        ("(?P<é>a)", "invalid named capture: `(?P<é>`"),
        ("\\C(", "invalid escape sequence: `\\C`"),  # Go reports the leftmost error
        ("(a{100}){11}", "invalid repeat count: `{11}`"),
        ("a\\", "trailing backslash at end of expression: ``"),
    ],
)
def test_go_refuses_what_go_refuses(pattern: str, message: str) -> None:
    with pytest.raises(RegexError) as info:
        go_regexp(pattern)
    assert str(info.value) == f"error parsing regexp: {message}"


def test_a_silence_stored_with_a_python_only_pattern_mutes_nothing() -> None:
    # silences validated with Python's re before the move to RE2 may hold a lookahead
    for is_equal in (True, False):
        assert not Matcher("x", "(?=a)a", is_regex=True, is_equal=is_equal).matches({"x": "a"})


# --------------------------------------------------------------------------- clear errors


def test_template_error_names_the_pattern() -> None:
    tmpl = compile_template('{{ reReplaceAll "(a+" "" "x" }}')  # a runtime error, as in Go
    with pytest.raises(TemplateError) as info:
        tmpl.render(TemplateData(labels={}, value=0.0))
    assert str(info.value).endswith(
        "error calling reReplaceAll: regexp: Compile(`(a+`): error parsing regexp: "
        "missing closing ): `(a+`"
    )


def test_silence_error_names_the_pattern() -> None:
    with pytest.raises(InputError) as info:
        parse_matchers([{"name": "x", "value": "(a", "isRegex": True}])
    assert str(info.value) == (
        "matchers[0].value: invalid regex '(a': error parsing regexp: missing closing ): "
        "`^(?:(a)$`"
    )


def test_model_error_names_the_pattern() -> None:
    with pytest.raises(ValidationError) as info:
        InhibitRule(target_match_re={"severity": "crit(?=ical)"})
    assert "invalid regex 'crit(?=ical)': error parsing regexp: invalid or unsupported " \
           "Perl syntax: `(?=`" in str(info.value)


RULE_FILE = """\
receivers:
  - name: chat
    webhook: {url: "http://localhost/hook"}
routes:
  - receivers: [chat]
    match_re:
      team: "\\\\p{Lu}.*"
      service: "(api"
inhibit_rules:
  - source_match_re:
      alertname: "Node(?=Down)"
    target_match_re:
      severity: "warn\\\\Z"
    equal: [instance]
"""


def test_check_reports_bad_patterns_at_their_line(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "routes.yml"
    f.write_text(RULE_FILE)
    assert main(["check", str(f)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{f}:8: routes[0].match_re.service: invalid regex '(api': error parsing regexp: "
        "missing closing ): `^(?:(api)$`",
        f"{f}:11: inhibit_rules[0].source_match_re.alertname: invalid regex 'Node(?=Down)': "
        "error parsing regexp: invalid or unsupported Perl syntax: `(?=`",
        f"{f}:13: inhibit_rules[0].target_match_re.severity: invalid regex 'warn\\\\Z': "
        "error parsing regexp: invalid escape sequence: `\\Z`",
    ]
