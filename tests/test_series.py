"""promtool's series notation (watchdog.series): tables of cases, then promtool as the oracle.

The tables pin the behaviour; the ``prometheus``-marked tests check the tricky rows against
``promtool test rules`` itself, so a table row that disagrees with Prometheus cannot survive.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from watchdog.series import (
    STALE,
    STALE_NAN,
    Series,
    SeriesValue,
    expand_input_series,
    expand_values,
    format_series_selector,
    is_stale_nan,
    parse_series_selector,
)

INF = math.inf
NAN = math.nan


def comparable(values: list[SeriesValue]) -> list[object]:
    """NaN never equals NaN and -0.0 equals 0.0; compare through a stable key instead."""
    out: list[object] = []
    for v in values:
        if v is None or v is STALE:
            out.append(v)
        elif math.isnan(v):
            out.append("NaN")
        else:
            out.append((v, math.copysign(1.0, v)))
    return out


# (notation, expansion). Rows marked in the comments are the surprising ones.
VALUES: list[tuple[str, list[SeriesValue]]] = [
    ("", []),
    ("1", [1.0]),
    ("1 2 3", [1.0, 2.0, 3.0]),
    ("  1\t 2  ", [1.0, 2.0]),
    ("1+2x3", [1.0, 3.0, 5.0, 7.0]),  # n+1 values
    ("1x3", [1.0, 1.0, 1.0, 1.0]),
    ("1+0x3", [1.0, 1.0, 1.0, 1.0]),
    ("1x0", [1.0]),
    ("5-2x2", [5.0, 3.0, 1.0]),
    ("-2-1x3", [-2.0, -3.0, -4.0, -5.0]),
    ("+5", [5.0]),
    ("1 -2", [1.0, -2.0]),
    ("_", [None]),
    ("_x3", [None, None, None]),  # n missing points, not n+1
    ("_x0", []),
    ("1 _ 3", [1.0, None, 3.0]),
    ("stale", [STALE]),
    ("stale+0x2", [STALE, NAN, NAN]),  # stale NaN + 0 is an ordinary NaN
    ("1e3", [1000.0]),
    ("1e+2x1", [100.0, 100.0]),
    ("2.5E-1", [0.25]),
    (".5", [0.5]),
    ("5.", [5.0]),
    ("0x5", [0.0] * 6),  # not hexadecimal
    ("010", [8.0]),  # octal, via Go's ParseInt(s, 0, 64)
    ("08", [8.0]),  # not octal: falls back to ParseFloat
    ("0777777777777777777777777", [7.777777777777778e23]),  # too big for int64: decimal
    ("99999999999999999999", [1e20]),
    ("1x010", [1.0] * 11),  # the count is always decimal
    ("Inf -Inf +Inf inf INF", [INF, -INF, INF, INF, INF]),
    ("NaN nan -NaN", [NAN, NAN, NAN]),
    ("Inf+0x2", [INF, INF, INF]),
    ("0.1+0.1x2", [0.1, 0.2, 0.30000000000000004]),  # repeated addition, like Go
    ("1e-400", [0.0]),
    ("-0", [-0.0]),
    (
        "1+2x3 _ _x2 stale 5 -2-1x3 1e3 Inf -Inf NaN 0x5",
        [1.0, 3.0, 5.0, 7.0, None, None, None, STALE, 5.0, -2.0, -3.0, -4.0, -5.0]
        + [1000.0, INF, -INF, NAN]
        + [0.0] * 6,
    ),
]


@pytest.mark.parametrize(("notation", "expected"), VALUES, ids=[repr(v[0]) for v in VALUES])
def test_expand_values(notation: str, expected: list[SeriesValue]) -> None:
    assert comparable(expand_values(notation)) == comparable(expected)


# (notation, part of the error message). promtool rejects every one of these too.
BAD_VALUES = [
    ("1 x 3", "unexpected 'x'"),  # x must touch its neighbours
    ("_ x2", "unexpected 'x'"),
    ("Infx2", "'Infx2'"),  # one identifier
    ("stalex2", "'stalex2'"),
    ("STALE", "'STALE'"),  # stale is case-sensitive, Inf and NaN are not
    ("infinity", "'infinity'"),
    ("1+2", "expected 'x'"),
    ("1x1.5", "repetition count '1.5'"),
    ("1x", "count after 'x'"),
    ("1+2x3x4", "after the count"),
    ("1ex2", "'1e'"),
    ("1_000", "bad number syntax"),
    ("_3", "expected 'x'"),
    ("__", "expected 'x'"),
    ("1e400", "out of range"),
    ("+", "number after '+'"),
    # promtool reports this one but still expands 2**64-1 copies: it never comes back.
    ("1x18446744073709551616", "repetition count"),
    ("1*2", "unexpected character '*'"),
    ("sum", "'sum'"),
    ("1\n2", "newline"),
]


@pytest.mark.parametrize(("notation", "message"), BAD_VALUES, ids=[v[0] for v in BAD_VALUES])
def test_expand_values_rejects(notation: str, message: str) -> None:
    with pytest.raises(ValueError, match="invalid series values") as caught:
        expand_values(notation)
    assert message in str(caught.value)


SELECTORS: list[tuple[str, dict[str, str]]] = [
    ("up", {"__name__": "up"}),
    (
        'http_requests{job="api", code="500"}',
        {"__name__": "http_requests", "job": "api", "code": "500"},
    ),
    ('{__name__="x"}', {"__name__": "x"}),
    ('{job="a"}', {"job": "a"}),  # no name is fine
    ("foo{}", {"__name__": "foo"}),
    ('foo{a="b",}', {"__name__": "foo", "a": "b"}),
    ('  foo{ a = "b" }  ', {"__name__": "foo", "a": "b"}),
    ("ns:rule:rate5m", {"__name__": "ns:rule:rate5m"}),
    (":leading", {"__name__": ":leading"}),
    ("sum", {"__name__": "sum"}),  # keywords the grammar allows as names
    ("SUM", {"__name__": "SUM"}),
    ("offset", {"__name__": "offset"}),
    ("stale", {"__name__": "stale"}),
    ('foo{on="x", bool="y"}', {"__name__": "foo", "on": "x", "bool": "y"}),  # fine as labels
    ('foo{__name__="bar"}', {"__name__": "foo"}),  # the name before the brace wins
    ('foo{a=""}', {"__name__": "foo"}),  # empty value = no label
    (r'foo{a="q\"b\\s\nn\tt"}', {"__name__": "foo", "a": 'q"b\\s\nn\tt'}),
    (r'foo{a="\x41\101\u00e9\U0001F600"}', {"__name__": "foo", "a": "AAé😀"}),
    (r'foo{a="\xc3\xa9"}', {"__name__": "foo", "a": "é"}),  # bytes that form UTF-8
    (r"foo{a='it\'s \"x\"'}".replace('\\"', '"'), {"__name__": "foo", "a": 'it\'s "x"'}),
    (r"foo{a=`raw\n`}", {"__name__": "foo", "a": "raw\\n"}),
    ('foo{a="é tab\t"}', {"__name__": "foo", "a": "é tab\t"}),
    ('foo{a="}, {"}', {"__name__": "foo", "a": "}, {"}),
]


@pytest.mark.parametrize(("text", "expected"), SELECTORS, ids=[s[0] for s in SELECTORS])
def test_parse_series_selector(text: str, expected: dict[str, str]) -> None:
    assert parse_series_selector(text) == expected


def test_parse_series_selector_puts_the_name_first() -> None:
    assert list(parse_series_selector('m{b="1", a="2"}')) == ["__name__", "b", "a"]


BAD_SELECTORS = [
    ("", "empty series selector"),
    ("{}", "empty label set"),
    ('{a=""}', "empty label set"),
    ('foo {a="b"}', "no space"),
    ('foo{a="b"}{c="d"}', "after the label set"),
    ("foo bar", "after the metric name"),
    ("on", "keyword"),
    ("bool", "keyword"),
    ("ignoring", "keyword"),
    ("group_left", "keyword"),
    ("atan2", "keyword"),
    ("Inf", "keyword"),
    ("NaN", "keyword"),
    ("1foo", "expected a metric name"),
    ("fo-o", "after the metric name"),
    ('foo{a!="b"}', "only '='"),
    ('foo{a=~"b"}', "only '='"),
    ("foo{a=b}", "quoted string"),
    ('foo{a="b"', "unterminated label set"),
    ('foo{a="b}', "unterminated quoted string"),
    ("foo{a=`b}", "unterminated raw string"),
    ('foo{a="b" c="d"}', "expected ',' or '}'"),
    ('foo{a="b",,c="d"}', "between commas"),
    ("foo{,}", "expected a label name"),
    ('foo{a="1", a="2"}', "appears twice"),
    ('foo{é="x"}', "expected a label name"),
    ('foo{a:b="x"}', "expected '='"),
    (r'foo{a="\q"}', "unknown escape"),
    (r"foo{a='\"'}", "unknown escape"),  # only the string's own quote may be escaped
    (r'foo{a="\0"}', "illegal character"),
    (r'foo{a="\400"}', "invalid Unicode code point"),
    (r'foo{a="\ud800"}', "invalid Unicode code point"),
    (r'foo{a="\U00110000"}', "invalid Unicode code point"),
    (r'foo{a="\xff"}', "valid UTF-8"),  # promtool keeps the raw byte; a str cannot
    ('foo{a="x\ufffdy"}', "invalid UTF-8 rune"),
    ('foo{a="x\ny"}', "newline"),
    ("foo#", "after the metric name"),
]


@pytest.mark.parametrize(("text", "message"), BAD_SELECTORS, ids=[s[0] for s in BAD_SELECTORS])
def test_parse_series_selector_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="invalid series selector") as caught:
        parse_series_selector(text)
    assert message in str(caught.value)


label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True).filter(
    lambda n: n != "__name__"
)


@given(
    name=st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,12}", fullmatch=True),
    labels=st.dictionaries(label_names, st.text(min_size=1, max_size=12), max_size=4),
)
def test_format_series_selector_round_trips(name: str, labels: dict[str, str]) -> None:
    written = {"__name__": name, **labels}
    assert parse_series_selector(format_series_selector(written)) == written


def test_format_series_selector_quotes_names_promtool_would_refuse() -> None:
    assert format_series_selector({"__name__": "on", "a": 'x"\n'}) == r'{__name__="on", a="x\"\n"}'
    with pytest.raises(ValueError, match="invalid label name"):
        format_series_selector({"__name__": "x", "a-b": "1"})


def test_expand_input_series_places_points_on_the_interval() -> None:
    s = expand_input_series('m{a="1"}', "1 _ 3 stale", interval=60, start=600)
    assert s.labels == {"__name__": "m", "a": "1"}
    assert s.name == "m"
    assert [t for t, _ in s.samples] == [600.0, 720.0, 780.0]
    assert [v for _, v in s.samples][:2] == [1.0, 3.0]
    assert is_stale_nan(s.samples[2][1])


def test_expand_input_series_counts_in_whole_milliseconds() -> None:
    s = expand_input_series("m", "0x30", interval=0.1)
    # 0.1 + 0.1 + 0.1 drifts; i * 100ms / 1000 does not.
    assert s.samples[3][0] == 0.3
    assert s.samples[30][0] == 3.0


@pytest.mark.parametrize("interval", [0, -1, 0.0004, math.inf, math.nan])
def test_expand_input_series_rejects_bad_intervals(interval: float) -> None:
    with pytest.raises(ValueError, match="interval"):
        expand_input_series("m", "1", interval=interval)


def test_stale_nan_is_distinct_from_nan() -> None:
    assert math.isnan(STALE_NAN)
    assert is_stale_nan(STALE_NAN)
    assert not is_stale_nan(math.nan)
    assert not is_stale_nan(STALE_NAN + 0)  # arithmetic turns it into an ordinary NaN
    assert repr(STALE) == "STALE"


def test_series_is_a_frozen_value() -> None:
    s = Series({"__name__": "m"}, [(0.0, 1.0)])
    assert s == Series({"__name__": "m"}, [(0.0, 1.0)])
    with pytest.raises(AttributeError):
        s.labels = {}  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# promtool as the oracle

HALF_MINUTE = 30
LOOKBACK = 300  # Prometheus's default lookback delta, which promtool uses


def run_promtool(promtool: str, workdir: Path, test_group: dict[str, Any]) -> tuple[int, str]:
    (workdir / "rules.yml").write_text("groups: []\n")
    test_file = workdir / "test.yml"
    test_file.write_text(yaml.safe_dump({"rule_files": ["rules.yml"], "tests": [test_group]}))
    proc = subprocess.run(
        [promtool, "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def expected_at(series: Series, at: float) -> tuple[float, float] | None:
    """The sample PromQL picks for ``series`` at ``at``: the latest within the lookback."""
    before = [(t, v) for t, v in series.samples if t <= at]
    if not before or before[-1][0] < at - LOOKBACK or is_stale_nan(before[-1][1]):
        return None
    return before[-1]


def oracle_group(selector: str, notation: str) -> dict[str, Any]:
    """A promtool test group that passes only if promtool expands ``notation`` as we do.

    Evaluating halfway between points, the latest sample is the point just before, so
    ``timestamp()`` shows which points exist (and a stale one hides its predecessors),
    ``m == m`` their values (NaN drops out: promtool cannot compare NaN samples) and
    ``m != bool m`` which of them are NaN.
    """
    series = expand_input_series(selector, notation, interval=60)
    labels = series.labels
    no_name = format_series_selector({k: v for k, v in labels.items() if k != "__name__"} or {})
    with_name = format_series_selector(labels)
    points = len(expand_values(notation))
    tests = []
    for i in range(points + 6):  # run on past the end: the lookback must expire too
        at = i * 60 + HALF_MINUTE
        picked = expected_at(series, at)
        ts: list[dict[str, Any]] = []
        value: list[dict[str, Any]] = []
        is_nan: list[dict[str, Any]] = []
        if picked is not None:
            t, v = picked
            ts = [{"labels": no_name, "value": t}]
            is_nan = [{"labels": no_name, "value": 1.0 if math.isnan(v) else 0.0}]
            if not math.isnan(v):
                value = [{"labels": with_name, "value": v}]
        sel = selector.strip()
        for expr, exp in (
            (f"timestamp({sel})", ts),
            (f"{sel} == {sel}", value),
            (f"{sel} != bool {sel}", is_nan),
        ):
            tests.append({"expr": expr, "eval_time": f"{at}s", "exp_samples": exp})
    return {
        "interval": "1m",
        "input_series": [{"series": selector, "values": notation}],
        "promql_expr_test": tests,
    }


ORACLE_VALUES = [
    "1+2x3 _ _x2 stale 5 -2-1x3 1e3 Inf -Inf NaN 0x5",
    "_x3 1",
    "1 _x0 2",
    "1x0 2",
    "stale+0x2 1",
    "1 stale _ 2",
    "1 _x6 2",  # a gap longer than the lookback
    "010 08 0777777777777777777777777 99999999999999999999",
    "0.1+0.1x9",
    "1e-400 -0 .5 5. 2.5E-1",
    "Inf+0x1 nan NaN+1x1",
    "1x010",
    "+5-0.25x3",
]


@pytest.mark.prometheus
@pytest.mark.parametrize("notation", ORACLE_VALUES)
def test_values_match_promtool(notation: str, promtool_binary: str, tmp_path: Path) -> None:
    code, output = run_promtool(promtool_binary, tmp_path, oracle_group('m{k="v"}', notation))
    assert code == 0, output


def loading_group(selector: str, notation: str) -> dict[str, Any]:
    """A promtool test group that passes whenever the input series loads."""
    return {
        "interval": "1m",
        "input_series": [{"series": selector, "values": notation}],
        "promql_expr_test": [
            {"expr": "vector(1)", "eval_time": "0s", "exp_samples": [{"labels": "{}", "value": 1}]}
        ],
    }


@pytest.mark.prometheus
def test_loading_group_passes_on_good_input(promtool_binary: str, tmp_path: Path) -> None:
    code, output = run_promtool(promtool_binary, tmp_path, loading_group('m{a="b"}', "1 2"))
    assert code == 0, output


@pytest.mark.prometheus
@pytest.mark.parametrize(
    "notation", [v for v, _ in BAD_VALUES if "\n" not in v and "18446744073709551616" not in v]
)
def test_promtool_rejects_values_we_reject(
    notation: str, promtool_binary: str, tmp_path: Path
) -> None:
    code, output = run_promtool(promtool_binary, tmp_path, loading_group("m", notation))
    assert code != 0, output


@pytest.mark.prometheus
@pytest.mark.parametrize("selector", [s for s, _ in SELECTORS])
def test_selectors_match_promtool(selector: str, promtool_binary: str, tmp_path: Path) -> None:
    labels = parse_series_selector(selector)
    # Select the one loaded series by a label we think it has; the result shows all of its
    # labels as promtool parsed them, so an extra or missing label fails the comparison.
    key = next(iter(labels))
    group = {
        "interval": "1m",
        "input_series": [{"series": selector, "values": "1"}],
        "promql_expr_test": [
            {
                "expr": f'{{{key}=~".+"}}',
                "eval_time": "0s",
                "exp_samples": [{"labels": format_series_selector(labels), "value": 1.0}],
            }
        ],
    }
    code, output = run_promtool(promtool_binary, tmp_path, group)
    assert code == 0, output


@pytest.mark.prometheus
@pytest.mark.parametrize(
    "selector",
    [s for s, _ in BAD_SELECTORS if s and "\n" not in s and r"\xff" not in s],
)
def test_promtool_rejects_selectors_we_reject(
    selector: str, promtool_binary: str, tmp_path: Path
) -> None:
    code, output = run_promtool(promtool_binary, tmp_path, loading_group(selector, "1"))
    assert code != 0, output
