"""Byte-for-byte oracle: watchdog.templates against Prometheus itself (`promtool test rules`).

For every alert of every rule file in the awesome-prometheus-alerts corpus we write a rule
with the same label and annotation templates over a synthetic series, compute the expected
labels and annotations with `expand()`, and let promtool check them.  Values are chosen to
hit every humanize branch and Go's float formatting (exponents, NaN, Inf).  A second set of
synthetic templates covers the functions and printf verbs the corpus does not use.

Needs the `promtool` binary (Debian package prometheus).  Without it, or without the corpus,
these tests fail when the CI environment variable is set and are skipped otherwise.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from watchdog.gotmpl import TemplateData, expand

pytestmark = pytest.mark.prometheus

# shared/ sits beside the repository, here and in CI; WATCHDOG_TEMPLATE_CORPUS overrides it.
_DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared/corpus/awesome-prometheus-alerts"
CORPUS_DIR = Path(os.environ.get("WATCHDOG_TEMPLATE_CORPUS", _DEFAULT_CORPUS))
PROMTOOL = os.environ.get("PROMTOOL") or shutil.which("promtool") or "/usr/bin/promtool"
CORPUS_FILES = sorted(CORPUS_DIR.glob("*.y*ml")) if CORPUS_DIR.is_dir() else []

# Values per alert: zero, micro, milli, units, kilo, hours, days/giga, negative, tera,
# nano, and the special values.  Each becomes its own series, so its own alert.
VALUES = (
    0.0,
    0.000123,
    0.5,
    42.0,
    1234.5678,
    5025.5,
    1.5e9,
    -42.25,
    123456789012.0,
    3.14159e-07,
    math.nan,
    math.inf,
)
EXTERNAL_LABELS = {"monitor": "oracle", "region": "eu-west-1"}
EXTERNAL_URL = "https://prometheus.example.com/prom"
_LABEL_REF = re.compile(
    r"\$labels\.([A-Za-z_]\w*)|\.Labels\.([A-Za-z_]\w*)|index\s+\$labels\s+\"([A-Za-z_]\w*)\""
)


def _need(path: str | Path, what: str) -> None:
    if not Path(path).exists():
        message = f"{what} not found at {path}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def promtool() -> str:
    _need(PROMTOOL, "promtool")
    return PROMTOOL


@dataclass(frozen=True)
class Alert:
    labels: Mapping[str, str]
    annotations: Mapping[str, str]


def _series_labels(alert: Alert, case: int) -> dict[str, str]:
    """Labels of the synthetic series for one value: everything the templates look up."""
    labels = {
        "case": str(case),
        "instance": f"host-{case}.example.com:{9100 + case}",
        "job": f"job-{case}",
    }
    if case == 3:
        labels["instance"] = "[2001:db8::3]:9100"
    if case == 1:
        return labels  # the other referenced labels are missing: they must render as ""
    texts = [*alert.labels.values(), *alert.annotations.values()]
    for text in texts:
        for match in _LABEL_REF.finditer(text):
            name = next(g for g in match.groups() if g)
            if name not in labels and name != "__name__":
                labels[name] = f"Mixed Case ü {name}" if case == 7 else f"{name}-{case}"
    return labels


def _promql_number(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Inf" if v > 0 else "-Inf"
    return repr(v)


def _selector(metric: str, labels: Mapping[str, str]) -> str:
    inner = ", ".join(f"{k}={_promql_string(v)}" for k, v in sorted(labels.items()))
    return f"{metric}{{{inner}}}"


def _promql_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def build_oracle(
    alerts: list[Alert], values: tuple[float, ...] = VALUES, rule_file: str = "rules.yml"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A promtool rule file and unit test asserting our expansion of every alert."""
    rules: list[dict[str, object]] = []
    series: list[dict[str, str]] = []
    tests: list[dict[str, object]] = []
    for n, alert in enumerate(alerts):
        metric, name = f"watchdog_tpl_input_{n}", f"WatchdogTpl{n}"
        rule: dict[str, object] = {"alert": name, "expr": metric, "for": "0s"}
        if alert.labels:
            rule["labels"] = dict(alert.labels)
        if alert.annotations:
            rule["annotations"] = dict(alert.annotations)
        rules.append(rule)
        expected: list[dict[str, object]] = []
        for case, value in enumerate(values):
            labels = _series_labels(alert, case)
            sample = _promql_number(value)
            series.append({"series": _selector(metric, labels), "values": f"{sample} {sample}"})
            data = TemplateData(
                labels={"__name__": metric, **labels},
                value=value,
                external_labels=EXTERNAL_LABELS,
                external_url=EXTERNAL_URL,
            )
            exp_labels = dict(labels)
            for key, text in alert.labels.items():
                exp_labels[key] = expand(text, data, alert_name=name)
                if not exp_labels[key]:
                    del exp_labels[key]  # Prometheus drops labels that expand to ""
            exp_annotations = {
                key: expand(text, data, alert_name=name) for key, text in alert.annotations.items()
            }
            expected.append({"exp_labels": exp_labels, "exp_annotations": exp_annotations})
        tests.append({"eval_time": "1m", "alertname": name, "exp_alerts": expected})
    rule_doc = {"groups": [{"name": "watchdog-template-oracle", "rules": rules}]}
    test_doc = {
        "rule_files": [rule_file],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "external_labels": EXTERNAL_LABELS,
                "external_url": EXTERNAL_URL,
                "input_series": series,
                "alert_rule_test": tests,
            }
        ],
    }
    return rule_doc, test_doc


# yaml.safe_dump's representer, with libyaml's emitter when available (5x faster here).
_SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def write_yaml(path: Path, doc: dict[str, Any]) -> None:
    # The safe dumper quotes every string that needs it; no line folding, so templates stay intact.
    text = yaml.dump(doc, Dumper=_SafeDumper, allow_unicode=True, sort_keys=False, width=2**16)
    path.write_text(text, encoding="utf-8")


def promtool_test(promtool: str, workdir: Path, test_files: list[str]) -> tuple[bool, str]:
    """Run `promtool test rules`; stderr is merged so failures stay next to their file."""
    proc = subprocess.run(
        [promtool, "test", "rules", *test_files],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        check=False,
    )
    return proc.returncode == 0, proc.stdout


def run_promtool(
    promtool: str, workdir: Path, rule_doc: dict[str, Any], test_doc: dict[str, Any]
) -> tuple[bool, str]:
    write_yaml(workdir / "rules.yml", rule_doc)
    write_yaml(workdir / "test.yml", test_doc)
    return promtool_test(promtool, workdir, ["test.yml"])


def corpus_alerts(path: Path) -> Iterator[Alert]:
    doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_SafeLoader) or {}
    for group in doc.get("groups") or []:
        for rule in group.get("rules") or []:
            if "alert" in rule:
                yield Alert(rule.get("labels") or {}, rule.get("annotations") or {})


_GO_ESCAPE = re.compile(r'\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|[abfnrtv"\\])')
_GO_SIMPLE = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_ALERT = re.compile(r"Labels:(\{.*?\})\n\s*Annotations:(\{.*?\}),?\n")
_PAIR = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _go_unquote(s: str) -> str:
    def one(m: re.Match[str]) -> str:
        e = m.group(1)
        return _GO_SIMPLE.get(e, e) if len(e) == 1 else chr(int(e[1:], 16))

    return _GO_ESCAPE.sub(one, s)


def _label_map(text: str) -> dict[str, str]:
    return {k: _go_unquote(v) for k, v in _PAIR.findall(text)}


def explain(output: str) -> str:
    """The differing values in promtool's exp/got listing, one line each."""
    lines: list[str] = []
    for block in output.split("alertname: ")[1:]:
        exp_part, _, got_part = block.partition("got:[")
        expected = {a: b for a, b in _ALERT.findall(exp_part)}
        for labels, got in _ALERT.findall(got_part):
            want = expected.get(labels)
            if want is None:
                lines.append(f"unexpected alert {labels}")
                continue
            got_map, want_map = _label_map(got), _label_map(want)
            for key in sorted(set(got_map) | set(want_map)):
                if got_map.get(key) != want_map.get(key):
                    lines.append(
                        f"{labels} {key}:\n  prometheus: {got_map.get(key)!r}"
                        f"\n  watchdog:   {want_map.get(key)!r}"
                    )
    return "\n".join(lines[:40]) or output[:6000]


def _assert_oracle(promtool: str, tmp_path: Path, alerts: list[Alert]) -> None:
    ok, output = run_promtool(promtool, tmp_path, *build_oracle(alerts))
    assert ok, f"promtool disagrees with watchdog.templates:\n{explain(output)}"


def test_corpus_is_present() -> None:
    _need(CORPUS_DIR, "template corpus")
    assert len(CORPUS_FILES) >= 100


@pytest.fixture(scope="module")
def corpus_verdicts(promtool: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """promtool's report for each corpus file, from one promtool run over all of them."""
    workdir = tmp_path_factory.mktemp("corpus-oracle")
    test_files = []
    for path in CORPUS_FILES:
        alerts = list(corpus_alerts(path))
        if alerts:
            rule_doc, test_doc = build_oracle(alerts, rule_file=f"{path.stem}.rules.yml")
            write_yaml(workdir / f"{path.stem}.rules.yml", rule_doc)
            write_yaml(workdir / f"{path.stem}.test.yml", test_doc)
            test_files.append(f"{path.stem}.test.yml")
    _, output = promtool_test(promtool, workdir, test_files)
    verdicts = {}
    for section in output.split("Unit Testing:  ")[1:]:
        name, _, report = section.partition("\n")
        verdicts[name.strip().removesuffix(".test.yml")] = report
    return verdicts


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
def test_corpus_file_renders_like_prometheus(corpus_verdicts: dict[str, str], path: Path) -> None:
    if not any(corpus_alerts(path)):
        pytest.skip("no alerting rules in this file")
    report = corpus_verdicts.get(path.stem, "promtool did not report on this file")
    assert report.strip() == "SUCCESS", f"promtool disagrees:\n{explain(report)}"


# Templates the corpus does not exercise, checked the same way.  Several annotations per
# alert; an annotation that fails to execute only replaces itself with the error text.
# (Templates that fail to *parse* make Prometheus reject the rule file, so those are
# covered by tests/test_templates.py instead.)
SYNTHETIC: list[dict[str, str]] = [
    {
        "humanize": "{{ humanize $value }}|{{ $value | humanize1024 }}|"
        "{{ humanizePercentage $value }}",
        "duration": "{{ humanizeDuration $value }}|{{ .Value | humanizeDuration }}",
        "timestamp": "{{ humanizeTimestamp 1.5e9 }}|{{ humanizeTimestamp 1234.5678 }}",
        "strings": '{{ humanize "1_000" }}|{{ humanize "0x1p-2" }}|{{ humanize1024 "2048" }}',
        "ints": "{{ humanize 1234 }}|{{ humanizeDuration 90061 }}|{{ humanize1024 -5000 }}",
    },
    {
        "floats": '{{ printf "%v|%g|%e|%E|%.3f|%8.2f|%-8.1f|%+.2e|%08.3f|%G" '
        "$value $value $value $value $value $value $value $value $value $value }}",
        "hex": '{{ printf "%x|%X|%.2x|%b" $value $value $value $value }}',
        "sharp": '{{ printf "%#g|%#.3g|%#e|%#.0f|%#v" $value $value $value $value $value }}',
        "ints": '{{ printf "%d|%5d|%-5d|%05d|%x|%X|%#x|%o|%#o|%b|%c|%q|%U|%+d|% d|%.3d" '
        "42 42 42 -42 255 255 255 8 8 5 65 66 67 5 5 7 }}",
        "strings": '{{ printf "%s|%10s|%-10s|%.3s|%q|%#q|%x|% x|%X|%05s|%v" '
        '"abc" "abc" "abc" "abcdef" "a\\"b\\n" "ab" "hé" "hi" "hi" "abc" "x" }}',
    },
    {
        "bad": '{{ printf "%d|%s|%t" $value $value "x" }}|{{ printf "%d %d" 1 }}|'
        '{{ printf "%d" 1 2 "x" }}|{{ printf "%!" }}|{{ printf "%" }}|{{ printf "%z" 1 }}',
        "badwidth": '{{ printf "%99999999d" 1 }}|{{ printf "%9999999d|" 1 | len }}',
        "index": '{{ printf "%[2]d %[1]d|%[3]d|%*d|%-*d|%.*f" 1 2 5 1 5 2 2 3.14159 }}',
        "maps": '{{ printf "%v|%s|%d|%#v|%+v" $labels $externalLabels $externalLabels '
        "$externalLabels . }}",
        "print": '{{ print 1 2 "a" "b" 3 nil }}|{{ println 1 "a" }}|{{ print }}',
        # (not the externalURL/pathPrefix functions: promtool calls them with a nil URL)
        "data": "{{ . }}|{{ $externalURL }}|{{ .ExternalURL }}|{{ $externalLabels.region }}",
    },
    {
        "literals": "{{ 1e3 }}|{{ 0x10 }}|{{ 010 }}|{{ 1_000 }}|{{ -0.0 }}|{{ 'a' }}|{{ 1.5 }}|"
        '{{ true }}|{{ `raw\\n` }}|{{ "q\\t\\u00e9" }}',
        "case": '{{ title "hello wORLD foo_bar x-y 3am élan" }}|{{ toUpper "straße ǆ" }}|'
        '{{ toLower "İSTANBUL ÀB" }}|{{ $labels.job | toUpper }}|{{ title $labels.instance }}',
        "ports": '{{ stripPort "[::1]:80" }}|{{ stripPort "a:b:c" }}|{{ stripPort "host" }}|'
        '{{ stripPort $labels.instance }}|{{ stripPort "h:" }}|{{ stripPort "[x]y:1" }}',
        "regex": '{{ reReplaceAll "(\\\\w+)-(\\\\d+)" "$2_${1}x$$" $labels.job }}|'
        '{{ reReplaceAll "x*" "-" "abxd" }}|{{ match "^job-[0-9]+$" $labels.job }}|'
        '{{ reReplaceAll "a(?P<n>b)?" "[$n]" "ab a" }}|{{ match "(?i)JOB" $labels.job }}',
        "duration": '{{ parseDuration "1h30m" }}|{{ parseDuration "1d2h3m4s5ms" }}|'
        '{{ parseDuration "0" }}',
    },
    {
        "control": "{{ if gt $value 100.0 }}big{{ else if lt $value 0.0 }}neg{{ else }}small"
        "{{ end }}{{ with $labels.job }} job={{ . }}{{ end }}"
        "{{ with $labels.nope }}x{{ else }} none{{ end }}",
        "range": "{{ range $k, $v := $labels }}{{ $k }}={{ $v }};{{ end }}"
        "{{ range $externalLabels }}[{{ . }}]{{ end }}{{ range $k, $v := .Labels }}"
        '{{ if eq $k "job" }}{{ break }}{{ end }}{{ $k }},{{ end }}',
        "vars": '{{ $x := 1 }}{{ $x = 2 }}{{ $x }}{{ $y := printf "%.1f" $value }}'
        '{{ if true }}{{ $y = "in" }}{{ $z := 3 }}{{ $z }}{{ end }}{{ $y }}',
        "logic": '{{ and 1 0 }}|{{ or 0 "" "x" }}|{{ not $value }}|{{ and $labels.job 5 }}|'
        '{{ len $labels }}|{{ len "hé" }}|{{ index $labels "job" }}|{{ index $labels "no" }}|'
        '{{ eq $labels.job "job-2" "job-3" }}|{{ ne 1 2 }}|{{ le 1.5 1.5 }}|'
        '{{ ge "a" "b" }}',
        "trim": 'a  {{- 1 -}}  b {{/* comment */}} c {{- /* trimmed */ -}} d\n{{- "e" }}',
        "pipes": '{{ $value | printf "%.1f" | printf "<%s>" }}|{{ (printf "%d" 5) | len }}'
        '|{{ (.Labels).job }}|{{ $labels.job | printf "%s-%s" "x" }}',
    },
    {
        "humanize_edges": "{{ humanize 1e300 }}|{{ humanize -1e-30 }}|{{ humanize 999.95 }}|"
        "{{ humanize 0.00099995 }}|{{ humanize1024 1 }}|{{ humanize1024 1e30 }}|"
        "{{ humanize 1e27 }}|{{ humanize 1e-27 }}|{{ humanizePercentage 0.123456 }}",
        "duration_edges": "{{ humanizeDuration 1e300 }}|{{ humanizeDuration -90061.5 }}|"
        "{{ humanizeDuration 59.99999 }}|{{ humanizeDuration 0.0009 }}|{{ humanizeDuration -0.5 }}"
        "|{{ humanizeDuration 9.3e18 }}|{{ humanizeDuration 1e-30 }}",
        "timestamp_edges": "{{ humanizeTimestamp -1.0015 }}|{{ humanizeTimestamp -0.0000015 }}|"
        "{{ humanizeTimestamp 9.2e9 }}|{{ humanizeTimestamp -9.2e9 }}|{{ humanizeTimestamp 0.1 }}|"
        "{{ humanizeTimestamp 1e9 }}|{{ humanizeTimestamp 0 }}|{{ humanizeTimestamp 1.0049 }}",
        "timestamp_limit": "{{ humanizeTimestamp 9.223372036854775807e9 }}",
        "timestamp_over": "{{ humanizeTimestamp -9.3e9 }}",
        "float_edges": '{{ printf "%.0x|%.1x|%.3x|%x|%x|%.0f|%.0f|%.1f|%.3g|%.10g|%g|%v" '
        "1.96875 1.96875 1.0001 0.0 -5e-324 0.5 1.5 0.25 1e21 1e-7 1e21 1e-5 }}",
        "special_floats": '{{ printf "%06.2f|%+f|% f|%f|%-6g|%+v|% e|%x" '
        "$value $value $value $value $value $value $value $value }}",
        "more_floats": '{{ printf "%v|%v|%v|%v|%v|%v|%6.2v|%e|%.0e|%+v|% v" '
        "100000.0 1000000.0 123456.7 0.0001 0.00001 5e-324 3.14159 0.0 12345.0 1.5 1.5 }}",
        "string_edges": r'{{ printf "%.2x|%5.1q|%-8q|%+q|%q|%x|%X|% #x|%T" '
        r'"hé" "hé" "ab" "hé\u2028" "\x01\u00ad" "" "a" "ab" (safeHtml "x") }}',
        "regex_edges": r'{{ match "\\bfoo\\b" "a foo b" }}|{{ match "\\bfoo\\b" "éfoo" }}|'
        r'{{ match "(?i)É" "é" }}|{{ match "^a$" "a\n" }}|{{ match "(?m)^b$" "a\nb\nc" }}|'
        r'{{ match "[[:alpha:]]+[[:digit:]]" "ab1" }}|{{ match "\\d" "٣" }}|'
        r'{{ reReplaceAll "(a)(b)?" "$2$1$10${1}0$x" "ab a" }}|{{ reReplaceAll "" "-" "héé" }}|'
        r'{{ reReplaceAll "\\s+" "_" "a \t b\u00a0c" }}|{{ reReplaceAll "\\z" "!" "ab" }}',
        "title_edges": r'{{ title "ǆemal ßtraße hello-world it\u0027s 1st o\u0301k" }}|'
        r'{{ toUpper "ﬀ ǅ ı" }}|{{ toLower "ǅ ΣΑΣ" }}|{{ title "" }}',
        # (stripDomain arrived after Prometheus 2.42, so tests/test_templates.py covers it)
        "strip_edges": '{{ stripPort "[::1]" }}|{{ stripPort "[::1]:" }}|{{ stripPort ":80" }}',
    },
    {
        # Go RE2 syntax that Python's re rejected or read differently (templates now use RE2)
        "re2_classes": r'{{ match "\\p{Lu}" "É" }}|{{ match "^\\pL+-\\pN+$" $labels.job }}|'
        r'{{ reReplaceAll "\\p{Greek}+" "<$0>" "αβγ abc" }}|{{ reReplaceAll "\\PL" "_" "a1-é" }}|'
        r'{{ reReplaceAll "[\\p{Lu}\\d]" "." "aÉ1b" }}|{{ match "(?i)\\x{212a}" "k" }}|'
        r'{{ reReplaceAll "[[:^alpha:]]" "." "aé1" }}|{{ match "\\pN" "٣" }}',
        "re2_flags": r'{{ reReplaceAll "(?U)a+" "-" "baaac" }}|'
        r'{{ reReplaceAll "(?U)a+?" "-" "baaac" }}|{{ match "a(?i)b" "aB" }}|'
        r'{{ match "(?i:A)b" "aB" }}|{{ match "(?i)A(?-i)b" "aB" }}|'
        r'{{ reReplaceAll "a(?s).b" "X" "a\nb a\nb" }}|'
        r'{{ reReplaceAll "(?m)^x(?-m)$" "Y" "x\nx" }}|{{ match "(?i)straße" "STRAẞE" }}|'
        r'{{ match "(?i)σ" "ς" }}',
        "re2_quote": r'{{ match "\\Q.*\\E" "a.*b" }}|{{ match "\\Q.*\\E" "ab" }}|'
        r'{{ reReplaceAll "\\Q(?<\\E" "-" "a(?<b" }}|{{ match "\\Q\\\\E" "\\" }}|'
        r'{{ match "[(?<]" "<" }}|{{ reReplaceAll "x{,2}" "-" "x{,2}" }}|{{ match "\\_" "_" }}',
        "re2_positions": r'{{ match "\\B" "aéb" }}|{{ reReplaceAll "\\B" "-" "aébc" }}|'
        r'{{ reReplaceAll "\\b" "|" "aé b漢c" }}|{{ reReplaceAll "" "-" "漢é" }}|'
        r'{{ reReplaceAll "a*" "-" "baaacé" }}|{{ reReplaceAll "(?m)$" "!" "a\nb\n" }}',
        "re2_expand": r'{{ reReplaceAll "(?P<n>a)|(?P<n>b)" "[$n]" "ab" }}|'
        r'{{ reReplaceAll "(?P<01>a)(b)" "[$01|${01}|$1|$2]" "ab" }}|'
        r'{{ reReplaceAll "(a)" "[$1é|${1}é|$000000001|$1000000000]" "a" }}|'
        r'{{ reReplaceAll "(a|ab)(c|bcd)(d*)" "[$1|$2|$3]" "abcd" }}|'
        r'{{ reReplaceAll "(a*)+" "[$1]" "b" }}|{{ reReplaceAll "(?:(a)|b)+" "[$1]" "ab" }}',
        # only the groups a replacement names are captured: the others must not matter
        "re2_groups": r'{{ reReplaceAll "(?:(a)|(b))+" "<$2>" "abba" }}|'
        r'{{ reReplaceAll "(a*)*(b)" "<$2>" "aab" }}|{{ reReplaceAll "((a)|b)*" "<$2>" "ab" }}|'
        r'{{ reReplaceAll "(a*)*(a*)*" "<$2>" "aaa" }}|'
        r'{{ reReplaceAll "(a|b)*(b)?" "<$2>" "abab" }}|'
        r'{{ reReplaceAll "(?P<x>a)(?P<y>b)?" "<${y}>" "ab a" }}',
        # catastrophic backtracking for Python's re (2^40 paths); linear for RE2 and Go
        "re2_linear": '{{ match "(a+)+$" "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab" }}|'
        '{{ reReplaceAll "(x+x+)+y" "-" "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxz" }}',
    },
    {
        "cmp_err": "{{ if gt $value 80 }}x{{ end }}",
        "conv_err": "{{ humanize $labels.job }}",
        "type_err": "{{ toUpper $value }}",
        "field_err": "{{ $labels.job.foo }}",
        "struct_err": "{{ .labels }}",
        "args_err": "{{ humanize 1 2 }}",
        "len_err": "{{ len $value }}",
        "range_err": "{{ range $value }}{{ end }}",
        "nonfunc_err": "{{ $value 1 }}",
        "ts_err": "{{ humanizeTimestamp 1e10 }}",
        "lit_err": "{{ toUpper 42 }}",
        "index_err": "{{ index $labels 1 }}",
        "nil_err": "{{ nil }}",
        "scope_err": "{{ if false }}{{ $x := 1 }}{{ else }}{{ $x }}{{ end }}",
        "has_args_err": "{{ .Value 1 }}|{{ $labels.job 1 }}",
        "overflow_err": "{{ 9223372036854775808 }}",
        "nil_arg_err": "{{ toUpper nil }}|{{ and nil 1 }}",
        "regex_err": '{{ match "(" "x" }}',
        "regex_err2": '{{ reReplaceAll "a)" "" "x" }}',
        "regex_err3": '{{ match "[a" "x" }}',
        "regex_err4": '{{ match "*" "x" }}',
        "regex_err5": '{{ match "a**" "x" }}',
        "regex_err6": '{{ match "[z-a]" "x" }}',
        "regex_err7": r'{{ match "\\q" "x" }}',
        # accepted by RE2 (or by Python's re), refused by Go 1.19
        "regex_err8": '{{ match "(?<n>a)" "x" }}',
        "regex_err9": r'{{ match "a\\C" "x" }}',
        "regex_err10": '{{ match "(?P<é>a)" "x" }}',
        "regex_err11": r'{{ reReplaceAll "\\C(" "" "x" }}',
        "regex_err12": r'{{ match "(?=a)(a)\\1" "x" }}',
        "regex_err13": '{{ match "(?x) a" "x" }}',
        "regex_err14": r'{{ match "a\\Z" "x" }}',
        "regex_err15": '{{ match "(a{100}){11}" "x" }}',
        "regex_err16": r'{{ match "\\p{Foo}" "x" }}',
        "regex_err17": r'{{ reReplaceAll "a\\" "" "x" }}',
        "regex_err18": r'{{ match "\\x{110000}" "x" }}',
        "regex_err19": '{{ match "(?i" "x" }}',
        "eq_err": "{{ eq $labels $labels }}",
        "lt_err": "{{ lt true false }}",
        "eq_err2": "{{ eq 1 }}",
        "lt_err2": "{{ lt $labels 1 }}",
        "index_err2": "{{ index $value 1 }}",
        "html_err": '{{ toUpper (safeHtml "x") }}',
        "dur_err": '{{ parseDuration "1.5h" }}',
        "dur_err2": '{{ parseDuration "" }}',
        "dur_range": '{{ parseDuration "292y" }}|{{ parseDuration "9223372036854ms" }}|'
        '{{ parseDuration "106751d23h47m16s854ms" }}',
        "dur_range_err": '{{ parseDuration "293y" }}',
        "dur_range_err2": '{{ parseDuration "106751d23h47m16s855ms" }}',
    },
]


def test_synthetic_templates_render_like_prometheus(promtool: str, tmp_path: Path) -> None:
    alerts = [Alert({}, annotations) for annotations in SYNTHETIC]
    alerts.append(Alert({"severity": "{{ if gt $value 1.0 }}page{{ end }}", "team": "a"}, {}))
    _assert_oracle(promtool, tmp_path, alerts)


def test_a_wrong_expectation_makes_promtool_fail(promtool: str, tmp_path: Path) -> None:
    """The oracle can fail: tamper with one expected annotation and promtool must object."""
    rule_doc, test_doc = build_oracle([Alert({}, {"v": "{{ $value }}"})], values=(42.0,))
    exp_alert = test_doc["tests"][0]["alert_rule_test"][0]["exp_alerts"][0]
    assert exp_alert["exp_annotations"] == {"v": "42"}
    ok, _ = run_promtool(promtool, tmp_path, rule_doc, test_doc)
    assert ok
    exp_alert["exp_annotations"] = {"v": "42.0"}  # Python's str(), not Go's %v
    ok, output = run_promtool(promtool, tmp_path, rule_doc, test_doc)
    assert not ok
    assert 'v="42"' in output
