import pytest

from watchdog.durations import format_duration, parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("0", 0), (0, 0), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("1d", 86400), ("1w", 604800),
    ("1y", 31536000), ("500ms", 0.5), ("1m30s500ms", 90.5), ("2h0m", 7200),
])
def test_parse(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", 5, "5x", "1m1h", "-5m", "1.5h", "m", True, "5m5m",
                                  "٣m", "293y", "9223372036855s"])
def test_parse_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (90, "1m30s"), (5400, "1h30m"), (0.25, "250ms"),
    # read back from Prometheus 2.x's /api/v1/status/config: weeks and years only when exact
    (86400 * 8, "8d"), (86400 * 14, "2w"), (86400 * 379, "379d"), (86400 * 15, "15d"),
    (86400 * 365, "1y"), (86400 * 730 + 3600, "730d1h"),
])
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_the_limit_is_go_s_time_duration() -> None:
    # int64 nanoseconds: Prometheus accepts 292 years and refuses 293 as "out of range"
    assert parse_duration("292y") == 292 * 365 * 86400
    with pytest.raises(ValueError, match="out of range"):
        parse_duration("293y")
