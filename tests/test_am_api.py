"""Alertmanager's API v2 on the watchdog (`watchdog.am_api`), tested with the real clients and
the real server: Debian's `amtool` 0.25 runs against a running daemon (alert query, silence
add/query/update/expire, config routes), the requests Grafana's Alertmanager data source sends
are replayed, and every answer is compared with what a real Alertmanager 0.25 (Debian's
prometheus-alertmanager), holding the same alerts, answers to the same request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from conftest import require_binary
from fakes_chat import FakeChat, free_port
from hypothesis import example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from test_daemon_support import TOKEN, settings, write

from watchdog import am_api
from watchdog.daemon import Daemon
from watchdog.testing import FakeSource, sample

# Two rules, two routes (an alert goes to every route that matches), an inhibit rule: a critical
# CheckoutErrors mutes the warning CheckoutSlow of the same service.
RULES = """
groups:
  - name: shop
    rules:
      - alert: CheckoutErrors
        expr: errors
        labels: {severity: critical}
        annotations: {summary: "errors at {{ $value }}"}
      - alert: CheckoutSlow
        expr: slow
        labels: {severity: warning}
receivers:
  - name: chat
    slack: {webhook_url: "CHAT/slack/T0/B0/x"}
  - name: pager
    slack: {webhook_url: "CHAT/slack/T0/B0/y"}
routes:
  - {receivers: [chat], group_by: [alertname]}
  - {match: {severity: critical}, receivers: [pager], group_wait: 10s}
inhibit_rules:
  - {source_match: {severity: critical}, target_match: {severity: warning}, equal: [service]}
"""

# The same routing, written for Alertmanager by hand (not generated: it checks our generator).
AM_CONFIG = """
route:
  receiver: unrouted
  routes:
    - {receiver: chat, group_by: [alertname], continue: true}
    - {receiver: pager, matchers: ['severity="critical"'], group_wait: 10s, continue: true}
receivers: [{name: unrouted}, {name: chat}, {name: pager}]
inhibit_rules:
  - {source_matchers: ['severity="critical"'], target_matchers: ['severity="warning"'],
     equal: [service]}
"""

SAMPLES = {
    "errors": [sample(0.3, service="checkout", env="prod"), sample(0.2, service="cart")],
    "slow": [sample(2.0, service="checkout", env="prod"),
             sample(3.0, service="search", env='we"ird\\env\n2')],
}


def expected_alerts() -> list[dict[str, str]]:
    """The label sets the rules above produce from SAMPLES."""
    out = []
    for expr, name, severity in (("errors", "CheckoutErrors", "critical"),
                                 ("slow", "CheckoutSlow", "warning")):
        for s in SAMPLES[expr]:
            out.append({**s.labels, "alertname": name, "severity": severity})
    return out


@dataclass
class Running:
    url: str
    daemon: Daemon
    http_config: Path  # amtool's --http.config.file with the API token


@pytest.fixture
async def watchdog(tmp_path: Path, chat: FakeChat) -> AsyncIterator[Running]:
    s = settings(tmp_path, external_url="http://wd.example/")
    write(s.rules_dir / "shop.yml", RULES.replace("CHAT", chat.url))
    src = FakeSource(dict(SAMPLES))
    # The real clock: amtool stamps silences with it.
    async with Daemon(s, clock=time.time, source=src, schedule=False) as d:
        await d.evaluate_all()
        assert d.http_url is not None
        cfg = tmp_path / "amtool-http.yml"
        cfg.write_text(f"authorization: {{credentials: {TOKEN}}}\n")
        yield Running(d.http_url, d, cfg)


@pytest.fixture(scope="module")
def amtool_binary() -> str:
    return require_binary("amtool")


@contextlib.contextmanager
def running_alertmanager(directory: Path) -> Iterator[str]:
    """A real Alertmanager with AM_CONFIG, holding the alerts of `expected_alerts()`."""
    binary = require_binary("prometheus-alertmanager")
    port = free_port()
    cfg = directory / "alertmanager.yml"
    cfg.write_text(AM_CONFIG)
    proc = subprocess.Popen(
        [binary, f"--config.file={cfg}", f"--storage.path={directory / 'am-data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
         "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("alertmanager did not start: " + (
                        proc.stderr.read().decode() if proc.stderr else "")) from None
                time.sleep(0.05)
        # endsAt an hour away: without one they would resolve after 5 minutes
        ends = iso(time.time() + 3600)
        body = json.dumps([{"labels": ls, "generatorURL": "http://prometheus/graph",
                            "endsAt": ends} for ls in expected_alerts()]).encode()
        req = urllib.request.Request(f"{url}/api/v2/alerts", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    with running_alertmanager(tmp_path) as url:
        yield url


@pytest.fixture(scope="module")
def shared_alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Alertmanager for the read-only fuzz test (a fixture per example would be slow)."""
    with running_alertmanager(tmp_path_factory.mktemp("am")) as url:
        yield url


async def amtool(binary: str, url: str, *args: str, config: Path | None = None
                 ) -> tuple[int, str, str]:
    cmd = [binary, f"--alertmanager.url={url}", "--no-version-check"]
    if config is not None:
        cmd.append(f"--http.config.file={config}")
    proc = await asyncio.create_subprocess_exec(
        *cmd, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def get(url: str, **params: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url, params=params) as r:
        text = await r.text()
        return r.status, (json.loads(text) if text else None)


def ordered(sets: Iterable[Mapping[str, str]]) -> list[dict[str, str]]:
    return sorted((dict(ls) for ls in sets), key=lambda ls: sorted(ls.items()))


def labelsets(alerts: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    return ordered(a["labels"] for a in alerts)


# ---- amtool against a running daemon -------------------------------------------------------------


async def test_amtool_alert_query(watchdog: Running, amtool_binary: str) -> None:
    rc, out, err = await amtool(amtool_binary, watchdog.url, "alert", "query", "-o", "json")
    assert rc == 0, err
    alerts = json.loads(out)
    # amtool's default query is active alerts only: the inhibited CheckoutSlow is not shown.
    assert labelsets(alerts) == ordered(ls for ls in expected_alerts()
                                        if ls["alertname"] != "CheckoutSlow"
                                        or ls["service"] != "checkout")
    rc, out, err = await amtool(amtool_binary, watchdog.url, "alert", "query", "-i",
                                "-o", "json")
    assert rc == 0, err
    [inhibited] = json.loads(out)
    assert inhibited["labels"]["service"] == "checkout"
    assert inhibited["status"]["state"] == "suppressed"
    assert len(inhibited["status"]["inhibitedBy"]) == 1

    rc, out, err = await amtool(amtool_binary, watchdog.url, "alert", "query", "CheckoutErrors",
                                'service=~"check.*"')
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["Alertname", "Starts", "At", "Summary", "State"]
    assert len(lines) == 2 and "CheckoutErrors" in lines[1] and "errors at 0.3" in lines[1]
    assert lines[1].split()[-1] == "active"


async def test_amtool_silence_add_query_update_expire(watchdog: Running,
                                                      amtool_binary: str) -> None:
    url, cfg = watchdog.url, watchdog.http_config
    add = ("silence", "add", "alertname=CheckoutErrors", "service=cart", "-a", "alice",
           "-c", "cart deploy", "-d", "2h")
    rc, _out, err = await amtool(amtool_binary, url, *add)
    assert rc != 0 and "401" in err  # writes need the API token
    rc, out, err = await amtool(amtool_binary, url, *add, config=cfg)
    assert rc == 0, err
    sid = out.strip()
    assert len(sid) == 36

    # The watchdog's own silence: the same store as /api/v1/silences, and it mutes the
    # notifications of the alert it matches.
    status, body = await get(f"{url}/api/v1/silences")
    assert status == 200
    assert [(s["id"], s["createdBy"], s["comment"]) for s in body["data"]] == [
        (sid, "alice", "cart deploy")]
    [notify] = [h for h in watchdog.daemon.handlers if hasattr(h, "pipeline")]
    muted = notify.pipeline.suppressed(time.time())  # type: ignore[attr-defined]
    [cart] = [a for a in watchdog.daemon.alerts() if a.labels.get("service") == "cart"]
    assert muted == {cart.fingerprint: f"silenced by {sid}",
                     next(a.fingerprint for a in watchdog.daemon.alerts()
                          if a.rule == "CheckoutSlow" and a.labels["service"] == "checkout"):
                     "inhibited"}

    rc, out, err = await amtool(amtool_binary, url, "alert", "query", "-s", "-o", "json")
    assert rc == 0, err
    [silenced] = json.loads(out)
    assert silenced["labels"]["service"] == "cart"
    assert silenced["status"] == {"state": "suppressed", "silencedBy": [sid], "inhibitedBy": []}
    rc, out, err = await amtool(amtool_binary, url, "alert", "query", "service=cart")
    assert rc == 0 and "CheckoutErrors" not in out  # active only, by default

    rc, out, err = await amtool(amtool_binary, url, "silence", "query")
    assert rc == 0, err
    head, row = out.strip().splitlines()
    assert head.split() == ["ID", "Matchers", "Ends", "At", "Created", "By", "Comment"]
    assert row.split()[:3] == [sid, 'alertname="CheckoutErrors"', 'service="cart"']
    assert row.split()[-3:] == ["alice", "cart", "deploy"]
    for query, found in ((("service=cart",), [sid]), (("CheckoutErrors",), [sid]),
                         (("service=~cart",), []), (("service=other",), [])):
        rc, out, err = await amtool(amtool_binary, url, "silence", "query", "-q", *query)
        assert rc == 0, err
        assert out.split() == found, query

    # update = a new silence replacing the old one (which expires), as Alertmanager does
    # (-o json: amtool 0.25's `update -q` prints a Go pointer instead of the id)
    rc, out, err = await amtool(amtool_binary, url, "silence", "update", sid, "-c", "longer",
                                "-d", "3h", "-o", "json", config=cfg)
    assert rc == 0, err
    new = json.loads(out)[0]["id"]
    assert new != sid and len(new) == 36
    rc, out, err = await amtool(amtool_binary, url, "silence", "query", "-o", "json")
    [current] = json.loads(out)
    assert current["id"] == new and current["comment"] == "longer"
    assert current["createdBy"] == "alice"
    assert current["matchers"] == [
        {"name": "alertname", "value": "CheckoutErrors", "isRegex": False, "isEqual": True},
        {"name": "service", "value": "cart", "isRegex": False, "isEqual": True}]

    rc, _out, err = await amtool(amtool_binary, url, "silence", "expire", new)
    assert rc != 0 and "401" in err
    rc, out, err = await amtool(amtool_binary, url, "silence", "expire", new, config=cfg)
    assert rc == 0, err
    rc, out, err = await amtool(amtool_binary, url, "silence", "query", "-q")
    assert (rc, out) == (0, "")
    rc, out, err = await amtool(amtool_binary, url, "silence", "query", "--expired", "-q")
    assert rc == 0 and sorted(out.split()) == sorted([sid, new])
    rc, out, err = await amtool(amtool_binary, url, "alert", "query", "service=cart", "-o",
                                "json")
    assert [a["status"]["state"] for a in json.loads(out)] == ["active"]

    rc, out, err = await amtool(amtool_binary, url, "silence", "expire",
                                "00000000-0000-4000-8000-000000000000", config=cfg)
    assert rc != 0 and "not found" in err


async def test_amtool_regex_and_negative_silences(watchdog: Running,
                                                  amtool_binary: str) -> None:
    url, cfg = watchdog.url, watchdog.http_config
    rc, out, err = await amtool(amtool_binary, url, "silence", "add", "-c", "x",
                                'service=~"check.*|sea.+"', "severity!=critical", config=cfg)
    assert rc == 0, err
    sid = out.strip()
    rc, out, err = await amtool(amtool_binary, url, "alert", "query", "-s", "-i", "-o", "json")
    assert labelsets(json.loads(out)) == ordered(
        ls for ls in expected_alerts() if ls["alertname"] == "CheckoutSlow")
    # -s alone: silenced, but neither active nor inhibited (the checkout one is inhibited too)
    rc, out, err = await amtool(amtool_binary, url, "alert", "query", "-s", "-o", "json")
    assert [a["labels"]["service"] for a in json.loads(out)] == ["search"]
    # Alertmanager's silence filter: matchers equal to one of the silence's own
    rc, out, err = await amtool(amtool_binary, url, "silence", "query", "-q",
                                'service=~"check.*|sea.+"')
    assert out.split() == [sid]
    rc, out, err = await amtool(amtool_binary, url, "silence", "add", "-c", "x",
                                'service=~".*"', config=cfg)
    assert rc != 0 and "match every alert" in err


async def test_amtool_reads_the_routing_as_alertmanager_config(
        watchdog: Running, amtool_binary: str, tmp_path: Path) -> None:
    url = watchdog.url
    rc, out, err = await amtool(amtool_binary, url, "config", "routes", "show")
    assert rc == 0, err
    assert out.split("\n")[:5] == [
        "Routing tree:", ".", "└── default-route  receiver: unrouted",
        "    ├── default-route  continue: true  receiver: chat",
        '    └── {severity="critical"}  continue: true  receiver: pager']
    rc, out, err = await amtool(amtool_binary, url, "config", "routes", "test",
                                "severity=critical", "service=x")
    assert (rc, out.strip()) == (0, "chat,pager")
    # config.original is a configuration Alertmanager itself accepts
    status, body = await get(f"{url}/api/v2/status")
    assert status == 200
    path = tmp_path / "generated.yml"
    path.write_text(body["config"]["original"])
    rc, out, err = await amtool(amtool_binary, url, "check-config", str(path))
    assert rc == 0, out + err
    assert " - 1 inhibit rules" in out and " - 3 receivers" in out


# ---- the same requests to a real Alertmanager holding the same alerts ----------------------------


def sync_get(url: str, params: Iterable[tuple[str, str]] = ()) -> tuple[int, Any]:
    query = urllib.parse.urlencode(list(params))
    try:
        with urllib.request.urlopen(f"{url}?{query}", timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


MATCHER_NAMES = st.sampled_from(["service", "env", "alertname", "nope", "a:b", " service ",
                                 "1x", "", "service\t"])
MATCHER_OPS = st.sampled_from(["=", "!=", "=~", "!~", "==", "~", "=!", " = "])
MATCHER_VALUES = st.text(alphabet='cekrwi."\\|()*+?n \t\v\xa0', max_size=10)


@hsettings(max_examples=150, deadline=None)
@example(['env="we\\"ird\\\\env\\n2"'])  # quotes, backslash and newline escapes
@example(["env=we\\\"ird\\\\env\\n2"])  # the same without the quotes
@example(['env=~".*\\n.*"', "env!~\"\""])
@example(['service=~"a)|(c.*"', "service=\\"])
@given(st.lists(st.builds(lambda n, o, v: n + o + v, MATCHER_NAMES, MATCHER_OPS,
                          MATCHER_VALUES), max_size=2))
def test_filters_parse_and_match_like_alertmanager(shared_alertmanager: str,
                                                   filters: list[str]) -> None:
    """Alertmanager's matcher grammar, quoting, escapes, regex anchoring and empty-value rules,
    with Alertmanager's own error messages; the oracle is the real Alertmanager."""
    status, body = sync_get(f"{shared_alertmanager}/api/v2/alerts",
                            [("filter", f) for f in filters])
    try:
        ms = am_api.parse_filters(filters)
    except am_api.MatcherError as e:
        assert (status, body) == (400, str(e))
        return
    assert status == 200, body
    assert labelsets(body) == ordered(
        ls for ls in expected_alerts() if all(m.filters(ls) for m in ms))


async def post(url: str, body: Any, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=headers) as r:
        text = await r.text()
        return r.status, (json.loads(text) if text else None)


async def delete(url: str, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.delete(url, headers=headers) as r:
        text = await r.text()
        return r.status, (json.loads(text) if text else None)


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


def shape(x: Any, key: str = "") -> Any:
    """The JSON structure without the data: keys and types, label sets as one type."""
    if key in ("labels", "annotations"):
        return "labelset"
    if isinstance(x, dict):
        return {k: shape(v, k) for k, v in x.items()}
    if isinstance(x, list):  # the distinct shapes of the elements
        return sorted({json.dumps(shape(e), sort_keys=True) for e in x})
    return type(x).__name__


async def test_answers_as_a_real_alertmanager_does(watchdog: Running, alertmanager: str) -> None:
    """Same alerts, same routing, same silences: the same answers to the same requests (the
    data: which alerts, their states, receivers, silences, groups; and the JSON shapes)."""
    ours, theirs = f"{watchdog.url}/api/v2", f"{alertmanager}/api/v2"
    now = time.time()
    silences = [
        {"comment": "s1", "matchers": [{"name": "service", "value": "search", "isRegex": False,
                                        "isEqual": True}]},
        {"comment": "s2", "matchers": [{"name": "env", "value": "pro.*", "isRegex": True,
                                        "isEqual": True},
                                       {"name": "severity", "value": "warning",
                                        "isRegex": False, "isEqual": False}]},
        {"comment": "pending", "startsAt": iso(now + 3600),
         "matchers": [{"name": "service", "value": "cart", "isRegex": False}]},
        {"comment": "expired", "matchers": [{"name": "service", "value": "cart",
                                             "isRegex": False}]},
    ]
    for i, sil in enumerate(silences):  # distinct ends: Alertmanager's order breaks no ties
        body = {"startsAt": iso(now), "endsAt": iso(now + 3600 * (i + 2)), "createdBy": "t",
                **sil}
        ids = []
        for base in (ours, theirs):
            status, answer = await post(f"{base}/silences", body)
            assert status == 200, answer
            ids.append(answer["silenceID"])
        if sil["comment"] == "expired":
            for base, sid in zip((ours, theirs), ids, strict=True):
                status, answer = await delete(f"{base}/silence/{sid}")
                assert status == 200, answer

    def comments(listing: list[dict[str, Any]]) -> dict[str, str]:
        return {s["id"]: s["comment"] for s in listing}

    names = {base: comments((await get(f"{base}/silences"))[1]) for base in (ours, theirs)}
    # updatedAt: when the silence was written (created), not when it starts
    for base in (ours, theirs):
        [pending] = [x for x in (await get(f"{base}/silences"))[1] if x["comment"] == "pending"]
        assert pending["updatedAt"] < iso(now + 60) < pending["startsAt"]

    def view(base: str, alerts: list[dict[str, Any]]) -> list[Any]:
        return sorted((sorted(a["labels"].items()), a["status"]["state"],
                       sorted(names[base][x] for x in a["status"]["silencedBy"]),
                       len(a["status"]["inhibitedBy"]), sorted(r["name"] for r in a["receivers"]))
                      for a in alerts)

    cases: list[dict[str, Any]] = [
        {}, {"active": "false"}, {"inhibited": "false"}, {"silenced": "false"},
        {"silenced": "false", "inhibited": "false"}, {"active": "false", "inhibited": "false"},
        {"receiver": "pager"}, {"receiver": "ch.*"}, {"receiver": "nobody"}, {"receiver": "("},
        {"active": "yes"}, {"active": "garbage", "unprocessed": "false"},
        {"filter": ['service=~"c.*"', 'env!=""']}, {"filter": "bad"},
    ]
    for case in cases:
        (s1, ours_alerts), (s2, their_alerts) = [await get(f"{b}/alerts", **case)
                                                 for b in (ours, theirs)]
        assert s1 == s2, case
        if s1 != 200:
            assert ours_alerts == their_alerts, case  # the same error message
            continue
        assert view(ours, ours_alerts) == view(theirs, their_alerts), case
        # the inhibiting alert, by its labels (fingerprints are computed differently)
        for base, alerts in ((ours, ours_alerts), (theirs, their_alerts)):
            by_fp = {a["fingerprint"]: a["labels"] for a in (await get(f"{base}/alerts"))[1]}
            for a in alerts:
                for fp in a["status"]["inhibitedBy"]:
                    assert by_fp[fp]["alertname"] == "CheckoutErrors"
                    assert by_fp[fp]["service"] == a["labels"]["service"]

        (s1, ours_groups), (s2, their_groups) = [await get(f"{b}/alerts/groups", **case)
                                                 for b in (ours, theirs)]
        assert s1 == s2, case
        if s1 == 200:
            def groups(gs: list[dict[str, Any]]) -> list[Any]:
                return sorted((g["receiver"]["name"], sorted(g["labels"].items()),
                               labelsets(g["alerts"])) for g in gs)
            assert groups(ours_groups) == groups(their_groups), case

    for filters in ([], ['service="search"'], ['env=~"pro.*"'], ['env=~"pro"'],
                    ['service="cart"'], ['severity!="warning"', 'env=~"pro.*"'], ["bad"]):
        (s1, ours_sil), (s2, their_sil) = [await get(f"{b}/silences", filter=filters)
                                           for b in (ours, theirs)]
        assert s1 == s2, filters
        if s1 == 200:  # in Alertmanager's order: active, pending, expired
            assert [s["comment"] for s in ours_sil] == [s["comment"] for s in their_sil]
        else:
            assert ours_sil == their_sil

    # The JSON shapes, endpoint by endpoint.
    for path in ("/status", "/receivers", "/alerts", "/alerts/groups", "/silences"):
        (s1, mine), (s2, real) = [await get(f"{b}{path}") for b in (ours, theirs)]
        assert (s1, s2) == (200, 200)
        assert shape(mine) == shape(real), path
    sid = next(k for k, v in names[ours].items() if v == "s1")
    real_sid = next(k for k, v in names[theirs].items() if v == "s1")
    (s1, mine), (s2, real) = [await get(f"{b}/silence/{i}")
                              for b, i in ((ours, sid), (theirs, real_sid))]
    assert (s1, s2) == (200, 200) and shape(mine) == shape(real)
    assert {k: mine[k] for k in ("comment", "createdBy", "matchers", "status")} == {
        k: real[k] for k in ("comment", "createdBy", "matchers", "status")}


# ---- Grafana's Alertmanager data source ----------------------------------------------------------


async def test_grafana_alertmanager_data_source_requests(watchdog: Running) -> None:
    """The requests Grafana (11/12) sends to an Alertmanager data source of implementation
    "prometheus", in order, as its proxy forwards them (query string included), and what
    Grafana reads from each answer (public/app/plugins/datasource/alertmanager/DataSource.ts,
    features/alerting/unified/api/*, pkg/services/ngalert/api/lotex_am.go)."""
    url = watchdog.url
    # "Save & test": feature discovery asks buildinfo (a Mimir says so in `application`), then
    # makes sure the URL is not a Mimir/Cortex one, then asks the status.
    status, info = await get(f"{url}/api/v1/status/buildinfo")
    assert status == 200 and info["status"] == "success"
    assert info["data"].get("application") != "Grafana Mimir"
    status, _ = await get(f"{url}/alertmanager/api/v2/status")
    assert status == 404  # a 200 here makes Grafana answer "detected a Mimir or Cortex endpoint"
    status, st = await get(f"{url}/api/v2/status")
    assert status == 200
    # Grafana's backend decodes the status and parses config.original as Alertmanager YAML to
    # show the routing tree and the contact points.
    config = yaml.safe_load(st["config"]["original"])
    receivers = {r["name"] for r in config["receivers"]}
    assert config["route"]["receiver"] in receivers
    assert [(r["receiver"], r.get("group_by"), r.get("matchers"), r["group_wait"])
            for r in config["route"]["routes"]] == [
        ("chat", ["alertname"], None, "30s"), ("pager", None, ['severity="critical"'], "10s")]
    assert st["cluster"]["status"] in ("ready", "settling", "disabled")

    # The alert list and the groups page.
    status, groups = await get(f"{url}/api/v2/alerts/groups")
    assert status == 200
    assert {(g["receiver"]["name"], json.dumps(g["labels"], sort_keys=True)) for g in groups} == {
        ("chat", '{"alertname": "CheckoutErrors"}'), ("chat", '{"alertname": "CheckoutSlow"}'),
        ("pager", "{}")}
    status, alerts = await get(f"{url}/api/v2/alerts", filter='alertname="CheckoutErrors"',
                               silenced="true", active="true", inhibited="true")
    assert status == 200 and {a["labels"]["service"] for a in alerts} == {"checkout", "cart"}
    status, silences = await get(f"{url}/api/v2/silences", ruleMetadata="true",
                                 accesscontrol="true")
    assert (status, silences) == (200, [])

    # The silence editor: a preview of the alerts it will match, then the silence.
    status, preview = await get(f"{url}/api/v2/alerts", filter=['service=~"car.*"'])
    assert status == 200 and [a["labels"]["service"] for a in preview] == ["cart"]
    now = time.time()
    payload = {"startsAt": iso(now), "endsAt": iso(now + 7200), "comment": "from Grafana",
               "createdBy": "grafana-admin",
               "matchers": [{"name": "service", "value": "car.*", "isEqual": True,
                             "isRegex": True}]}
    status, body = await post(f"{url}/api/v2/silences", payload, token=None)
    assert status == 401  # without the data source's Authorization header
    status, body = await post(f"{url}/api/v2/silences", payload)
    assert status == 200
    sid = body["silenceID"]
    status, sil = await get(f"{url}/api/v2/silence/{sid}", ruleMetadata="true",
                            accesscontrol="true")
    assert status == 200
    assert (sil["id"], sil["status"]["state"], sil["createdBy"]) == (sid, "active",
                                                                      "grafana-admin")
    status, alerts = await get(f"{url}/api/v2/alerts", filter='service="cart"')
    assert [a["status"]["silencedBy"] for a in alerts] == [[sid]]

    # Editing a silence posts it again with its id: the old one expires, a new one replaces it.
    status, body = await post(f"{url}/api/v2/silences",
                              {**payload, "id": sid, "comment": "edited"})
    assert status == 200 and body["silenceID"] != sid
    new = body["silenceID"]
    status, listing = await get(f"{url}/api/v2/silences")
    assert [(s["id"], s["status"]["state"], s["comment"]) for s in listing] == [
        (new, "active", "edited"), (sid, "expired", "from Grafana")]
    status, body = await post(f"{url}/api/v2/silences",
                              {**payload, "id": "00000000-0000-4000-8000-000000000000"})
    assert status == 404

    status, body = await delete(f"{url}/api/v2/silence/{new}", token=None)
    assert status == 401
    status, body = await delete(f"{url}/api/v2/silence/{new}")
    assert (status, body) == (200, None)
    status, sil = await get(f"{url}/api/v2/silence/{new}")
    assert sil["status"]["state"] == "expired"
    status, _ = await get(f"{url}/api/v2/silence/00000000-0000-4000-8000-000000000000")
    assert status == 404

    # Refused silences come back as Alertmanager's: a JSON string Grafana shows as it is.
    for matchers, message in (
            ([{"name": "service", "value": "(", "isRegex": True}], "error parsing regexp"),
            ([{"name": "service", "value": ".*", "isRegex": True}], "match every alert"),
            ([{"name": "bad-name", "value": "x", "isRegex": False}], "label name"),
            ([], "non-empty")):
        status, body = await post(f"{url}/api/v2/silences", {**payload, "matchers": matchers})
        assert status == 400 and isinstance(body, str) and message in body, body
    status, body = await post(f"{url}/api/v2/silences", {**payload, "endsAt": iso(now - 60)})
    assert status == 400 and isinstance(body, str) and "endsAt" in body
    status, body = await get(f"{url}/api/v2/alerts", filter='service=~"("')
    assert (status, body) == (400, "error parsing regexp: missing closing ): `^(?:()$`")


# ---- Prometheus's probes and buildinfo -----------------------------------------------------------


async def test_probes_and_buildinfo_answer_as_prometheus_does(
        watchdog: Running, prometheus_binary: str, tmp_path: Path) -> None:
    from watchdog import __version__
    from watchdog.promserver import PrometheusServer

    with PrometheusServer(tmp_path / "tsdb", binary=prometheus_binary) as prom:
        async with aiohttp.ClientSession() as s:
            for method in ("GET", "HEAD"):
                for path in ("/-/healthy", "/-/ready"):
                    answers = []
                    for base in (watchdog.url, prom.url):
                        async with s.request(method, f"{base}{path}") as r:
                            # (Prometheus sends no Content-Type with a HEAD answer)
                            answers.append((r.status, await r.text(), method == "HEAD"
                                            or r.headers["Content-Type"]))
                    assert answers[0] == answers[1], (method, path)
            infos = []
            for base in (watchdog.url, prom.url):
                async with s.get(f"{base}/api/v1/status/buildinfo") as r:
                    assert r.headers["Content-Type"] == "application/json; charset=utf-8" or (
                        r.headers["Content-Type"] == "application/json")
                    infos.append(await r.json())
    ours, real = infos
    assert ours["status"] == real["status"] == "success"
    assert set(ours["data"]) == set(real["data"])
    assert ours["data"]["version"] == __version__


async def test_not_ready_until_prometheus_answers(tmp_path: Path) -> None:
    s = settings(tmp_path)
    write(s.rules_dir / "shop.yml", RULES.replace("CHAT", "http://127.0.0.1:9"))
    down = ConnectionError("connection refused")
    src = FakeSource({"errors": down, "slow": down})
    async with Daemon(s, clock=time.time, source=src, schedule=False, plugins=False) as d:
        assert d.http_url is not None
        await d.evaluate_all()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{d.http_url}/-/ready") as r:
                assert (r.status, await r.text()) == (503, "Service Unavailable")
            async with http.get(f"{d.http_url}/-/healthy") as r:
                assert (r.status, await r.text()) == (200, "Prometheus Server is Healthy.\n")


# ---- without the notification subsystem ----------------------------------------------------------


async def test_alerts_without_notifications_and_no_password_in_links(tmp_path: Path) -> None:
    s = settings(tmp_path, prometheus_url="http://user:hunter2@prom.example:9090/p/")
    write(s.rules_dir / "shop.yml", RULES.replace("CHAT", "http://127.0.0.1:9"))
    async with Daemon(s, clock=time.time, source=FakeSource(dict(SAMPLES)), schedule=False,
                      plugins=False) as d:
        await d.evaluate_all()
        url = f"{d.http_url}/api/v2"
        status, alerts = await get(f"{url}/alerts")
        assert status == 200 and len(alerts) == 4
        assert {a["generatorURL"] for a in alerts} == {
            "http://prom.example:9090/p/graph?g0.expr=errors&g0.tab=1",
            "http://prom.example:9090/p/graph?g0.expr=slow&g0.tab=1"}
        assert all("hunter2" not in json.dumps(a) for a in alerts)
        status, body = await get(f"{url}/silences")
        assert status == 503 and "notification subsystem" in body
        status, body = await post(f"{url}/silences", {"matchers": []})
        assert status == 503


# ---- the same decisions as the notification pipeline ---------------------------------------------

LABEL_NAMES = st.sampled_from(["alertname", "severity", "service", "env"])
LABEL_VALUES = st.sampled_from(["", "a", "b", "critical", "warning", "we\"ird"])
LABELSETS = st.dictionaries(LABEL_NAMES, LABEL_VALUES.filter(bool), max_size=4)
PATTERNS = st.sampled_from(["a", "a|b", ".*", ".+", "crit.*", "(", "a)|(b", "", "[a-c]+",
                            "(?i)A", "\\d"])


@hsettings(max_examples=300, deadline=None)
@given(name=LABEL_NAMES, pattern=PATTERNS | LABEL_VALUES, regex=st.booleans(),
       equal=st.booleans(), labels=LABELSETS)
def test_silence_matching_is_the_pipelines(name: str, pattern: str, regex: bool, equal: bool,
                                           labels: dict[str, str]) -> None:
    from watchdog.notify.silences import Matcher

    mine = am_api.AmMatcher.from_json({"name": name, "value": pattern, "isRegex": regex,
                                       "isEqual": equal})
    theirs = Matcher(name, pattern, regex, equal)
    assert mine.matches_value(labels.get(name, "")) == theirs.matches(labels)
    assert mine.to_json() == theirs.to_json()


@hsettings(max_examples=150, deadline=None)
@given(st.lists(LABELSETS, max_size=5), st.lists(st.builds(
    lambda sm, tm, sre, eq: {"source_match": sm, "target_match": tm, "source_match_re": sre,
                             "equal": eq},
    st.dictionaries(LABEL_NAMES, LABEL_VALUES, max_size=2),
    st.dictionaries(LABEL_NAMES, LABEL_VALUES, max_size=2),
    st.dictionaries(LABEL_NAMES, PATTERNS.filter(lambda p: p not in ("(", "a)|(b")),
                    max_size=1),
    st.lists(LABEL_NAMES, max_size=2)), max_size=3))
def test_inhibition_is_the_pipelines(alerts: list[dict[str, str]],
                                     rules: list[dict[str, Any]]) -> None:
    from watchdog.model import InhibitRule
    from watchdog.notify.pipeline import inhibited

    irs = [InhibitRule.model_validate(r) for r in rules]
    sources = [(str(i), ls) for i, ls in enumerate(alerts)]
    for target in alerts:
        by = am_api.inhibited_by(target, sources, irs)
        assert bool(by) == inhibited(target, alerts, irs)
        for fp in by:  # and the source named is one that inhibits on its own
            assert inhibited(target, [alerts[int(fp)]], irs)


@hsettings(max_examples=200, deadline=None)
@given(name=st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,5}", fullmatch=True),
       op=st.sampled_from(["=", "!=", "=~", "!~"]),
       value=st.text(st.sampled_from('a"\\\n \tné{},') | st.characters(), max_size=12))
def test_matcher_spelling_parses_back(name: str, op: str, value: str) -> None:
    """What the config and amtool show (`labels.Matcher.String`) reads back as the same
    matcher, whatever quotes, backslashes, newlines or blanks the value holds."""
    m = am_api.AmMatcher(name, op, value)
    try:
        parsed = am_api.parse_matcher(str(m))
    except am_api.MatcherError as e:
        assert m.is_regex and "regexp" in str(e)  # an invalid regex, refused as such
        return
    assert parsed == m


def test_limits_agree_with_the_silence_api() -> None:
    from watchdog.notify.receivers.alertmanager import RESEND_FACTOR
    from watchdog.notify.silences import MAX_REGEX_LENGTH

    assert am_api.MAX_REGEX_LENGTH == MAX_REGEX_LENGTH
    assert am_api.RESEND_FACTOR == RESEND_FACTOR
    with pytest.raises(am_api.MatcherError, match="at most 4096"):
        am_api.parse_matcher("a=~" + "x" * 4097)


async def test_generated_routes_route_as_ours(amtool_binary: str, tmp_path: Path) -> None:
    """The routing shown in config.original sends each label set to the receivers the watchdog
    sends it to; `amtool config routes test` reads the generated file, our routes the same
    labels (including a `match_re` that only anchors right when spelled out, and quoting)."""
    from watchdog.rulesdir import build

    rs = build({"r.yml": b'''
receivers:
  - {name: a, slack: {webhook_url: "http://x"}}
  - {name: b, slack: {webhook_url: "http://x"}}
  - {name: unrouted, slack: {webhook_url: "http://x"}}
routes:
  - {match_re: {svc: "a)|(b"}, receivers: [a]}
  - {match: {env: 'pro"d\\\\x'}, receivers: [b, a]}
  - {match_re: {svc: "c.*|d"}, match: {team: x}, receivers: [unrouted]}
'''})
    assert not rs.problems
    path = tmp_path / "am.yml"
    path.write_text(am_api.alertmanager_config(rs))
    for labels in ({"svc": "a"}, {"svc": "b"}, {"svc": "ab"}, {"svc": "xb"}, {"svc": "ax"},
                   {"env": 'pro"d\\x'}, {"env": "prod"}, {"svc": "cc", "team": "x"},
                   {"svc": "d", "team": "x", "env": 'pro"d\\x'}, {"svc": "dd", "team": "x"},
                   {"other": "1"}):
        args = [str(am_api.AmMatcher(k, "=", v)) for k, v in labels.items()]
        rc, out, err = await amtool(amtool_binary, "http://127.0.0.1:9", "config", "routes",
                                    "test", f"--config.file={path}", *args)
        assert rc == 0, err
        expected = sorted(am_api.receivers_for(labels, rs.routes)) or ["unrouted_"]
        assert sorted(out.strip().split(",")) == expected, labels


def test_filter_regexes_run_on_re2() -> None:
    """A filter is an unauthenticated regex: it must match in linear time (RE2), not hang the
    event loop the way Python's backtracking `re` would on `(a+)+$`."""
    from test_regex_safety import EVIL, NOT_QUITE, deadline

    m = am_api.parse_matcher(f'x=~"{EVIL}"')
    with deadline():
        assert not m.filters({"x": NOT_QUITE})
        assert am_api.AlertFilter(receiver=EVIL).receiver_ok(NOT_QUITE) is False
