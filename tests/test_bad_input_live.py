"""A broken rule file never freezes a running watchdog (issue 12, "done means" 2), through its
public surface only (HTTP and the log), so the test outlives rewrites of the daemon's insides.

For a broken file of each class found by fuzzing — wrong types and out-of-range durations and
integers, an alias bomb, a PromQL chain that took the parser 650 MB, control characters, a NUL,
bytes that are not UTF-8, a file past the size limit, Prometheus-refused values — dropped into
the rules folder of a running `watchdog run`:
- `POST /-/reload` answers 422 and names the file,
- `/api/v1/status` lists it as rejected with one-line `file:line: message` errors,
- the last good rules keep evaluating (their last evaluation moves on), also when the broken
  content replaces a file that was good (its last good version keeps running),
- a new good file put beside it loads (by the reload and by the folder poller).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from test_daemon_support import FakePrometheus
from watchdog_process import READ_TOKEN, TOKEN, Response, WatchdogProcess

from watchdog.rulefile import MAX_FILE_BYTES

pytestmark = pytest.mark.slow

GOOD = """groups:
  - name: good
    interval: 1s
    rules:
      - alert: GoodRule
        expr: up == 0
"""


def bomb() -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "\n".join(lines) + "\ngroups: [*a8]\n"


def rule(extra: str = "", group_extra: str = "", expr: str = "up == 0") -> str:
    return (f"groups:\n- name: broken\n{group_extra}  rules:\n  - alert: Broken\n"
            f"    expr: {expr}\n{extra}")


# class -> (content, the line its problem is on)
BROKEN: dict[str, tuple[bytes, int]] = {
    "for is a list": (rule("    for: [1]\n").encode(), 6),
    "400-digit duration": (rule("    for: " + "9" * 400 + "s\n").encode(), 6),
    "5000-digit limit": (rule(group_extra="  limit: " + "9" * 5000 + "\n").encode(), 3),
    "limit true": (rule(group_extra="  limit: true\n").encode(), 3),
    "for 293y": (rule("    for: 293y\n").encode(), 6),
    "__name__ label": (rule("    labels: {__name__: x}\n").encode(), 6),
    "empty group name": (rule().replace("name: broken", "name: ''").encode(), 2),
    "alias bomb": (bomb().encode(), 1),
    "PromQL chain": (rule(expr="+".join(["up"] * 2000)).encode(), 5),
    "PromQL nesting": (rule(expr="(" * 3000 + "up" + ")" * 3000).encode(), 5),
    "control character": (rule("    annotations: {a: \"x\x01\"}\n").encode(), 6),
    "NUL": (rule("    annotations: {a: x\x00}\n").encode(), 6),
    "not UTF-8": (rule("    annotations: {a: x}\n").encode() + b"# \xff\n", 7),
    "deep nesting": (("a: " + "[" * 60_000 + "\n").encode(), 1),
    "bad timestamp": (rule("    for: 2021-13-45\n").encode(), 6),
    "too large": (rule().encode() + b"#" * (MAX_FILE_BYTES + 1) + b"\n", 1),
}


@pytest.fixture
async def prom() -> AsyncIterator[FakePrometheus]:
    fake = FakePrometheus()
    fake.set("up == 0", 1.0, instance="a")
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def wd(tmp_path: Path, prom: FakePrometheus) -> AsyncIterator[WatchdogProcess]:
    w = WatchdogProcess(tmp_path, {"WATCHDOG_PROMETHEUS_URL": prom.url,
                                   "WATCHDOG_API_READ_TOKEN": READ_TOKEN})
    (w.rules / "good.yml").write_text(GOOD)
    w.start()
    try:
        await asyncio.to_thread(w.wait_up)
        yield w
    finally:
        await asyncio.to_thread(w.stop)


async def call(w: WatchdogProcess, method: str, path: str, token: str = READ_TOKEN) -> Response:
    # http.client in a thread: the fake Prometheus runs on this loop and must keep answering
    return await asyncio.to_thread(w.request, method, path, None, None, token)


async def get(w: WatchdogProcess, path: str) -> Any:
    r = await call(w, "GET", path)
    assert r.status == 200, (path, r)
    return r.json()["data"]


async def until(what: str, pred: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def last_evaluation(w: WatchdogProcess, group: str) -> str | None:
    for g in (await get(w, "/api/v1/rules"))["groups"]:
        if g["name"] == group:
            return str(g["lastEvaluation"])
    return None


async def good_rule_evaluates(w: WatchdogProcess) -> None:
    """GoodRule's group evaluates again after now, and its alert is still there."""
    before = await last_evaluation(w, "good")

    async def moved() -> bool:
        now = await last_evaluation(w, "good")
        return now is not None and now != before

    await until("the good group to evaluate again", moved)
    alerts = (await get(w, "/api/v1/alerts"))["alerts"]
    assert "GoodRule" in [a["labels"]["alertname"] for a in alerts]


def file_status(status: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [f for f in status["files"] if f["path"].endswith("/" + name)]
    return found


async def test_each_class_of_broken_file_is_rejected_and_nothing_freezes(
        wd: WatchdogProcess) -> None:
    await until("GoodRule to fire", lambda: _firing(wd))
    for i, (name, (content, line)) in enumerate(BROKEN.items()):
        bad = wd.rules / "bad.yml"
        bad.write_bytes(content)
        fresh = wd.rules / f"new{i}.yml"
        fresh.write_text(GOOD.replace("name: good", f"name: new{i}")
                         .replace("GoodRule", f"New{i}"))
        r = await call(wd, "POST", "/-/reload", TOKEN)
        assert r.status == 422, (name, r)
        error = r.json()["error"]
        assert f"{bad}:{line}: " in error, (name, error)
        status = await get(wd, "/api/v1/status")
        st = file_status(status, "bad.yml")
        assert st["status"] == "rejected" and st["errors"], (name, st)
        for e in st["errors"]:
            assert re.fullmatch(rf"{re.escape(str(bad))}:\d+: [^\n]+", e), (name, e)
        assert st["errors"][0].startswith(f"{bad}:{line}: "), (name, st["errors"])
        assert file_status(status, "good.yml")["status"] == "loaded"
        assert file_status(status, f"new{i}.yml")["status"] == "loaded", name
        assert await last_evaluation(wd, f"new{i}") is not None, name  # the new file runs
        await good_rule_evaluates(wd)
        fresh.unlink()
    wd.alive()
    assert "Traceback" not in wd.log()


async def test_a_good_file_turned_bad_keeps_its_last_good_version(wd: WatchdogProcess) -> None:
    await until("GoodRule to fire", lambda: _firing(wd))
    good = wd.rules / "good.yml"
    for name in ("alias bomb", "5000-digit limit", "PromQL chain", "not UTF-8"):
        content, line = BROKEN[name]
        good.write_bytes(content)
        r = await call(wd, "POST", "/-/reload", TOKEN)
        assert r.status == 422 and f"{good}:{line}: " in r.json()["error"], (name, r)
        st = file_status(await get(wd, "/api/v1/status"), "good.yml")
        assert st["status"] == "rejected" and st["runningPrevious"], (name, st)
        await good_rule_evaluates(wd)
    # and the poller, without a POST: a good file beside the broken one is picked up
    (wd.rules / "later.yml").write_text(GOOD.replace("name: good", "name: later")
                                        .replace("GoodRule", "Later"))

    async def later_loaded() -> bool:
        return await last_evaluation(wd, "later") is not None

    await until("the poller to load later.yml", later_loaded)
    good.write_text(GOOD)
    assert (await call(wd, "POST", "/-/reload", TOKEN)).status == 200
    st = file_status(await get(wd, "/api/v1/status"), "good.yml")
    assert st["status"] == "loaded" and not st["errors"]
    assert "Traceback" not in wd.log()


async def _firing(w: WatchdogProcess) -> bool:
    alerts = (await get(w, "/api/v1/alerts"))["alerts"]
    return any(a["state"] == "firing" for a in alerts)
