"""watchdog.promserver: OpenMetrics for promtool, backfill, and a real Prometheus's lifecycle.

The round-trip tests backfill through the real promtool and read back through the real
Prometheus's HTTP API, so escaping and timestamp rounding are checked end to end.
"""

from __future__ import annotations

import asyncio
import math
import socket
import stat
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import BackfilledPrometheus, instant_query, prom_api, require_binary

import watchdog.promserver as promserver
from watchdog.promserver import (
    PrometheusServer,
    PrometheusStartError,
    PromtoolError,
    backfill,
    find_binary,
    free_port,
    to_openmetrics,
)
from watchdog.series import STALE_NAN, Series, expand_input_series

# --------------------------------------------------------------------------------------------
# to_openmetrics (pure)


def test_to_openmetrics_groups_families_and_sorts_samples() -> None:
    text = to_openmetrics(
        [
            Series({"__name__": "b_total", "job": "x"}, [(60.0, 2.0), (0.0, 1.0)]),
            Series({"__name__": "a", "z": "1", "y": "2"}, [(0.0, 0.5)]),
            Series({"__name__": "b_total", "job": "w"}, [(0.0, 3.0)]),
        ]
    )
    assert text == (
        "# TYPE a unknown\n"
        'a{y="2",z="1"} 0.5 0\n'
        "# TYPE b_total unknown\n"
        'b_total{job="w"} 3.0 0\n'
        'b_total{job="x"} 1.0 0\n'
        'b_total{job="x"} 2.0 60\n'
        "# EOF\n"
    )


def test_to_openmetrics_escapes_label_values_and_writes_special_floats() -> None:
    text = to_openmetrics(
        [
            Series(
                {"__name__": "m", "a": 'q"b\\s\nn\tt'},
                [(0, math.nan), (1, math.inf), (2, -math.inf)],
            )
        ]
    )
    assert text.splitlines()[1:4] == [
        'm{a="q\\"b\\\\s\\nn\tt"} NaN 0',
        'm{a="q\\"b\\\\s\\nn\tt"} +Inf 1',
        'm{a="q\\"b\\\\s\\nn\tt"} -Inf 2',
    ]


def test_to_openmetrics_merges_series_and_drops_empty_labels() -> None:
    text = to_openmetrics(
        [
            Series({"__name__": "m", "a": ""}, [(0.0, 1.0)]),
            Series({"__name__": "m"}, [(60.0, 2.0), (0.0, 1.0)]),
        ]
    )
    assert text == "# TYPE m unknown\nm 1.0 0\nm 2.0 60\n# EOF\n"


def test_timestamps_survive_prometheus_truncation() -> None:
    # Prometheus reads int64(seconds * 1000); 1.001 * 1000 is 1000.9999999999999.
    for ms in [*range(0, 3000), 1_700_000_000_123, 86_400_001, -1, -1001]:
        written = promserver._format_timestamp(ms)
        assert int(float(written) * 1000) == ms, (ms, written)


@pytest.mark.parametrize(
    ("series", "message"),
    [
        (Series({"job": "x"}, [(0.0, 1.0)]), "invalid metric name ''"),
        (Series({"__name__": "1m"}, [(0.0, 1.0)]), "invalid metric name"),
        (Series({"__name__": "m", "a-b": "1"}, [(0.0, 1.0)]), "invalid label name"),
        (Series({"__name__": "m", "a:b": "1"}, [(0.0, 1.0)]), "invalid label name"),
        (Series({"__name__": "m"}, [(0.0, 1.0), (0.0, 2.0)]), "two values"),
        (Series({"__name__": "m"}, [(math.inf, 1.0)]), "invalid timestamp"),
        (Series({"__name__": "m"}, [(0.0, STALE_NAN)]), "staleness marker"),
    ],
)
def test_to_openmetrics_rejects(series: Series, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_openmetrics([series])


def test_to_openmetrics_allows_repeating_the_same_sample() -> None:
    s = Series({"__name__": "m"}, [(0.0, math.nan), (0.0, math.nan)])
    assert to_openmetrics([s, s]) == "# TYPE m unknown\nm NaN 0\n# EOF\n"


# --------------------------------------------------------------------------------------------
# backfill


def test_backfill_of_nothing_creates_the_directory_only(tmp_path: Path) -> None:
    tsdb = tmp_path / "tsdb"
    backfill([], tsdb, promtool="no-such-promtool")
    assert tsdb.is_dir() and not any(tsdb.iterdir())


def fake_binary(path: Path, script: str) -> str:
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_backfill_reports_promtool_stderr_and_keeps_the_input(tmp_path: Path) -> None:
    promtool = fake_binary(tmp_path / "promtool", "echo 'out of order sample' >&2; exit 1")
    with pytest.raises(PromtoolError, match="out of order sample") as caught:
        backfill([Series({"__name__": "m"}, [(0.0, 1.0)])], tmp_path / "tsdb", promtool=promtool)
    kept = list(tmp_path.glob("tsdb-*.om"))
    assert len(kept) == 1 and str(kept[0]) in str(caught.value)
    assert kept[0].read_text() == "# TYPE m unknown\nm 1.0 0\n# EOF\n"


def test_backfill_without_promtool_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install prometheus"):
        backfill([Series({"__name__": "m"}, [(0.0, 1.0)])], tmp_path / "t", promtool="nope-x")


WEIRD_VALUES = [
    'double "quotes"',
    "back\\slash",
    "trailing backslash\\",
    "new\nline",
    "literal \\n, not a newline",
    "tab\there, carriage\rreturn",
    "unicode é ✓ 😀",
    "braces {} and , = signs",
    '\\"',
]


@pytest.mark.prometheus
def test_label_values_round_trip_through_prometheus(
    backfilled_prometheus: BackfilledPrometheus,
) -> None:
    series = [
        Series({"__name__": "weird", "v": value, "i": str(i)}, [(0.0, float(i))])
        for i, value in enumerate(WEIRD_VALUES)
    ]
    prom = backfilled_prometheus(series)
    result = instant_query(prom, "weird", at=60)
    got = {r["metric"]["i"]: r["metric"] for r in result}
    assert got == {s.labels["i"]: s.labels for s in series}


@pytest.mark.prometheus
def test_values_and_millisecond_timestamps_round_trip(
    backfilled_prometheus: BackfilledPrometheus,
) -> None:
    samples = [
        (0.0, math.nan),
        (1.001, math.inf),
        (1.005, -math.inf),
        (2.999, 1e-300),
        (3.5, -0.25),
        (7.123, 12345678.875),
    ]
    prom = backfilled_prometheus([Series({"__name__": "m"}, samples)])
    data = prom_api(prom, "query", query="m[10s]", time=10)
    (matrix,) = data["result"]
    assert [(t, v) for t, v in matrix["values"]] == [
        (0, "NaN"),
        (1.001, "+Inf"),
        (1.005, "-Inf"),
        (2.999, "1e-300"),
        (3.5, "-0.25"),
        (7.123, "12345678.875"),
    ]


@pytest.mark.prometheus
def test_notation_backfilled_is_what_prometheus_returns(
    backfilled_prometheus: BackfilledPrometheus,
) -> None:
    s = expand_input_series('http_requests{job="api", code="500"}', "1+2x3 _ _x2 5 -2-1x3", 60)
    prom = backfilled_prometheus([s])
    data = prom_api(prom, "query", query="http_requests[20m]", time=1200)
    (matrix,) = data["result"]
    assert matrix["metric"] == s.labels
    assert [(float(t), float(v)) for t, v in matrix["values"]] == s.samples
    # ... and an instant query at 600s, as DESIGN.md's backfill recipe does.
    (sample,) = instant_query(prom, "http_requests", at=600)
    assert sample["value"] == [600, "-4"]


# --------------------------------------------------------------------------------------------
# PrometheusServer


def http_status(url: str) -> int | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


@pytest.mark.prometheus
def test_start_stop_and_stop_again(tmp_path: Path, prometheus_binary: str) -> None:
    prom = PrometheusServer(tmp_path / "tsdb", binary=prometheus_binary)
    with pytest.raises(RuntimeError, match="not been started"):
        _ = prom.url
    started = time.monotonic()
    prom.start()
    try:
        assert time.monotonic() - started < 10
        assert prom.running and prom.pid is not None
        assert prom.url == f"http://127.0.0.1:{prom.port}"
        assert http_status(f"{prom.url}/-/ready") == 200
        assert "running" in repr(prom)
        with pytest.raises(RuntimeError, match="already running"):
            prom.start()
        flags = prom_api(prom, "status/flags")
        assert flags["storage.tsdb.retention.time"] == "100y"
        assert flags["web.enable-lifecycle"] == "true"
        assert flags["query.lookback-delta"] == "5m"
    finally:
        prom.stop()
    assert not prom.running and prom.pid is None
    assert http_status(f"{prom.url}/-/ready") is None
    prom.stop()  # idempotent
    prom.kill()
    assert prom.config_path.read_text() == "global: {}\n"
    assert prom.log_path.exists()


@pytest.mark.prometheus
def test_kill_then_restart_keeps_data_and_url(
    backfilled_prometheus: BackfilledPrometheus,
) -> None:
    prom = backfilled_prometheus([expand_input_series("m", "1+1x10", 60)])
    url = prom.url
    process = prom._process
    prom.kill()
    assert process is not None and process.returncode == -9
    assert not prom.running
    prom.kill()  # idempotent
    prom.start()
    assert prom.url == url
    assert instant_query(prom, "m", at=600)[0]["value"] == [600, "11"]


@pytest.mark.prometheus
async def test_async_context_manager(tmp_path: Path, prometheus_binary: str) -> None:
    async with PrometheusServer(tmp_path / "tsdb", binary=prometheus_binary) as prom:
        assert prom.running
        status = await asyncio.to_thread(http_status, f"{prom.url}/-/ready")
        assert status == 200
    assert not prom.running


@pytest.mark.prometheus
def test_sync_context_manager_stops_on_error(tmp_path: Path, prometheus_binary: str) -> None:
    prom = PrometheusServer(tmp_path / "tsdb", binary=prometheus_binary)
    with pytest.raises(KeyError), prom:
        assert prom.running
        raise KeyError("boom")
    assert not prom.running


@pytest.mark.prometheus
def test_bad_config_fails_with_the_log(tmp_path: Path, prometheus_binary: str) -> None:
    prom = PrometheusServer(
        tmp_path / "tsdb",
        config="global: {scrape_interval: sometimes}\n",
        binary=prometheus_binary,
    )
    with pytest.raises(PrometheusStartError, match="sometimes") as caught:
        prom.start()
    assert "exited with code" in str(caught.value)
    assert not prom.running


@pytest.mark.prometheus
def test_port_taken_between_pick_and_bind_is_retried(
    tmp_path: Path, prometheus_binary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken, taken])
        monkeypatch.setattr(promserver, "free_port", lambda: next(ports, None) or free_port())
        with PrometheusServer(tmp_path / "tsdb", binary=prometheus_binary) as prom:
            assert prom.port != taken
            assert http_status(f"{prom.url}/-/ready") == 200
    assert prom.log_path.read_text().count("address already in use") == 2


def test_start_gives_up_when_never_ready(tmp_path: Path) -> None:
    binary = fake_binary(tmp_path / "prometheus", "exec sleep 30")
    prom = PrometheusServer(tmp_path / "tsdb", binary=binary)
    started = time.monotonic()
    with pytest.raises(PrometheusStartError, match="not ready in time"):
        prom.start(timeout=0.5)
    assert time.monotonic() - started < 5
    assert not prom.running  # killed, not left behind
    assert prom._process is not None and prom._process not in promserver._children


def test_gives_up_after_repeated_port_clashes(tmp_path: Path) -> None:
    binary = fake_binary(
        tmp_path / "prometheus", "echo 'listen tcp: bind: address already in use' >&2; exit 1"
    )
    prom = PrometheusServer(tmp_path / "tsdb", binary=binary)
    with pytest.raises(PrometheusStartError, match="could not bind a port in 5 attempts"):
        prom.start()


def test_missing_binary_says_how_to_install_it(tmp_path: Path) -> None:
    prom = PrometheusServer(tmp_path / "tsdb", binary="no-such-prometheus-binary")
    with pytest.raises(FileNotFoundError, match="apt-get install prometheus"):
        prom.start()


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"# TYPE demo_value gauge\ndemo_value 42\n"
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def metrics_target() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.prometheus
@pytest.mark.slow  # Prometheus hands discovered targets to the scraper every 5s, first too
def test_scraping_config_scrapes_the_target(
    tmp_path: Path, prometheus_binary: str, metrics_target: str
) -> None:
    prom = PrometheusServer.scraping(
        [metrics_target], "1s", tsdb_dir=tmp_path / "tsdb", binary=prometheus_binary
    )
    with prom:
        deadline = time.monotonic() + 15
        result: list[dict[str, object]] = []
        while not result and time.monotonic() < deadline:
            time.sleep(0.2)
            result = instant_query(prom, "demo_value", at=time.time())
        assert result, prom.log_tail()
        assert result[0]["metric"] == {
            "__name__": "demo_value",
            "instance": metrics_target,
            "job": "watchdog",
        }
        prom.reload()  # the lifecycle API is on
        with pytest.raises(RuntimeError, match="refused the reload"):
            prom.reload("scrape_configs: {not: a list}\n")


def test_scraping_wants_host_port_targets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="host:port"):
        PrometheusServer.scraping(["http://127.0.0.1:1/metrics"], tsdb_dir=tmp_path)


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_find_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert find_binary("no-such-binary-anywhere") is None
    tool = fake_binary(tmp_path / "mytool", "true")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_binary("mytool") == tool


@pytest.mark.prometheus
def test_find_binary_falls_back_to_usr_bin(
    prometheus_binary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if prometheus_binary != "/usr/bin/prometheus":
        pytest.skip("prometheus is not in /usr/bin here")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert find_binary("prometheus") == "/usr/bin/prometheus"


def test_require_binary_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install prometheus"):
        require_binary("no-such-binary-anywhere")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_binary("no-such-binary-anywhere")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        require_binary("no-such-binary-anywhere")
