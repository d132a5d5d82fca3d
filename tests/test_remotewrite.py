"""watchdog.remotewrite against a real Prometheus receiving the writes."""

from __future__ import annotations

import math
from pathlib import Path

import aiohttp
import pytest

from watchdog.promserver import PrometheusServer
from watchdog.remotewrite import RemoteWriteError, _snappy_literal, encode, push
from watchdog.series import STALE_NAN

pytestmark = pytest.mark.prometheus


async def _query(session: aiohttp.ClientSession, url: str, expr: str, at: float
                 ) -> list[tuple[dict[str, str], str]]:
    async with session.get(f"{url}/api/v1/query", params={"query": expr, "time": str(at)}) as r:
        doc = await r.json()
    return [(x["metric"], x["value"][1]) for x in doc["data"]["result"]]


async def test_samples_and_staleness_markers_arrive(tmp_path: Path, prometheus_binary: str
                                                    ) -> None:
    long_value = "v" * 70_000  # more than one snappy literal element
    with PrometheusServer(tmp_path / "tsdb", extra_args=["--web.enable-remote-write-receiver"]
                          ) as prom:
        async with aiohttp.ClientSession() as s:
            url = f"{prom.url}/api/v1/write"
            await push(s, url, [
                ({"__name__": "a", "job": "x", "empty": ""}, [(0, 1.5), (60_000, math.nan),
                                                              (120_000, STALE_NAN)]),
                ({"__name__": "b", "big": long_value}, [(0, -2.0)]),
            ])
            assert await _query(s, prom.url, "a", 30) == [({"__name__": "a", "job": "x"}, "1.5")]
            assert await _query(s, prom.url, "a", 90) == [({"__name__": "a", "job": "x"}, "NaN")]
            # the staleness marker ends the series at once, not after the 5m lookback
            assert await _query(s, prom.url, "a", 120) == []
            assert await _query(s, prom.url, "b", 0) == [({"__name__": "b", "big": long_value},
                                                          "-2")]
            with pytest.raises(RemoteWriteError) as refused:  # older than the head allows
                await push(s, url, [({"__name__": "c"}, [(-10**12, 1.0)])])
            assert refused.value.status == 400


def test_snappy_literal_blocks_decode_with_a_reference_decoder() -> None:
    # A literal-only block: varint length, then tagged literals; decode it by the format's rules.
    data = bytes(range(256)) * 300

    def decode(block: bytes) -> bytes:
        n, shift, i = 0, 0, 0
        while True:
            b = block[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        out = bytearray()
        while i < len(block):
            tag = block[i]
            i += 1
            assert tag & 3 == 0
            length = tag >> 2
            if length >= 60:
                k = length - 59
                length = int.from_bytes(block[i:i + k], "little")
                i += k
            out += block[i:i + length + 1]
            i += length + 1
        assert len(out) == n
        return bytes(out)

    assert decode(_snappy_literal(data)) == data
    assert decode(_snappy_literal(b"")) == b""
    assert encode([]) == b"\x00"
