"""watchdog.gocompat: Go's Quote, FormatFloat, ParseFloat, ParseDuration and time formats.

Expected strings are what Go 1.19 (the Go of Prometheus 2.42) prints; the template tests and
tests/test_templates_corpus.py check the same functions against promtool through templates.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watchdog.gocompat import (
    ZERO_TIME,
    can_backquote,
    format_duration,
    format_float,
    parse_duration,
    parse_float,
    quote,
    rfc3339,
    rfc3339_millis,
)


@pytest.mark.parametrize(
    ("text", "quoted", "ascii"),
    [
        ("", '""', '""'),
        ('a"b\\c', '"a\\"b\\\\c"', '"a\\"b\\\\c"'),
        ("\a\b\f\n\r\t\v", '"\\a\\b\\f\\n\\r\\t\\v"', '"\\a\\b\\f\\n\\r\\t\\v"'),
        ("\x00\x1f\x7f", '"\\x00\\x1f\\x7f"', '"\\x00\\x1f\\x7f"'),
        ("é\u00ad\u2028\u200b", '"é\\u00ad\\u2028\\u200b"', '"\\u00e9\\u00ad\\u2028\\u200b"'),
        ("\U0001f600\U000e0001", '"\U0001f600\\U000e0001"', '"\\U0001f600\\U000e0001"'),
        ("\ud800", '"\\ufffd"', '"\\ufffd"'),  # a lone surrogate is invalid UTF-8 to Go
    ],
)
def test_quote_is_strconv_quote(text: str, quoted: str, ascii: str) -> None:
    assert quote(text) == quoted
    assert quote(text, ascii_only=True) == ascii


def test_can_backquote() -> None:
    assert can_backquote("a\tb é") and not can_backquote("a`b")
    assert not can_backquote("a\nb") and not can_backquote("\ufeff")


@pytest.mark.parametrize(
    ("x", "verb", "prec", "text"),
    [
        (1.0, "e", -1, "1e+00"),
        (0.25, "e", -1, "2.5e-01"),
        (123.456, "e", -1, "1.23456e+02"),
        (0.0, "e", -1, "0e+00"),
        (-0.0, "g", -1, "-0"),
        (1e21, "g", -1, "1e+21"),
        (123456.0, "g", -1, "123456"),
        (1234567.0, "g", -1, "1.234567e+06"),
        (0.0001, "g", -1, "0.0001"),
        (0.00001, "g", -1, "1e-05"),
        (5e-324, "g", -1, "5e-324"),
        (100000.0, "f", -1, "100000"),
        (1234.5678, "g", 4, "1235"),
        (0.5, "g", 0, "0.5"),
        (1.5, "f", 0, "2"),
        (2.5, "f", 0, "2"),  # round half to even, as Go
        (3.0, "x", -1, "0x1.8p+01"),
        (1.0, "X", 2, "0X1.00P+00"),
        (1.0, "b", -1, "4503599627370496p-52"),
        (math.nan, "g", -1, "NaN"),
        (math.inf, "e", -1, "+Inf"),
        (-math.inf, "f", 3, "-Inf"),
    ],
)
def test_format_float_is_strconv_format_float(x: float, verb: str, prec: int, text: str) -> None:
    assert format_float(x, verb, prec) == text


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_shortest_e_is_the_fewest_digits_that_read_back(x: float) -> None:
    # Prometheus's API writes alert values with FormatFloat(v, 'e', -1, 64): the shortest
    # mantissa that parses back to exactly v
    text = format_float(x, "e", -1)
    assert float(text) == x
    digits = len(text.split("e")[0].lstrip("-").replace(".", ""))
    if digits > 1:
        assert float(f"{x:.{digits - 2}e}") != x


@given(st.floats(allow_nan=False))
def test_shortest_g_reads_back_through_parse_float(x: float) -> None:
    assert parse_float(format_float(x, "g", -1)) == x


@pytest.mark.parametrize(
    ("text", "value"),
    [("1_000", 1000.0), ("0x1p-2", 0.25), (".5", 0.5), ("1e3", 1000.0), ("-Inf", -math.inf),
     ("+infinity", math.inf)],
)
def test_parse_float(text: str, value: float) -> None:
    assert parse_float(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", 'strconv.ParseFloat: parsing "abc": invalid syntax'),
        ("1e999", 'strconv.ParseFloat: parsing "1e999": value out of range'),
        ("1__0", 'strconv.ParseFloat: parsing "1__0": invalid syntax'),
        ("", 'strconv.ParseFloat: parsing "": invalid syntax'),
    ],
)
def test_parse_float_errors_are_go_s(text: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_float(text)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0.0), ("1h30m", 5400.0), ("1d2h3m4s5ms", 93784.005), ("292y", 292 * 31536000.0),
     ("106751d23h47m16s854ms", 9223372036.854)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty duration string"),
        (" 5m", 'not a valid duration string: " 5m"'),  # rule files strip; Go does not
        ("1.5h", 'not a valid duration string: "1.5h"'),
        ("٣m", 'not a valid duration string: "٣m"'),
        ("293y", "duration out of range"),
        ("106751d23h47m16s855ms", "duration out of range"),  # each unit fits, the sum does not
        ("99999999999999999999999ms", "duration out of range"),
    ],
)
def test_parse_duration_errors_are_prometheus_s(text: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_duration(text)
    assert str(err.value) == message


@given(st.integers(min_value=0, max_value=10 * 365 * 86_400_000))
def test_durations_read_back(ms: int) -> None:
    assert parse_duration(format_duration(ms / 1000)) == ms / 1000


@pytest.mark.parametrize(
    ("t", "text"),
    [
        (None, ZERO_TIME),
        (0.0, "1970-01-01T00:00:00Z"),
        (1800000000.5, "2027-01-15T08:00:00.5Z"),  # Go cuts the fraction's trailing zeros
        (1800000000.25, "2027-01-15T08:00:00.25Z"),
        (1800000000.000001, "2027-01-15T08:00:00.000001Z"),
    ],
)
def test_rfc3339_is_go_s_json_time(t: float | None, text: str) -> None:
    assert rfc3339(t) == text


@pytest.mark.parametrize(
    ("t", "text"),
    [
        (None, ZERO_TIME),
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1800000000.5, "2027-01-15T08:00:00.500Z"),
        (1800000000.9999, "2027-01-15T08:00:00.999Z"),  # truncated, as strfmt does
    ],
)
def test_rfc3339_millis_is_alertmanager_s(t: float | None, text: str) -> None:
    assert rfc3339_millis(t) == text

