"""Unit tests for watchdog.gotmpl: parsing, rendering, Go formatting, functions, errors.

Expected strings are Go's/Prometheus's output; most were cross-checked against promtool by
tests/test_templates_corpus.py, which is the byte-for-byte oracle.
"""

from __future__ import annotations

import ast
import contextlib
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import watchdog.gocompat
import watchdog.gotmpl as gotmpl
import watchdog.templates
from watchdog.gotmpl import Template, TemplateData, TemplateError, compile_template, expand
from watchdog.gotmpl.exec import Exec
from watchdog.gotmpl.fmt import NO_FLAGS, print_arg

DATA = TemplateData(
    labels={"__name__": "up", "instance": "host-1.example.com:9100", "job": "api", "zone": "a"},
    value=0.5,
    external_labels={"cluster": "c1"},
    external_url="https://prom.example.com/prefix",
)


def render(text: str, data: TemplateData = DATA) -> str:
    return compile_template(text).render(data)


def with_value(value: float) -> TemplateData:
    return TemplateData(labels=DATA.labels, value=value)


# --------------------------------------------------------------------------- language


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text, no actions", "plain text, no actions"),
        ("", ""),
        ("{ not an action }", "{ not an action }"),
        # data and the predefined variables
        ("{{ $labels.instance }}", "host-1.example.com:9100"),
        ("{{$labels.job}}", "api"),
        ("{{ .Labels.job }}", "api"),
        ("{{ $.Labels.job }}", "api"),
        ("{{ $value }}|{{ .Value }}", "0.5|0.5"),
        ("{{ $externalLabels.cluster }}|{{ .ExternalLabels.cluster }}", "c1|c1"),
        (
            "{{ $externalURL }}|{{ .ExternalURL }}",
            "https://prom.example.com/prefix|https://prom.example.com/prefix",
        ),
        ("{{ $labels }}", "map[__name__:up instance:host-1.example.com:9100 job:api zone:a]"),
        ("{{ $externalLabels }}", "map[cluster:c1]"),
        (
            "{{ . }}",
            "{map[__name__:up instance:host-1.example.com:9100 job:api zone:a] "
            "map[cluster:c1] https://prom.example.com/prefix 0.5}",
        ),
        # missing keys render as "" (Prometheus uses missingkey=zero)
        ('[{{ $labels.nope }}][{{ .Labels.nope }}][{{ index $labels "nope" }}]', "[][][]"),
        # literals
        (
            "{{ 42 }}|{{ -7 }}|{{ 1.5 }}|{{ 1e3 }}|{{ 0x1F }}|{{ 0o17 }}|{{ 017 }}|{{ 0b101 }}",
            "42|-7|1.5|1000|31|15|15|5",
        ),
        ("{{ 1_000 }}|{{ 0x1p-2 }}|{{ -0.0 }}|{{ 'a' }}|{{ '\\n' }}", "1000|0.25|-0|97|10"),
        ("{{ true }}|{{ false }}", "true|false"),
        ('{{ "a\\tb\\u00e9\\x41\\101\\"" }}', 'a\tbéAA"'),
        # byte escapes are UTF-8 bytes (checked with promtool 2.x: "\xc3\xa9\303\251" is "éé");
        # a byte that is not UTF-8 is written as U+FFFD, as Go's JSON encoder writes it
        ('{{ "\\xc3\\xa9\\303\\251" }}|{{ "a\\xffb" }}', "éé|a\ufffdb"),
        ("{{ `raw \\n {{ }}` }}", "raw \\n {{ }}"),
        ("{{ `a\r\nb` }}", "a\nb"),  # Go drops carriage returns from raw strings
        # trim markers and comments
        ("a  {{- 1 -}}  b", "a1b"),
        ("a\n\t {{- 1 }} \n", "a1 \n"),
        ("{{ 1 -}}\n\n x", "1x"),
        ("{{-3}}", "-3"),  # no space after the dash: a negative number, not a trim marker
        ("a {{/* comment */}} b", "a  b"),
        ("a {{- /* comment */ -}} b", "ab"),
        ("{{/* multi\nline */}}x", "x"),
        # actions may span lines
        ('{{ printf\n  "%s"\n  $labels.job }}', "api"),
        # pipelines
        ('{{ $value | printf "%.2f" }}', "0.50"),
        ('{{ $labels.job | printf "%s-%s" "x" }}', "x-api"),
        ('{{ $value | printf "%.1f" | printf "<%s>" }}', "<0.5>"),
        ('{{ (printf "%d" 12345) | len }}', "5"),
        ("{{ (.Labels).job }}", "api"),
        ('{{ (print "x") }}', "x"),
        # variables
        ("{{ $x := 1 }}{{ $x }}", "1"),
        ("{{ $x := 1 }}{{ $x = 2 }}{{ $x }}", "2"),
        ('{{ $x := "a" }}{{ if true }}{{ $x = "b" }}{{ $y := 1 }}{{ end }}{{ $x }}', "b"),
        ("{{ $labels := 5 }}{{ $labels }}", "5"),
        ("{{ $x := $labels }}{{ $x.job }}", "api"),
        # if / else if / else
        ("{{ if true }}y{{ end }}", "y"),
        ("{{ if false }}y{{ else }}n{{ end }}", "n"),
        (
            '{{ if eq $labels.job "db" }}db{{ else if eq $labels.job "api" }}api{{ else }}?{{ end '
            "}}",
            "api",
        ),
        ("{{ if $labels.nope }}y{{ else }}empty string is false{{ end }}", "empty string is false"),
        ('{{ if 0 }}y{{ else if 0.0 }}y{{ else if "" }}y{{ else }}n{{ end }}', "n"),
        ("{{ if . }}structs are true{{ end }}", "structs are true"),
        ("{{ if $x := $labels.job }}{{ $x }}{{ end }}", "api"),
        # with
        ("{{ with $labels.job }}job={{ . }}{{ end }}", "job=api"),
        ("{{ with $labels.nope }}x{{ else }}none{{ end }}", "none"),
        ("{{ with $x := $labels.zone }}{{ $x }}{{ . }}{{ end }}", "aa"),
        # range: maps in key order, break/continue, else
        (
            "{{ range $k, $v := $labels }}{{ $k }}={{ $v }};{{ end }}",
            "__name__=up;instance=host-1.example.com:9100;job=api;zone=a;",
        ),
        ("{{ range $labels }}{{ . }},{{ end }}", "up,host-1.example.com:9100,api,a,"),
        ("{{ range $v := $externalLabels }}{{ $v }}{{ end }}", "c1"),
        (
            '{{ range $k, $v := $labels }}{{ if eq $k "job" }}{{ break }}{{ end }}{{ $k }},{{ end '
            "}}",
            "__name__,instance,",
        ),
        (
            '{{ range $k, $v := $labels }}{{ if eq $k "job" }}{{ continue }}{{ end }}{{ $k }},'
            "{{ end }}",
            "__name__,instance,zone,",
        ),
        ("{{ range .ExternalLabels }}x{{ else }}empty{{ end }}", "x"),
        ('{{ $v := "" }}{{ range $v = $labels }}{{ end }}{{ $v }}|{{ $value }}', "a|0.5"),
    ],
)
def test_render(text: str, expected: str) -> None:
    assert render(text) == expected


def test_range_over_empty_map_takes_else() -> None:
    data = TemplateData(labels={}, value=1.0)
    assert render("{{ range $labels }}x{{ else }}empty{{ end }}", data) == "empty"
    assert render("{{ range $externalLabels }}x{{ end }}", data) == ""


def test_range_over_a_list() -> None:
    # No function returns a list, but the evaluator ranges over tuples like Go over slices.
    node = Exec("", DATA)
    assert print_arg(("a", 1, 2.5), "v", NO_FLAGS) == "[a 1 2.5]"
    tmpl = compile_template("{{ range $i, $e := . }}{{ $i }}:{{ $e }} {{ end }}")
    node.walk(tmpl._nodes, ("x", "y"))
    assert "".join(node.out) == "0:x 1:y "


# --------------------------------------------------------------------------- Go's %v


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.0, "0"),
        (-0.0, "-0"),
        (1.0, "1"),
        (0.5, "0.5"),
        (42.0, "42"),
        (-42.25, "-42.25"),
        (1234.5678, "1234.5678"),
        (123456.0, "123456"),
        (999999.0, "999999"),
        (1e6, "1e+06"),  # exponent from 1e6 on: Go uses precision 6 for the %v decision
        (1234567.0, "1.234567e+06"),
        (1.5e9, "1.5e+09"),
        (1e21, "1e+21"),
        (0.0001, "0.0001"),
        (0.000123, "0.000123"),
        (0.00001, "1e-05"),
        (3.14159e-7, "3.14159e-07"),
        (0.1 + 0.2, "0.30000000000000004"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (1e100, "1e+100"),
        (math.nan, "NaN"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
    ],
)
def test_value_prints_like_go(value: float, expected: str) -> None:
    assert render("{{ $value }}", with_value(value)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ 5 }}|{{ -5 }}", "5|-5"),
        ("{{ true }}", "true"),
        ('{{ "s" }}', "s"),
        ("{{ $labels }}", "map[__name__:up instance:host-1.example.com:9100 job:api zone:a]"),
        ('{{ safeHtml "<b>" }}', "<b>"),
    ],
)
def test_other_values_print_like_go(text: str, expected: str) -> None:
    assert render(text) == expected


# --------------------------------------------------------------------------- printf


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # floats
        ('"%v" 1234.5678', "1234.5678"),
        ('"%g|%G" 1e-7 1e-7', "1e-07|1E-07"),
        (
            '"%e|%E|%.0e|%+.2e" 1234.5678 1234.5678 12345.0 12345.678',
            "1.234568e+03|1.234568E+03|1e+04|+1.23e+04",
        ),
        (
            '"%f|%.0f|%.0f|%.0f|%.2f|%.1f" 1234.5678 0.5 1.5 2.5 0.125 0.25',
            "1234.567800|0|2|2|0.12|0.2",
        ),
        (
            '"%8.2f|%-8.2f|%08.2f|%+.1f|% .1f|%+08.2f" 3.14159 3.14159 -3.14159 3.0 3.0 3.14159',
            "    3.14|3.14    |-0003.14|+3.0| 3.0|+0003.14",
        ),
        ('"%.3g|%.10g|%g|%6.2v" 1234.5678 0.1 100000.0 3.14159', "1.23e+03|0.1|100000|   3.1"),
        (
            '"%x|%X|%.1x|%.0x|%x" 1.0 3.0 1.96875 1.96875 0.0',
            "0x1p+00|0X1.8P+01|0x1.0p+01|0x1p+01|0x0p+00",
        ),
        ('"%b" 1.0', "4503599627370496p-52"),
        ('"%#g|%#.3g|%#e|%#.0f|%#v" 1.5 2.0 2.0 3.0 1.0', "1.50000|2.00|2.000000e+00|3.|1"),
        (
            '"%f|%5.1f|%05.1f|%+f|% f" $value $value $value $value $value',
            "0.500000|  0.5|000.5|+0.500000| 0.500000",
        ),
        # ints
        (
            '"%d|%5d|%-5d|%05d|%+d|% d|%.3d|%8.3d" 42 42 42 -42 5 5 7 -7',
            "42|   42|42   |-0042|+5| 5|007|    -007",
        ),
        ('"%x|%X|%#x|%o|%#o|%O|%b|%#b" 255 255 255 8 8 8 5 5', "ff|FF|0xff|10|010|0o10|101|0b101"),
        ('"%c|%q|%U|%c|%+q" 65 66 67 233 233', "A|'B'|U+0043|é|'\\u00e9'"),
        ('"%.0d|%5.0d|" 0 0', "|     |"),
        # strings
        (
            '"%s|%10s|%-10s|%.3s|%5.1s" "abc" "abc" "abc" "abcdef" "abc"',
            "abc|       abc|abc       |abc|    a",
        ),
        ('"%q|%#q|%#q|%+q" "a\\"b\\n" "ab" "a`b" "é"', '"a\\"b\\n"|`ab`|"a`b"|"\\u00e9"'),
        (
            '"%x|%X|% x|%#x|% #x|%.2x" "hé" "hi" "hi" "hi" "hi" "hé"',
            "68c3a9|6869|68 69|0x6869|0x68 0x69|68c3",
        ),
        ('"%05s|%-5s|" "ab" "ab"', "000ab|ab   |"),
        ('"%v|%#v" "s" "s"', 's|"s"'),
        # bools, maps, the data struct, types
        ('"%t|%v|%5t" true false true', "true|false| true"),
        ('"%v|%s" $externalLabels $externalLabels', "map[cluster:c1]|map[cluster:c1]"),
        ('"%d" $externalLabels', "map[%!d(string=cluster):%!d(string=c1)]"),
        ('"%#v" $externalLabels', 'map[string]string{"cluster":"c1"}'),
        (
            '"%+v" .',
            "{Labels:map[__name__:up instance:host-1.example.com:9100 job:api zone:a] "
            "ExternalLabels:map[cluster:c1] ExternalURL:https://prom.example.com/prefix Value:0.5}",
        ),
        (
            '"%T|%T|%T|%T|%T|%T" 1 1.5 "s" true $labels (safeHtml "x")',
            "int|float64|string|bool|map[string]string|template.HTML",
        ),
        # argument indexes and * width/precision
        ('"%[2]d %[1]d|%[3]d" 1 2 3', "2 1|3"),
        ('"%*d|%-*d|%.*f" 5 1 5 2 2 3.14159', "    1|2    |3.14"),
        ('"%*d" -4 1', "1   "),
        ('"%[5]d" 1', "%!d(BADINDEX)"),
        ('"%[x]d" 1', "%!d(BADINDEX)"),
        ('"%*d" "a" 1', "%!(BADWIDTH)1"),
        ('"%.*d" "a" 1', "%!(BADPREC)1"),
        # mistakes are printed, not raised
        ('"%d|%s|%t" 1.5 2.5 "x"', "%!d(float64=1.5)|%!s(float64=2.5)|%!t(string=x)"),
        ('"%d %d" 1', "1 %!d(MISSING)"),
        ('"%d" 1 2 "x"', "1%!(EXTRA int=2, string=x)"),
        ('"%s" nil', "%!s(<nil>)"),
        ('"%v" nil', "<nil>"),
        ('"%!"', "%!!(MISSING)"),
        ('"%"', "%!(NOVERB)"),
        ('"%-"', "%!(NOVERB)"),
        ('"%z" 1', "%!z(int=1)"),
        ('"100%%" ', "100%"),
        ('"%5%"', "%"),
        ('"%99999999d" 1', "%!(NOVERB)%!(EXTRA int=1)"),  # Go gives up on widths past 10**6
    ],
)
def test_printf(args: str, expected: str) -> None:
    assert render("{{ printf " + args + " }}") == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [  # never zero-padded; NaN only gets a sign when asked; a space replaces a "+"
        (math.nan, "   NaN|+NaN| NaN|NaN|NaN   |NaN| NaN|NaN"),
        (math.inf, "  +Inf|+Inf| Inf|+Inf|+Inf  |+Inf| Inf|+Inf"),
        (-math.inf, "  -Inf|-Inf|-Inf|-Inf|-Inf  |-Inf|-Inf|-Inf"),
    ],
)
def test_printf_special_floats(value: float, expected: str) -> None:
    text = '{{ printf "%06.2f|%+f|% f|%f|%-6g|%+v|% e|%x" ' + "$value " * 8 + "}}"
    assert render(text, with_value(value)) == expected


def test_print_and_println() -> None:
    assert render('{{ print 1 2 "a" "b" 3 nil }}') == "1 2ab3 <nil>"
    assert render('{{ print "a" 1 "b" }}') == "a1b"
    assert render("{{ print }}") == ""
    assert render('{{ println 1 "a" 2.5 }}') == "1 a 2.5\n"
    assert render("{{ print $labels.job $value }}") == "api0.5"


# --------------------------------------------------------------------------- functions


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # humanize: SI prefixes with 4 significant digits
        ("{{ humanize 0 }}|{{ humanize 0.0 }}", "0|0"),
        ("{{ humanize 1234 }}|{{ humanize 1234.5678 }}|{{ humanize 1.5e9 }}", "1.234k|1.235k|1.5G"),
        ("{{ humanize 999.95 }}|{{ humanize 1e27 }}|{{ humanize 1e300 }}", "1000|1000Y|1e+276Y"),
        ("{{ humanize 0.5 }}|{{ humanize 0.000123 }}|{{ humanize -0.0025 }}", "500m|123u|-2.5m"),
        ("{{ humanize 1e-27 }}|{{ humanize -1e-30 }}", "0.001y|-1e-06y"),
        (
            '{{ humanize "1_000" }}|{{ humanize "0x1p-2" }}|{{ humanize "-Inf" }}|{{ humanize '
            '"nan" }}',
            "1k|250m|-Inf|NaN",
        ),
        ("{{ $value | humanize }}", "500m"),
        # humanize1024: binary prefixes, nothing below |1|
        ("{{ humanize1024 1 }}|{{ humanize1024 0.5 }}|{{ humanize1024 1024 }}", "1|0.5|1ki"),
        (
            "{{ humanize1024 1536 }}|{{ humanize1024 -5000 }}|{{ humanize1024 1e30 }}",
            "1.5ki|-4.883ki|8.272e+05Yi",
        ),
        ('{{ humanize1024 "2048" }}', "2ki"),
        # humanizeDuration
        (
            "{{ humanizeDuration 0 }}|{{ humanizeDuration 42 }}|{{ humanizeDuration 59.99999 }}",
            "0s|42s|60s",
        ),
        (
            "{{ humanizeDuration 90 }}|{{ humanizeDuration 5025.5 }}|{{ humanizeDuration 90061 }}",
            "1m 30s|1h 23m 45s|1d 1h 1m 1s",
        ),
        (
            "{{ humanizeDuration -90061.5 }}|{{ humanizeDuration 0.5 }}|{{ humanizeDuration "
            "0.0009 }}",
            "-1d 1h 1m 1s|500ms|900us",
        ),
        ("{{ humanizeDuration -0.5 }}|{{ humanizeDuration 1e-30 }}", "-500ms|1e-06ys"),
        # out of int64 range: Go's conversion yields MinInt64, and Prometheus prints that
        ("{{ humanizeDuration 1e300 }}", "-106751991167300d -15h -30m -8s"),
        # humanizePercentage
        (
            "{{ humanizePercentage 0.123456 }}|{{ humanizePercentage 1 }}|{{ humanizePercentage 0 "
            "}}",
            "12.35%|100%|0%",
        ),
        # humanizeTimestamp: UTC, millisecond resolution
        ("{{ humanizeTimestamp 1.5e9 }}", "2017-07-14 02:40:00 +0000 UTC"),
        ("{{ humanizeTimestamp 1234.5678 }}", "1970-01-01 00:20:34.567 +0000 UTC"),
        (
            "{{ humanizeTimestamp 0.1 }}|{{ humanizeTimestamp 0 }}",
            "1970-01-01 00:00:00.1 +0000 UTC|1970-01-01 00:00:00 +0000 UTC",
        ),
        ("{{ humanizeTimestamp -1.0015 }}", "1969-12-31 23:59:58.999 +0000 UTC"),
        (
            "{{ humanizeTimestamp 9.2e9 }}|{{ humanizeTimestamp -9.2e9 }}",
            "2261-07-15 11:33:20 +0000 UTC|1678-06-18 12:26:40 +0000 UTC",
        ),
        ("{{ humanizeTimestamp 9.223372036854775807e9 }}", "1677-09-21 00:12:43.146 +0000 UTC"),
        # title / toUpper / toLower (Go's simple case mappings)
        ('{{ title "hello wORLD foo_bar x-y 3am élan" }}', "Hello WORLD Foo_bar X-Y 3am Élan"),
        ('{{ title "ǆemal it\'s" }}|{{ title "" }}', "ǅemal It'S|"),
        (
            '{{ toUpper "straße ǆ ı" }}|{{ toLower "İSTANBUL ÀB ΣΑΣ" }}',
            "STRAßE Ǆ I|istanbul àb σασ",
        ),
        ("{{ $labels.job | toUpper }}", "API"),
        # match / reReplaceAll (Go's RE2 syntax and semantics)
        (
            '{{ match "^a.i$" $labels.job }}|{{ match "b" "abc" }}|{{ match "^b" "abc" }}',
            "true|true|false",
        ),
        (
            '{{ match "^a$" "a\\n" }}|{{ match "(?m)^b$" "a\\nb" }}|{{ match "\\\\d" "٣" }}',
            "false|true|false",
        ),
        (
            '{{ match "(?i)É" "é" }}|{{ match "[[:alpha:]]+[[:digit:]]" "ab1" }}|'
            '{{ match "\\\\bfoo\\\\b" "éfoo" }}|{{ match "a\\\\z" "a" }}',
            "true|true|true|true",
        ),
        # "$2_" names a group called "2_" (there is none): ${2}_ is group 2
        ('{{ reReplaceAll "(\\\\w+)-(\\\\d+)" "$2_${1}x$$|${2}_" "job-12" }}', "jobx$|12_"),
        ('{{ reReplaceAll "x*" "-" "abxd" }}|{{ reReplaceAll "" "-" "hé" }}', "-a-b-d-|-h-é-"),
        (
            '{{ reReplaceAll "a(?P<n>b)?" "[$n]" "ab a" }}|{{ reReplaceAll "(a)" "$10$1x${9}" "a" '
            "}}",
            "[b] []|",
        ),
        ('{{ reReplaceAll "\\\\s+" "_" "a \\t b\\u00a0c" }}', "a_b\u00a0c"),
        ('{{ reReplaceAll "(a)" "${1" "a" }}|{{ reReplaceAll "a" "$" "a" }}', "${1|$"),
        ('{{ reReplaceAll "\\\\x{41}" "b" "A" }}|{{ reReplaceAll "[\\\\s]" "_" "a b" }}', "b|a_b"),
        # stripPort / stripDomain
        (
            '{{ stripPort "host:9100" }}|{{ stripPort "[::1]:80" }}|{{ stripPort "host" }}',
            "host|::1|host",
        ),
        (
            '{{ stripPort "a:b:c" }}|{{ stripPort "[::1]" }}|{{ stripPort ":80" }}|{{ stripPort '
            '"h:" }}',
            "a:b:c|[::1]||h",
        ),
        (
            '{{ stripDomain "foo.bar.example.com:9100" }}|{{ stripDomain "10.0.0.1:80" }}',
            "foo:9100|10.0.0.1:80",
        ),
        (
            '{{ stripDomain "host.example.com" }}|{{ stripDomain "[::1]:80" }}|{{ stripDomain "a" '
            "}}",
            "host|[::1]:80|a",
        ),
        ('{{ stripDomain "[fe80::1%eth0]:80" }}', "[fe80::1%eth0]:80"),
        # safeHtml, parseDuration, externalURL, pathPrefix
        ('{{ safeHtml "<b>x</b>" }}', "<b>x</b>"),
        (
            '{{ parseDuration "1h30m" }}|{{ parseDuration "1d2h3m4s5ms" }}|{{ parseDuration "0" }}',
            "5400|93784.005|0",
        ),
        ('{{ parseDuration "1y" }}|{{ parseDuration "2w" }}', "3.1536e+07|1.2096e+06"),
        ("{{ externalURL }}|{{ pathPrefix }}", "https://prom.example.com/prefix|/prefix"),
        # Go's builtins
        (
            '{{ and 1 0 }}|{{ and 1 2 }}|{{ or 0 "" "x" }}|{{ or 0 "" }}|{{ and $labels.job 5 }}',
            "0|2|x||5",  # and/or return an operand, not a bool
        ),
        (
            "{{ not true }}|{{ not 0 }}|{{ not $labels.nope }}|{{ not $labels }}",
            "false|true|true|false",
        ),
        ("{{ 1 | and 2 }}|{{ 0 | or 3 }}", "1|3"),
        ('{{ len $labels }}|{{ len "hé" }}|{{ len "" }}|{{ len $externalLabels }}', "4|3|0|1"),
        ('{{ index $labels "job" }}|{{ index $labels "nope" }}|{{ index "abc" 1 }}', "api||98"),
        ("{{ index $labels }}", "map[__name__:up instance:host-1.example.com:9100 job:api zone:a]"),
        (
            '{{ eq 1 1 }}|{{ eq "a" "b" "a" }}|{{ eq 1.5 1.5 }}|{{ eq true true }}',
            "true|true|true|true",
        ),
        ('{{ ne 1 2 }}|{{ ne "a" "a" }}', "true|false"),
        (
            '{{ lt 1 2 }}|{{ le 2 2 }}|{{ gt 1.5 0.5 }}|{{ ge "a" "b" }}|{{ lt "a" "b" }}',
            "true|true|true|false|true",
        ),
        ("{{ if gt $value 0.1 }}high{{ end }}", "high"),
    ],
)
def test_functions(text: str, expected: str) -> None:
    assert render(text) == expected


def test_and_or_short_circuit() -> None:
    # The failing call is never evaluated (Go 1.18+ semantics).
    assert render("{{ and 0 (len 1) }}|{{ or 1 (len 1) }}") == "0|1"


def test_path_prefix_is_empty_without_external_url() -> None:
    assert render("[{{ pathPrefix }}][{{ externalURL }}]", with_value(1.0)) == "[][]"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ 1", "template: 1:4: unclosed action"),
        ("{{/* x", "template: 1:2: unclosed comment"),
        ("{{/* x */ }}", "template: 1:2: comment ends before closing delimiter"),
        ('{{ "abc }}', "template: 1:3: unterminated quoted string"),
        ('{{ "a\nb" }}', "template: 1:3: unterminated quoted string"),
        ("{{ `abc }}", "template: 1:3: unterminated raw quoted string"),
        ("{{ 'a }}", "template: 1:3: unterminated character constant"),
        ("{{ 'ab' }}", "template: 1:3: malformed character constant: 'ab'"),
        ("{{ 1x }}", 'template: 1:3: bad number syntax: "1x"'),
        ("{{ 1-2 }}", 'template: 1:3: bad number syntax: "1-2"'),
        ("{{ 0x }}", 'template: 1:3: illegal number syntax: "0x"'),
        ("{{ 99999999999999999999 }}", 'template: 1:3: integer overflow: "99999999999999999999"'),
        ("{{ 1i }}", 'template: 1:3: complex numbers are not supported: "1i"'),
        ('{{ "\\q" }}', "template: 1:3: invalid syntax"),
        ('{{ "\\u12" }}', "template: 1:3: invalid syntax"),
        ("{{ '\\xff' }}", "template: 1:3: byte escapes above \\x7f are not supported"),
        ('{{ "\\777" }}', "template: 1:3: invalid syntax"),
        ("{{ ´ }}", "template: 1:3: unrecognized character in action: U+00B4 '´'"),
        ("{{ @ }}", 'template: 1:3: unexpected "@" in command'),
        ("{{ ,}}", 'template: 1:3: unexpected "," in command'),
        ("{{ ) }}", "template: 1:3: unexpected right paren U+0029 ')'"),
        ("{{ (1 }}", "template: 1:6: unclosed left paren"),
        ("{{ $x-1 }}", "template: 1:5: bad character U+002D '-'"),
        ("{{ a:b }}", 'template: 1:3: function "a" not defined'),
        ("{{ $y :1 }}", 'template: 1:3: undefined variable "$y"'),
        ("{{ $x := 1 }}{{ $x :1 }}", "template: 1:19: expected :="),
        ("{{ foo }}", 'template: 1:3: function "foo" not defined'),
        ("a\nb {{ foo }}", 'template: 2:5: function "foo" not defined'),
        (
            '{{ query "up" }}',
            'template: 1:3: function "query" is not supported: templates cannot query Prometheus',
        ),
        (
            "{{ first }}",
            'template: 1:3: function "first" is not supported: it only works on query '
            "results, and templates cannot query Prometheus",
        ),
        (
            '{{ tmpl "x" . }}',
            'template: 1:3: function "tmpl" is not supported: it only exists in console templates',
        ),
        ("{{ $nope }}", 'template: 1:3: undefined variable "$nope"'),
        ("{{ $x = 1 }}", 'template: 1:3: undefined variable "$x"'),
        ("{{ if true }}{{ $x := 1 }}{{ end }}{{ $x }}", 'template: 1:38: undefined variable "$x"'),
        ("{{ end }}", "template: 1:3: unexpected {{end}}"),
        ("{{ else }}", "template: 1:3: unexpected {{else}}"),
        ("{{ 1 }}{{ end }}", "template: 1:10: unexpected {{end}}"),
        ("{{ if 1 }}x", "template: 1:11: unexpected EOF"),
        ("{{ range $labels }}x{{ else }}y", "template: 1:31: unexpected EOF"),
        ("{{ if 1 }}{{ else }}{{ else }}{{ end }}", "template: 1:23: expected end; found {{else}}"),
        ("{{ with 1 }}{{ else with 2 }}{{ end }}", "template: 1:20: unexpected <with> in else"),
        (
            "{{ range 1 }}{{ else if 1 }}{{ end }}",
            "template: 1:21: {{else if}} is not supported in {{range}}",
        ),
        ("{{ end 1 }}", 'template: 1:7: unexpected "1" in end'),
        ("{{ }}", "template: 1:5: missing value for command"),
        ("{{ if }}{{ end }}", "template: 1:8: missing value for if"),
        ("{{ range $x := }}{{ end }}", "template: 1:17: missing value for range"),
        ("{{ 1 | 2 }}", "template: 1:11: non executable command in pipeline stage 2"),
        ('{{ "a".b }}', 'template: 1:8: unexpected . after term "\\"a\\""'),
        ('{{ "a""b" }}', 'template: 1:6: unexpected "\\"b\\"" in operand'),
        ("{{ 3 := }}", 'template: 1:5: unexpected ":=" in operand'),
        ("{{ break }}", "template: 1:3: {{break}} outside {{range}}"),
        ("{{ continue }}", "template: 1:3: {{continue}} outside {{range}}"),
        (
            "{{ range $labels }}{{ break 1 }}{{ end }}",
            'template: 1:28: unexpected "1" in {{break}}',
        ),
        ("{{ $a, $b := 1 }}", "template: 1:5: too many declarations in command"),
        ("{{ range $a, $b, $c := 1 }}{{ end }}", "template: 1:15: too many declarations in range"),
        ("{{ range $a, 1 }}{{ end }}", "template: 1:11: range can only initialize variables"),
        (
            '{{ define "x" }}{{ end }}',
            "template: 1:3: {{define}} is not supported in alert templates",
        ),
        ('{{ template "x" }}', "template: 1:3: {{template}} is not supported in alert templates"),
        (
            '{{ block "x" . }}{{ end }}',
            "template: 1:3: {{block}} is not supported in alert templates",
        ),
        (
            "{{" + "(" * 150 + "1" + ")" * 150 + "}}",
            "template: 1:103: max expression depth exceeded",
        ),
        ("{{ if 1 }}" * 150 + "{{ end }}" * 150, "template: 1:1005: max expression depth exceeded"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        compile_template(text)
    assert str(info.value) == message
    assert not info.value.executing


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "{{ if gt $value 80 }}x{{ end }}",
            "template: 1:6: executing at <gt $value 80>: error calling gt: incompatible types for "
            "comparison",
        ),
        (
            "{{ humanize $labels.job }}",
            "template: 1:3: executing at <humanize $labels.job>: error "
            'calling humanize: strconv.ParseFloat: parsing "api": invalid syntax',
        ),
        (
            '{{ humanize "1e400" }}',
            'template: 1:3: executing at <humanize "1e400">: error calling '
            'humanize: strconv.ParseFloat: parsing "1e400": value out of range',
        ),
        (
            "{{ humanize true }}",
            "template: 1:3: executing at <humanize true>: error calling humanize: "
            "can't convert bool to float",
        ),
        (
            "{{ humanizeDuration $labels }}",
            "template: 1:3: executing at <humanizeDuration $labels>: "
            "error calling humanizeDuration: can't convert map[string]string to float",
        ),
        (
            '{{ humanizePercentage (safeHtml "1") }}',
            "template: 1:3: executing at <humanizePercentage "
            '(safeHtml "1")>: error calling humanizePercentage: can\'t convert template.HTML to '
            "float",
        ),
        (
            "{{ humanizeTimestamp nil }}",
            "template: 1:3: executing at <humanizeTimestamp nil>: error "
            "calling humanizeTimestamp: can't convert <nil> to float",
        ),
        (
            "{{ humanize1024 nil }}",
            "template: 1:3: executing at <humanize1024 nil>: error calling "
            "humanize1024: can't convert <nil> to float",
        ),
        (
            "{{ humanizeTimestamp 1e10 }}",
            "template: 1:3: executing at <humanizeTimestamp 1e10>: error "
            "calling humanizeTimestamp: 1e+10 cannot be represented as a nanoseconds timestamp "
            "since it "
            "overflows int64",
        ),
        (
            "{{ toUpper $value }}",
            "template: 1:11: executing at <$value>: wrong type for value; expected string; got "
            "float64",
        ),
        # Go blames the last node it evaluated, here the argument of safeHtml
        (
            '{{ toUpper (safeHtml "x") }}',
            'template: 1:21: executing at <"x">: wrong type '
            "for value; expected string; got template.HTML",
        ),
        ("{{ title 42 }}", "template: 1:9: executing at <42>: expected string; found 42"),
        ("{{ toLower nil }}", "template: 1:11: executing at <nil>: cannot assign nil to string"),
        (
            "{{ and nil 1 }}",
            "template: 1:7: executing at <nil>: cannot assign nil to reflect.Value",
        ),
        (
            "{{ $labels.job.foo }}",
            # Go positions a field chain at its first field
            "template: 1:10: executing at <$labels.job.foo>: can't evaluate field foo in type "
            "string",
        ),
        (
            "{{ $value.foo }}",
            "template: 1:9: executing at <$value.foo>: can't evaluate field foo in type float64",
        ),
        (
            "{{ .labels }}",
            "template: 1:3: executing at <.labels>: can't evaluate field labels in type "
            "struct { Labels map[string]string; ExternalLabels map[string]string; ExternalURL "
            "string; "
            "Value float64 }",
        ),
        ("{{ (1).x }}", "template: 1:4: executing at <1>: can't evaluate field x in type int"),
        (
            "{{ .Value 1 }}",
            "template: 1:3: executing at <.Value>: Value has arguments but cannot be invoked as "
            "function",
        ),
        (
            "{{ $labels.job 1 }}",
            "template: 1:10: executing at <$labels.job>: job is not a method but has arguments",
        ),
        (
            '{{ "x" | .Labels.job }}',
            "template: 1:16: executing at <.Labels.job>: job is not a method but has arguments",
        ),
        (
            "{{ humanize 1 2 }}",
            "template: 1:3: executing at <humanize>: wrong number of args for humanize: want 1 "
            "got 2",
        ),
        (
            "{{ printf }}",
            "template: 1:3: executing at <printf>: wrong number of args for printf: want at least "
            "1 got 0",
        ),
        (
            "{{ and }}",
            "template: 1:3: executing at <and>: wrong number of args for and: want at least 1 "
            "got 0",
        ),
        (
            "{{ len $value }}",
            "template: 1:3: executing at <len $value>: error calling len: len of type float64",
        ),
        (
            "{{ index $value 1 }}",
            "template: 1:3: executing at <index $value 1>: error calling index: "
            "can't index item of type float64",
        ),
        (
            "{{ index $labels 1 }}",
            "template: 1:3: executing at <index $labels 1>: error calling "
            "index: value has type int; should be string",
        ),
        (
            '{{ index "ab" 5 }}',
            'template: 1:3: executing at <index "ab" 5>: error calling index: index out of range: '
            "5",
        ),
        (
            '{{ index "ab" "x" }}',
            'template: 1:3: executing at <index "ab" "x">: error calling index: '
            "cannot index slice/array with type string",
        ),
        (
            "{{ eq $labels $labels }}",
            "template: 1:3: executing at <eq $labels $labels>: error calling "
            "eq: non-comparable type map[__name__:up instance:host-1.example.com:9100 job:api "
            "zone:a]: "
            "map[string]string",
        ),
        (
            "{{ eq 1 }}",
            "template: 1:3: executing at <eq 1>: error calling eq: missing argument for comparison",
        ),
        (
            '{{ eq 1 "1" }}',
            'template: 1:3: executing at <eq 1 "1">: error calling eq: incompatible '
            "types for comparison",
        ),
        (
            "{{ lt true false }}",
            "template: 1:3: executing at <lt true false>: error calling lt: "
            "invalid type for comparison",
        ),
        (
            "{{ lt $labels 1 }}",
            "template: 1:3: executing at <lt $labels 1>: error calling lt: "
            "invalid type for comparison",
        ),
        (
            "{{ range $value }}{{ end }}",
            "template: 1:9: executing at <$value>: range can't iterate over 0.5",
        ),
        (
            '{{ range "abc" }}{{ end }}',
            'template: 1:9: executing at <"abc">: range can\'t iterate over abc',
        ),
        (
            "{{ $value 1 }}",
            "template: 1:3: executing at <$value>: can't give argument to non-function $value",
        ),
        (
            "{{ 1 | $value }}",
            "template: 1:7: executing at <$value>: can't give argument to non-function $value",
        ),
        ("{{ . 1 }}", "template: 1:3: executing at <.>: can't give argument to non-function ."),
        (
            '{{ "x" 1 }}',
            'template: 1:3: executing at <"x">: can\'t give argument to non-function "x"',
        ),
        (
            "{{ (1) 2 }}",
            "template: 1:3: executing at <(1) 2>: can't give argument to non-function 1",
        ),
        ("{{ nil }}", "template: 1:3: executing at <nil>: nil is not a command"),
        (
            "{{ 9223372036854775808 }}",
            "template: 1:3: executing at <9223372036854775808>: 9223372036854775808 overflows int",
        ),
        (
            "{{ if false }}{{ $x := 1 }}{{ else }}{{ $x }}{{ end }}",
            "template: 1:40: executing at <$x>: undefined variable: $x",
        ),
        (
            '{{ match "(" "x" }}',
            'template: 1:3: executing at <match "(" "x">: error calling match: '
            "error parsing regexp: missing closing ): `(`",
        ),
        (
            '{{ reReplaceAll "a)" "" "x" }}',
            'template: 1:3: executing at <reReplaceAll "a)" "" "x">: '
            "error calling reReplaceAll: regexp: Compile(`a)`): error parsing regexp: unexpected "
            "): `a)`",
        ),
        (
            '{{ match "[a" "" }}',
            'template: 1:3: executing at <match "[a" "">: error calling match: '
            "error parsing regexp: missing closing ]: `[a`",
        ),
        (
            '{{ match "*" "" }}',
            'template: 1:3: executing at <match "*" "">: error calling match: '
            "error parsing regexp: missing argument to repetition operator: `*`",
        ),
        (
            '{{ match "a**" "" }}',
            'template: 1:3: executing at <match "a**" "">: error calling match: '
            "error parsing regexp: invalid nested repetition operator: `**`",
        ),
        (
            '{{ match "[z-a]" "" }}',
            'template: 1:3: executing at <match "[z-a]" "">: error calling '
            "match: error parsing regexp: invalid character class range: `z-a`",
        ),
        (
            '{{ match "\\\\q" "" }}',
            'template: 1:3: executing at <match "\\\\q" "">: error calling '
            "match: error parsing regexp: invalid escape sequence: `\\q`",
        ),
        (
            '{{ match "(?=a)" "" }}',
            'template: 1:3: executing at <match "(?=a)" "">: error calling '
            "match: error parsing regexp: invalid or unsupported Perl syntax: `(?=`",
        ),
        (
            '{{ match "(a)\\\\1" "" }}',
            'template: 1:3: executing at <match "(a)\\\\1" "">: error '
            "calling match: error parsing regexp: invalid escape sequence: `\\1`",
        ),
        (
            '{{ match "a{1001}" "" }}',
            'template: 1:3: executing at <match "a{1001}" "">: error '
            "calling match: error parsing regexp: invalid repeat count: `{1001}`",
        ),
        # RE2 accepts these two, Go 1.19 (Prometheus 2.42) does not
        (
            '{{ match "(?<n>a)" "" }}',
            'template: 1:3: executing at <match "(?<n>a)" "">: error calling '
            "match: error parsing regexp: invalid or unsupported Perl syntax: `(?<`",
        ),
        (
            '{{ match "a\\\\C" "" }}',
            'template: 1:3: executing at <match "a\\\\C" "">: error calling '
            "match: error parsing regexp: invalid escape sequence: `\\C`",
        ),
        (
            '{{ parseDuration "1.5h" }}',
            'template: 1:3: executing at <parseDuration "1.5h">: error '
            'calling parseDuration: not a valid duration string: "1.5h"',
        ),
        (  # checked against promtool 2.42 (as are the next three)
            '{{ parseDuration "" }}',
            'template: 1:3: executing at <parseDuration "">: error calling '
            "parseDuration: empty duration string",
        ),
        (
            '{{ parseDuration "293y" }}',
            'template: 1:3: executing at <parseDuration "293y">: error calling '
            "parseDuration: duration out of range",
        ),
        (
            '{{ parseDuration "9223372036855s" }}',
            'template: 1:3: executing at <parseDuration "9223372036855s">: error calling '
            "parseDuration: duration out of range",
        ),
        (
            '{{ parseDuration "١s" }}',
            'template: 1:3: executing at <parseDuration "١s">: error calling '
            'parseDuration: not a valid duration string: "١s"',
        ),
    ],
)
def test_execution_errors(text: str, message: str) -> None:
    tmpl = compile_template(text)  # these all parse
    with pytest.raises(TemplateError) as info:
        tmpl.render(DATA)
    assert str(info.value) == message
    assert info.value.executing


def test_errors_are_value_errors_with_a_location() -> None:
    with pytest.raises(ValueError, match="function"):
        compile_template("x\n  {{ nope }}")
    try:
        compile_template("x\n  {{ nope }}")
    except TemplateError as err:
        assert (err.line, err.col, err.msg) == (2, 5, 'function "nope" not defined')


# --------------------------------------------------------------------------- expand


def test_expand_renders() -> None:
    text = "{{ $labels.instance }} of job {{ $labels.job }} is at {{ $value | humanizePercentage }}"
    assert expand(text, DATA) == "host-1.example.com:9100 of job api is at 50%"


@pytest.mark.parametrize(
    ("text", "plain", "prometheus"),
    [
        (
            '{{ query "up" }}',
            '<error expanding template: template: 1:3: function "query" is not supported: '
            "templates "
            "cannot query Prometheus>",
            "<error expanding template: error parsing template __alert_HighLoad: template: "
            '__alert_HighLoad:1: function "query" is not supported: templates cannot query '
            "Prometheus>",
        ),
        (
            "x {{ if gt $value 80 }}y{{ end }}",
            "<error expanding template: template: 1:8: executing at <gt $value 80>: error calling "
            "gt: "
            "incompatible types for comparison>",
            # Prometheus counts columns after its 112-byte "{{$labels := .Labels}}..." prelude
            "<error expanding template: error executing template __alert_HighLoad: template: "
            '__alert_HighLoad:1:120: executing "__alert_HighLoad" at <gt $value 80>: error '
            "calling gt: "
            "incompatible types for comparison>",
        ),
        (
            "é\n{{ toUpper $value }}",
            "<error expanding template: template: 2:11: executing at <$value>: wrong type for "
            "value; "
            "expected string; got float64>",
            "<error expanding template: error executing template __alert_HighLoad: template: "
            '__alert_HighLoad:2:11: executing "__alert_HighLoad" at <$value>: wrong type for '
            "value; "
            "expected string; got float64>",
        ),
        (
            "é {{ toUpper $value }}",
            "<error expanding template: template: 1:14: executing at <$value>: wrong type for "
            "value; "
            "expected string; got float64>",  # columns are UTF-8 byte offsets, as in Go
            "<error expanding template: error executing template __alert_HighLoad: template: "
            '__alert_HighLoad:1:126: executing "__alert_HighLoad" at <$value>: wrong type for '
            "value; "
            "expected string; got float64>",
        ),
    ],
)
def test_expand_reports_errors_like_prometheus(text: str, plain: str, prometheus: str) -> None:
    assert expand(text, DATA) == plain
    assert expand(text, DATA, alert_name="HighLoad") == prometheus


def test_compile_is_cached_and_templates_are_reusable() -> None:
    text = "{{ $labels.job }}={{ $value }}"
    tmpl = compile_template(text)
    assert compile_template(text) is tmpl
    assert isinstance(tmpl, Template)
    assert tmpl.render(DATA) == "api=0.5"
    assert tmpl.render(with_value(2.0)) == "api=2"
    assert text in repr(tmpl)


def test_template_data_is_frozen_with_defaults() -> None:
    data = TemplateData(labels={"a": "b"}, value=1.0)
    assert data.external_labels == {}
    assert data.external_url == ""
    with pytest.raises(AttributeError):
        data.value = 2.0  # type: ignore[misc]


def test_templates_cannot_reach_python_objects() -> None:
    # Field access only ever looks up the four data fields or map keys.
    for text in ("{{ .__class__ }}", "{{ $labels.__class__ }}", "{{ .labels.__dict__ }}"):
        result = expand(text, DATA)
        assert result in ("", "<no value>") or result.startswith("<error expanding template:")
    assert expand("{{ $labels.__class__ }}", DATA) == ""  # just a missing label


# --------------------------------------------------------------------------- properties

_TOKENS = [
    "{{",
    "}}",
    "{{- ",
    " -}}",
    " ",
    "\n",
    "$labels",
    "$value",
    "$x",
    ".Labels",
    ".job",
    ".",
    "|",
    "(",
    ")",
    ":=",
    "=",
    ",",
    "humanize",
    "printf",
    "title",
    "len",
    "index",
    "eq",
    "lt",
    "and",
    "or",
    "not",
    "print",
    "match",
    "reReplaceAll",
    "humanizeTimestamp",
    "humanizeDuration",
    '"%d"',
    '"%.2f|%v|%x"',
    '"a+"',
    '"("',
    '"$1"',
    "1",
    "-2",
    "1.5",
    "1e30",
    "0x1F",
    "'a'",
    "true",
    "nil",
    "`raw`",
    "if",
    "else",
    "end",
    "range",
    "with",
    "break",
    "continue",
    "/*",
    "*/",
    "$",
    "query",
    "define",
]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_compile_raises_only_template_errors_on_any_text(text: str) -> None:
    with contextlib.suppress(TemplateError):
        compile_template(text)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.sampled_from(_TOKENS), max_size=30).map("".join),
    st.floats(allow_nan=True, allow_infinity=True),
)
def test_template_like_input_only_ever_raises_template_errors(text: str, value: float) -> None:
    try:
        tmpl = compile_template(text)
    except TemplateError:
        return
    with contextlib.suppress(TemplateError):
        assert isinstance(tmpl.render(with_value(value)), str)
    assert expand(text, with_value(value)) is not None  # expand never raises


@given(st.floats())
def test_value_round_trips_through_go_formatting(value: float) -> None:
    out = render("{{ $value }}", with_value(value))
    if math.isnan(value):
        assert out == "NaN"
    else:
        assert float(out.replace("Inf", "inf")) == value
        assert "e" not in out or "e+" in out or "e-" in out


@given(st.floats(allow_nan=False, allow_infinity=False), st.integers(0, 20))
def test_printf_f_matches_exact_decimal_rounding(value: float, prec: int) -> None:
    assert render(f'{{{{ printf "%.{prec}f" $value }}}}', with_value(value)) == f"{value:.{prec}f}"


@given(st.floats())
def test_humanize_functions_accept_every_float(value: float) -> None:
    data = with_value(value)
    for fn in ("humanize", "humanize1024", "humanizeDuration", "humanizePercentage"):
        assert render(f"{{{{ {fn} $value }}}}", data)


@given(st.text().filter(lambda s: "{{" not in s))
def test_text_without_actions_is_unchanged(text: str) -> None:
    assert render(text) == text


# --------------------------------------------------------------------------- module rules


ENGINE_FILES = sorted(Path(gotmpl.__file__).parent.glob("*.py"))


@pytest.mark.parametrize(
    "path",
    [*ENGINE_FILES, Path(watchdog.gocompat.__file__), Path(watchdog.templates.__file__)],
    ids=lambda p: p.name,
)
def test_module_is_documented_and_does_no_io(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    assert ast.get_docstring(tree) and "must not" in ast.get_docstring(tree)  # type: ignore[operator]
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    forbidden = {"aiohttp", "asyncio", "subprocess", "time", "os", "socket", "sqlite3", "io"}
    assert not imported & forbidden
    assert "eval(" not in source and "exec(" not in source and "getattr(" not in source


def test_engine_is_the_package_of_go_s_modules() -> None:
    # lexer, parser, executor, fmt and functions each have their own module
    assert {p.stem for p in ENGINE_FILES} >= {"lex", "parse", "exec", "fmt", "funcs", "values"}


def test_old_import_path_is_the_same_engine() -> None:
    for name in ("Template", "TemplateData", "TemplateError", "compile_template", "expand"):
        assert getattr(watchdog.templates, name) is getattr(gotmpl, name)
