"""The Prometheus remote-write protocol (1.0): samples to a receiver such as Prometheus started
with `--web.enable-remote-write-receiver`.

`encode` is pure: a snappy-framed protobuf `WriteRequest` for a list of series. The protobuf is
written by hand (four small messages, see prometheus/prompb/types.proto) and the snappy block
holds literals only — valid snappy that every decoder reads — because the payloads here go over
loopback, where compression buys nothing and a native dependency would cost more. `push` sends
one request with aiohttp and raises `RemoteWriteError` with the receiver's message on a non-2xx
answer. Sample values travel as their IEEE bits, so Prometheus's staleness marker (a particular
NaN) arrives as a staleness marker. This module must not decide what to write or when.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence

import aiohttp

HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}


class RemoteWriteError(RuntimeError):
    """The receiver refused the request; the message carries its status and answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"remote write: HTTP {status}: {message}")
        self.status = status


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 fields: negative numbers as their two's complement, 10 bytes
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _series(labels: Mapping[str, str], samples: Sequence[tuple[int, float]]) -> bytes:
    # Receivers take the label list as sorted (Prometheus builds labels.Labels from it as is);
    # an empty value means "no such label".
    out = bytearray()
    for name in sorted(labels):
        if labels[name] != "":
            out += _field(1, _field(1, name.encode()) + _field(2, labels[name].encode()))
    for ms, value in samples:
        out += _field(2, b"\x09" + struct.pack("<d", value) + b"\x10" + _varint(ms))
    return bytes(out)


def _snappy_literal(data: bytes) -> bytes:
    """A snappy block made of literal elements (no back-references)."""
    out = bytearray(_varint(len(data)))
    chunk = 65536
    for i in range(0, len(data), chunk):
        part = data[i:i + chunk]
        n = len(part) - 1
        if n < 60:
            out.append(n << 2)
        elif n < 1 << 8:
            out += bytes([60 << 2, n])
        else:
            out += bytes([61 << 2]) + n.to_bytes(2, "little")
        out += part
    return bytes(out)


def encode(series: Iterable[tuple[Mapping[str, str], Sequence[tuple[int, float]]]]) -> bytes:
    """The request body for `(labels, [(timestamp ms, value), ...])` pairs, labels with
    `__name__`, samples of one series in time order."""
    body = b"".join(_field(1, _series(labels, samples)) for labels, samples in series)
    return _snappy_literal(body)


async def push(session: aiohttp.ClientSession, url: str,
               series: Iterable[tuple[Mapping[str, str], Sequence[tuple[int, float]]]],
               timeout: float = 30) -> None:
    """POST one write request to `url` (e.g. http://127.0.0.1:9090/api/v1/write)."""
    async with session.post(url, data=encode(series), headers=HEADERS,
                            timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        if resp.status // 100 != 2:
            text = (await resp.text(errors="replace")).strip()
            raise RemoteWriteError(resp.status, text[:500])
