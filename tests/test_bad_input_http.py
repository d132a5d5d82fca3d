"""Bad input over HTTP never earns a 500 (issue 12): every endpoint answers a 4xx with a one-line
JSON error for 50,000-deep JSON, 5,000-digit numbers, NaN/Infinity/1e20 times and durations,
unknown charsets, lone surrogates, oversized bodies and a non-UTF-8 byte in the bearer token —
and the listings stay readable afterwards (no stored value breaks them). With
`WATCHDOG_API_READ_TOKEN` set, `GET /api/*` needs a token while the probes, `/metrics` and the
status page stay open.

Against `watchdog run` as a process (its public surface only), plus a hypothesis pass that
throws generated JSON and raw bytes at every endpoint: 0 responses of 500 or above.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from watchdog_process import READ_TOKEN, TOKEN, Response, WatchdogProcess

from watchdog.cli import parse_time as cli_time
from watchdog.schema import ValidationError
from watchdog.settings import Settings
from watchdog.webinput import MAX_BODY_BYTES, BadInput, parse_json

pytestmark = pytest.mark.slow

RULES = """
groups:
  - name: g
    rules:
      - alert: Down
        expr: up == 0
        actions: [noop]
      - alert: Slow
        expr: latency
        threshold: "> 2"
        baseline: {deploy: true}
actions:
  noop:
    steps:
      - command: {argv: ["true"]}
"""

# the endpoints that take a JSON body (Alertmanager's API v2 too, for amtool and Grafana)
BODY_WRITES = [("POST", "/api/v1/silences"), ("POST", "/api/v1/acks"),
               ("POST", "/api/v1/deploys"), ("POST", "/api/v1/actions/noop/run"),
               ("POST", "/api/v2/silences")]
WRITES = [*BODY_WRITES, ("DELETE", "/api/v1/silences/nope"), ("POST", "/-/reload")]
READS = ["/api/v1/status", "/api/v1/rules", "/api/v1/alerts", "/api/v1/silences",
         "/api/v1/notifications", "/api/v1/actions/runs", "/api/v1/deploys",
         "/api/v2/status", "/api/v2/alerts", "/api/v2/silences", "/api/v2/alerts/groups"]
OPEN = ["/healthz", "/metrics", "/", "/status"]


@pytest.fixture(scope="module")
def wd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WatchdogProcess]:
    tmp = tmp_path_factory.mktemp("http")
    w = WatchdogProcess(tmp, {"WATCHDOG_API_READ_TOKEN": READ_TOKEN})
    (w.rules / "rules.yml").write_text(RULES)
    w.start()
    try:
        w.wait_up()
        yield w
    finally:
        w.stop()


def assert_clean_error(r: Response, *statuses: int) -> None:
    """A 4xx with a JSON body whose `error` is one line."""
    assert 400 <= r.status < 500, r
    if statuses:
        assert r.status in statuses, r
    doc = r.json()
    # ours: {"status": "error", "errorType", "error"}; Alertmanager's API v2: a JSON string
    message = doc if isinstance(doc, str) else doc["error"]
    assert isinstance(doc, str) or doc["status"] == "error", r
    assert isinstance(message, str) and message, r
    assert "\n" not in message and "Traceback" not in message, r


def post(wd: WatchdogProcess, path: str, body: bytes | str, method: str = "POST",
         content_type: str = "application/json") -> Response:
    raw = body.encode() if isinstance(body, str) else body
    return wd.request(method, path, raw, {"Content-Type": content_type}, token=TOKEN)


def deep(n: int) -> str:
    return "[" * n + "]" * n


HOSTILE_BODIES = {
    "50k deep": deep(50_000),
    "50k deep object": '{"a":' * 50_000 + "1" + "}" * 50_000,
    "5000 digits": '{"window": ' + "9" * 5000 + ', "endsAt": ' + "9" * 5000 + "}",
    "5000-digit float": '{"endsAt": 1.' + "9" * 5000 + "}",
    "NaN": '{"endsAt": NaN, "window": NaN}',
    "Infinity": '{"endsAt": Infinity}',
    "1e400": '{"endsAt": 1e400}',
    "lone surrogate": '{"service": "\\ud800", "version": "1", "createdBy": "\\udfff", '
                      '"matchers": [{"name": "a", "value": "\\ud800"}], '
                      '"endsAt": "2100-01-01T00:00:00Z"}',
    "not UTF-8": b'{"service": "\xff\xfe"}',
    "not JSON": "{nope",
    "empty": "",
    "array": "[1, 2]",
    "number": "1",
    "string": '"x"',
    "null": "null",
}


@pytest.mark.parametrize("body", sorted(HOSTILE_BODIES))
@pytest.mark.parametrize(("method", "path"), BODY_WRITES)
def test_hostile_bodies_get_a_4xx(wd: WatchdogProcess, method: str, path: str, body: str
                                  ) -> None:
    r = post(wd, path, HOSTILE_BODIES[body], method)
    if r.status < 400:
        # an empty body means "no options" for a manual run; nothing else may pass
        assert (body, path) in {("empty", "/api/v1/actions/noop/run"),
                                ("null", "/api/v1/actions/noop/run")}, r
        return
    assert_clean_error(r)


@pytest.mark.parametrize("charset", ["klingon", "utf-16", "latin-1", "utf-32-be", "x" * 300])
@pytest.mark.parametrize(("method", "path"), BODY_WRITES)
def test_unknown_or_other_charsets_get_415(wd: WatchdogProcess, method: str, path: str,
                                           charset: str) -> None:
    r = post(wd, path, "{}", method, f"application/json; charset={charset}")
    assert_clean_error(r, 415)


def test_oversized_body_gets_413(wd: WatchdogProcess) -> None:
    body = '{"comment": "' + "x" * (MAX_BODY_BYTES + 10) + '"}'
    for method, path in BODY_WRITES:
        assert_clean_error(post(wd, path, body, method), 413)


def silence(ends: Any, starts: Any = None) -> str:
    doc: dict[str, Any] = {"matchers": [{"name": "alertname", "value": "Down"}],
                           "createdBy": "t", "comment": "c"}
    if starts is not None:
        doc["startsAt"] = starts
    return json.dumps(doc)[:-1] + f', "endsAt": {ends}}}'


@pytest.mark.parametrize("ends", [
    '"NaN"', '"nan"', '"Infinity"', '"-Infinity"', '"inf"', "1e20", "-1e20", '"1e20"',
    "1e308", '"9999-12-31T23:59:59-01:00"', '"0001-01-01T00:00:00+01:00"', '"99999-01-01"',
    "true", "[]", "{}", '"' + "9" * 400 + '"', "9" * 30,
])
def test_silence_times_are_bounded_and_the_listing_survives(wd: WatchdogProcess, ends: str
                                                            ) -> None:
    for path in ("/api/v1/silences", "/api/v2/silences"):
        r = post(wd, path, silence(ends))
        assert_clean_error(r, 400)
        r = post(wd, path, silence('"2100-01-01T00:00:00Z"', starts=ends))
        assert_clean_error(r, 400)
    assert wd.get_json("/api/v1/silences")["status"] == "success"
    assert isinstance(wd.get_json("/api/v2/silences"), list)


def test_a_far_but_valid_silence_is_kept_and_listed(wd: WatchdogProcess) -> None:
    r = post(wd, "/api/v1/silences", silence('"9999-12-31T23:59:59Z"'))
    assert r.status == 200, r
    listed = wd.get_json("/api/v1/silences")["data"]
    assert any(s["endsAt"].startswith("9999-12-31T23:59:59") for s in listed)


@pytest.mark.parametrize("window", [
    '"' + "9" * 400 + 's"', '"293y"', '"99999999999y"', "1e20", '"NaN"', '"-5m"', '"0"', "0",
    "true", "null", "[]", '"5"', '"\\u0663m"',
])
def test_deploy_windows_are_bounded(wd: WatchdogProcess, window: str) -> None:
    r = post(wd, "/api/v1/deploys", f'{{"service": "s", "version": "1", "window": {window}}}')
    if window == "null":  # no window given: the default 30m
        assert r.status == 201, r
    else:
        assert_clean_error(r, 400)
    assert wd.get_json("/api/v1/deploys")["status"] == "success"


@pytest.mark.parametrize("token", [b"\xff\xfe", b"caf\xc3", b"\x80" + TOKEN.encode(),
                                   TOKEN.encode() + b"\xe9", b"\x00", b"a" * 10_000])
def test_a_bearer_token_of_any_bytes_is_refused_not_a_500(wd: WatchdogProcess, token: bytes
                                                          ) -> None:
    responses = [wd.request(method, path, b"{}", {"Content-Type": "application/json"},
                            token=token) for method, path in WRITES]
    responses += [wd.request("GET", path, token=token) for path in READS]
    for r in responses:
        if b"\x00" in token or len(token) > 8000:
            # not HTTP at all (a NUL, a header line past 8 KB): aiohttp's parser answers before
            # any handler, in plain text, and the log gets one warning line, no traceback
            assert r.status == 400 and (b"Invalid header value" in r.body
                                        or b"Got more than" in r.body), r
        else:
            assert_clean_error(r, 401, 403)


def test_read_token_guards_the_api_but_not_the_probes(wd: WatchdogProcess) -> None:
    for path in READS:
        r = wd.request("GET", path)
        assert_clean_error(r, 401)
        assert r.headers.get("WWW-Authenticate", "").startswith("Bearer")
        assert_clean_error(wd.request("GET", path, token="wrong-token"), 403)
        assert wd.request("GET", path, token=READ_TOKEN).status == 200, path
        assert wd.request("GET", path, token=TOKEN).status == 200, path
    for path in OPEN:
        assert wd.request("GET", path).status == 200, path
    assert wd.request("GET", "/readyz").status in (200, 503)  # not ready: no Prometheus
    # the read token never writes
    assert_clean_error(wd.request("POST", "/-/reload", token=READ_TOKEN), 403)
    assert_clean_error(wd.request("POST", "/api/v1/silences", silence('"2100-01-01"').encode(),
                                  token=READ_TOKEN), 403)


def test_query_parameters_of_any_size(wd: WatchdogProcess) -> None:
    for path in ("/api/v1/notifications?limit=" + "9" * 5000,
                 "/api/v1/actions/runs?limit=" + "9" * 5000, "/api/v1/deploys?limit=NaN",
                 "/api/v1/rules?exclude_alerts=maybe", "/api/v1/notifications?status=%ff",
                 "/api/v1/actions/runs/" + "%ff" * 100):
        r = wd.request("GET", path, token=READ_TOKEN)
        assert r.status < 500, (path, r)
        if r.status >= 400:
            assert_clean_error(r)


# ---- the reader itself ---------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "message"), [
    (deep(50_000).encode(), "nested more than"),
    (b'{"a": "[[[[\\"[[["}' + b"", ""),
    (b"9" * 5000, "number too long"),
    (b"NaN", "NaN is not JSON"),
    (b"-Infinity", "-Infinity is not JSON"),
    (b"1e400", "number out of range"),
    (b'"\\ud800"', "lone surrogate"),
    (b"\xff", "not UTF-8"),
])
def test_parse_json_bounds(raw: bytes, message: str) -> None:
    if not message:
        assert parse_json(raw) == {"a": '[[[["[[['}
        return
    with pytest.raises(BadInput, match=message):
        parse_json(raw)


def test_escaped_quotes_do_not_hide_depth() -> None:
    # a string ending in an escaped backslash, then real brackets: they count
    with pytest.raises(BadInput, match="nested"):
        parse_json(b'["\\\\", ' + deep(40).encode() + b"]")
    assert parse_json(b'["\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["]') == [
        '"' + "[" * 42]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", 1e300, float("nan")])
def test_settings_durations_are_bounded(value: object) -> None:
    with pytest.raises(ValidationError, match="out of range"):
        Settings(evaluation_interval=value)


@pytest.mark.parametrize("value", ["nan", "inf", "1e400", "1e20", "99999-01-01"])
def test_cli_times_are_bounded(value: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a time"):
        cli_time(value)


# ---- fuzz: generated bodies at every write endpoint ----------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
              st.sampled_from(["NaN", "Infinity", "1e20", "9" * 400, "2100-01-01T00:00:00Z",
                               "30m", "293y", "\ud800", "alertname", "Down", "noop"])),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(
            ["matchers", "name", "value", "isRegex", "isEqual", "startsAt", "endsAt",
             "createdBy", "comment", "service", "version", "labels", "window", "force",
             "dry_run", "silenceID", "x"]), children, max_size=6)),
    max_leaves=20)


def encode(value: Any) -> bytes:
    # allow_nan: NaN and Infinity as Python writes them, which JSON forbids
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


@settings(max_examples=150, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(endpoint=st.sampled_from(WRITES), body=st.one_of(
    json_values.map(encode), st.binary(max_size=200),
    st.builds(lambda n, c: (c[0] * n + c[1] * n).encode(), st.integers(1, 100_000),
              st.sampled_from(["[]", "{}"])).filter(lambda b: len(b) <= MAX_BODY_BYTES)))
def test_fuzz_no_5xx(wd: WatchdogProcess, endpoint: tuple[str, str], body: bytes) -> None:
    method, path = endpoint
    r = wd.request(method, path, body, {"Content-Type": "application/json"}, token=TOKEN)
    assert r.status < 500, (method, path, body[:200], r)
    if r.status >= 400:
        assert_clean_error(r)


def test_after_the_fuzz_everything_still_reads(wd: WatchdogProcess) -> None:
    for path in READS:
        doc = wd.get_json(path)
        assert path.startswith("/api/v2/") or doc["status"] == "success", path
    wd.alive()
    assert "HTTP handler failed" not in wd.log() and "Traceback" not in wd.log()
