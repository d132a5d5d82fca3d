"""A real Prometheus and promtool, driven as subprocesses: backfill history, then query it.

For the test suite, ``watchdog test`` and the benchmarks: ``backfill`` turns Series (see
``watchdog.series``) into TSDB blocks with ``promtool tsdb create-blocks-from openmetrics``, and
``PrometheusServer`` runs a Prometheus on a free loopback port over such a directory, so a
``for: 15m`` rule can be evaluated at past times without waiting.

This is shell code: it starts processes, writes files and opens sockets. It must not hold rule
evaluation logic (that lives in the functional core, which must never import this module), must
not talk to anything but 127.0.0.1, and must not leave processes behind: every Prometheus it
starts is stopped by ``stop``/``kill``, by the context managers, or at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import math
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from watchdog.series import Series, is_stale_nan

APT_HINT: Final = "install Debian's prometheus package: apt-get install prometheus"

DEFAULT_CONFIG: Final = "global: {}\n"

_METRIC_NAME_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:"
)

# Children still running, killed at interpreter exit so an aborted test run leaves no
# Prometheus behind. (Not PR_SET_PDEATHSIG: it fires when the *thread* that forked exits, and
# the async context manager starts Prometheus from a worker thread.)
_children: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_children() -> None:
    for child in list(_children):
        if child.poll() is None:
            child.kill()
            child.wait()
    _children.clear()


class PromtoolError(RuntimeError):
    """promtool exited non-zero; the message carries its stderr."""


class PrometheusStartError(RuntimeError):
    """Prometheus did not become ready; the message carries the end of its log."""


def find_binary(name: str) -> str | None:
    """The path of an executable, or None: PATH first, then /usr/bin.

    The fallback is for environments whose PATH leaves out /usr/bin (stripped-down CI runners,
    service units), where Debian installs prometheus and promtool.
    """
    found = shutil.which(name)
    if found:
        return found
    fallback = Path("/usr/bin") / name
    if fallback.is_file() and os.access(fallback, os.X_OK):
        return str(fallback)
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Someone else may take it before Prometheus binds it; PrometheusServer.start retries.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------------------------
# OpenMetrics for promtool


def _check_metric_name(name: str) -> None:
    if not name or name[0].isdigit() or not set(name) <= _METRIC_NAME_CHARS:
        raise ValueError(f"invalid metric name {name!r}")


def _check_label_name(name: str) -> None:
    if not name or name[0].isdigit() or not set(name) <= _METRIC_NAME_CHARS or ":" in name:
        raise ValueError(f"invalid label name {name!r}")


def _escape_label_value(value: str) -> str:
    # The only escapes Prometheus's OpenMetrics parser undoes (textparse lvalReplacer); every
    # other character, tabs and non-ASCII included, goes through raw. Backslash first.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)  # shortest repr that round-trips; Go's ParseFloat reads it exactly


def _format_timestamp(ms: int) -> str:
    """Seconds that Prometheus turns back into exactly ``ms`` milliseconds.

    Its parser computes ``int64(seconds * 1000)``, which truncates: 1.001 * 1000 is
    1000.9999999999999, read back as 1000 ms. Nudging to the next float up fixes that.
    """
    if ms % 1000 == 0:
        return str(ms // 1000)
    seconds = ms / 1000
    toward = math.inf if ms > 0 else -math.inf
    while int(seconds * 1000) != ms:  # Python's int() truncates toward zero, like Go's
        seconds = math.nextafter(seconds, toward)
    return repr(seconds)


def to_openmetrics(series: Iterable[Series]) -> str:
    """OpenMetrics text that ``promtool tsdb create-blocks-from openmetrics`` accepts.

    Series with the same labels are merged; families are grouped and sorted, each under
    ``# TYPE <name> unknown`` (the counter type would demand a ``_total`` suffix); samples are
    sorted by time (the TSDB appender rejects out-of-order samples); the text ends with
    ``# EOF``. Timestamps are whole milliseconds, as in Prometheus. Labels with an empty value
    are dropped, as Prometheus does.

    Raises ValueError for a series without a valid ``__name__``, invalid label names, two
    different values at one timestamp, and staleness markers: OpenMetrics has no way to write
    one, and dropping it would silently change query results for the next 5 minutes.
    """
    merged: dict[tuple[str, tuple[tuple[str, str], ...]], dict[int, float]] = {}
    for one in series:
        name = one.labels.get("__name__", "")
        _check_metric_name(name)
        labels = tuple(sorted((k, v) for k, v in one.labels.items() if k != "__name__" and v != ""))
        for key, _ in labels:
            _check_label_name(key)
        points = merged.setdefault((name, labels), {})
        for at, value in one.samples:
            if not math.isfinite(at):
                raise ValueError(f"{name}: invalid timestamp {at!r}")
            if is_stale_nan(value):
                raise ValueError(
                    f"{name}: a staleness marker at {at}s cannot be backfilled: OpenMetrics "
                    "has no way to write one"
                )
            ms = round(at * 1000)
            old = points.setdefault(ms, value)
            if old != value and not (math.isnan(old) and math.isnan(value)):
                raise ValueError(f"{name}: two values at {ms / 1000}s: {old!r} and {value!r}")

    lines: list[str] = []
    family = None
    for name, labels in sorted(merged):
        if name != family:
            lines.append(f"# TYPE {name} unknown")
            family = name
        label_text = ",".join(f'{k}="{_escape_label_value(v)}"' for k, v in labels)
        head = f"{name}{{{label_text}}}" if labels else name
        points = merged[(name, labels)]
        lines.extend(
            f"{head} {_format_value(points[ms])} {_format_timestamp(ms)}" for ms in sorted(points)
        )
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def backfill(
    series: Iterable[Series],
    tsdb_dir: Path,
    *,
    promtool: str = "promtool",
    timeout: float = 300,
) -> None:
    """Write ``series`` as TSDB blocks into ``tsdb_dir`` (created if missing).

    Runs promtool; raises PromtoolError with its stderr on failure, keeping the OpenMetrics file
    next to ``tsdb_dir`` for a look. Backfill before starting Prometheus on the directory: a
    running one only notices new blocks at its next compaction cycle.
    """
    text = to_openmetrics(series)
    tsdb_dir = Path(tsdb_dir)
    tsdb_dir.mkdir(parents=True, exist_ok=True)
    if text == "# EOF\n":
        return  # nothing to write; promtool would succeed and create no block
    binary = find_binary(promtool)
    if binary is None:
        raise FileNotFoundError(f"{promtool} not found; {APT_HINT}")
    # Next to the TSDB rather than inside it, so Prometheus never sees a stray file there.
    fd, name = tempfile.mkstemp(prefix=f"{tsdb_dir.name}-", suffix=".om", dir=tsdb_dir.parent)
    input_path = Path(name)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    result = subprocess.run(
        [binary, "tsdb", "create-blocks-from", "openmetrics", str(input_path), str(tsdb_dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise PromtoolError(
            f"promtool tsdb create-blocks-from openmetrics {input_path} {tsdb_dir} exited "
            f"{result.returncode}:\n{result.stderr.strip() or result.stdout.strip()}"
        )
    input_path.unlink()


# --------------------------------------------------------------------------------------------
# Prometheus


# urllib honours http_proxy from the environment; loopback requests must never go through one.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PrometheusServer:
    """A Prometheus on a free 127.0.0.1 port over ``tsdb_dir``.

    Its log (stdout and stderr, ``--log.level=warn``) goes to ``<tsdb_dir>.prometheus.log`` and
    its config to ``<tsdb_dir>.prometheus.yml``, both beside ``tsdb_dir``, so a failed start can
    show why and the files survive the test for a look. Retention is 100 years so backfilled
    samples from Unix time 0 are kept; the lifecycle API is on for ``reload``; the lookback
    delta is Prometheus's default (5m), as in production.

    ``start`` after ``stop`` or ``kill`` restarts on the same directory and, when it is still
    free, the same port, so a daemon under test keeps its URL across a chaos-test restart.
    """

    # Attempts at binding a port: another process can grab the free port we picked before
    # Prometheus binds it. Five keeps a flaky run from failing and a real fault from looping.
    PORT_ATTEMPTS: Final = 5
    # Time between readiness polls: Prometheus on an empty TSDB is ready in ~0.2 s here.
    POLL_INTERVAL: Final = 0.05

    def __init__(
        self,
        tsdb_dir: Path,
        *,
        config: str | None = None,
        extra_args: Sequence[str] = (),
        binary: str = "prometheus",
    ) -> None:
        self.tsdb_dir = Path(tsdb_dir)
        self.config = DEFAULT_CONFIG if config is None else config
        self.extra_args = tuple(extra_args)
        self.binary = binary
        self.log_path = self.tsdb_dir.parent / f"{self.tsdb_dir.name}.prometheus.log"
        self.config_path = self.tsdb_dir.parent / f"{self.tsdb_dir.name}.prometheus.yml"
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._log_offset = 0  # where the current run's part of the log starts

    @classmethod
    def scraping(
        cls,
        targets: Sequence[str],
        scrape_interval: str = "1s",
        *,
        tsdb_dir: Path,
        job_name: str = "watchdog",
        metrics_path: str = "/metrics",
        extra_args: Sequence[str] = (),
        binary: str = "prometheus",
    ) -> PrometheusServer:
        """A (not yet started) Prometheus that scrapes ``targets`` ("host:port") every interval.

        The scrape timeout equals the interval, since Prometheus refuses a timeout longer than
        the interval and its default is 10s.
        """
        for target in targets:
            if "://" in target or "/" in target:
                raise ValueError(f"target {target!r}: give host:port; set metrics_path apart")
        config = {
            "global": {
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval,
                "evaluation_interval": scrape_interval,
            },
            "scrape_configs": [
                {
                    "job_name": job_name,
                    "metrics_path": metrics_path,
                    "static_configs": [{"targets": list(targets)}],
                }
            ],
        }
        # JSON is YAML, and json.dumps quotes every string safely.
        return cls(
            tsdb_dir, config=json.dumps(config, indent=2), extra_args=extra_args, binary=binary
        )

    # -- state ---------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("Prometheus has not been started")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process else None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines Prometheus logged in the current (or last) run."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> None:
        """Start Prometheus and wait until ``GET /-/ready`` answers 200.

        Raises PrometheusStartError with the end of Prometheus's log if it exits or is not
        ready within ``timeout`` seconds, FileNotFoundError if the binary is missing.
        """
        if self.running:
            raise RuntimeError(f"Prometheus is already running at {self.url}")
        binary = find_binary(self.binary)
        if binary is None:
            raise FileNotFoundError(f"{self.binary} not found; {APT_HINT}")
        self.tsdb_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config, encoding="utf-8")
        deadline = time.monotonic() + timeout
        previous = self._port
        for attempt in range(1, self.PORT_ATTEMPTS + 1):
            # On a restart try the old port first, so the URL stays the same.
            port = previous if previous is not None and attempt == 1 else free_port()
            if self._launch(binary, port, deadline):
                return
        raise PrometheusStartError(
            f"Prometheus could not bind a port in {self.PORT_ATTEMPTS} attempts "
            f"(address already in use); log {self.log_path}:\n{self.log_tail()}"
        )

    def _command(self, binary: str, port: int) -> list[str]:
        return [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.tsdb_dir}",
            # Backfilled history starts at Unix time 0; the default 15d would delete it.
            "--storage.tsdb.retention.time=100y",
            "--web.enable-lifecycle",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            *self.extra_args,
        ]

    def _launch(self, binary: str, port: int, deadline: float) -> bool:
        """One start attempt: True when ready, False when the port was taken; raises otherwise."""
        with self.log_path.open("ab") as log:
            log.write(f"--- watchdog: starting Prometheus on 127.0.0.1:{port}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            process = subprocess.Popen(
                self._command(binary, port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _children.add(process)
        self._process = process
        self._port = port
        ready_url = f"http://127.0.0.1:{port}/-/ready"
        while True:
            code = process.poll()
            if code is not None:
                _children.discard(process)
                tail = self.log_tail()
                if "address already in use" in tail:
                    return False
                raise PrometheusStartError(
                    f"Prometheus exited with code {code} during startup; "
                    f"log {self.log_path}:\n{tail}"
                )
            if _http_ok(ready_url, timeout=1.0):
                return True
            if time.monotonic() >= deadline:
                self.kill()
                raise PrometheusStartError(
                    f"Prometheus at 127.0.0.1:{port} was not ready in time; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(self.POLL_INTERVAL)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds. Does nothing if not running."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _children.discard(process)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no WAL flush, no clean shutdown. For chaos tests."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait()
        _children.discard(process)

    def reload(self, config: str | None = None, timeout: float = 10) -> None:
        """Optionally replace the config, then ask Prometheus to reload it (POST /-/reload)."""
        if config is not None:
            self.config = config
            self.config_path.write_text(config, encoding="utf-8")
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        try:
            with _opener.open(request, timeout=timeout):
                pass
        except urllib.error.HTTPError as err:
            body = err.read().decode("utf-8", errors="replace")
            raise RuntimeError(f"Prometheus refused the reload ({err.code}): {body}") from None

    # -- context managers ----------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        # Starting blocks for up to a few hundred milliseconds of polling: keep the loop free.
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not started"
        state = "running" if self.running else "stopped"
        return f"<PrometheusServer {where} {state} tsdb={self.tsdb_dir}>"


def _http_ok(url: str, timeout: float) -> bool:
    try:
        with _opener.open(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        # Refused while Prometheus binds, 503 while it opens the TSDB: keep polling.
        return False
