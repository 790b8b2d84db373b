"""The pure parts of the defences, one behaviour each: the rate limiter's bucket, the throttled
log, bounded event arguments, stdio line framing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging

import pytest

from gateway.audit.bounds import MAX_TOTAL, MAX_VALUE, TRUNCATED, bound_arguments, event_key
from gateway.server.limits import MAX_PRINCIPALS_TRACKED, Rate, RateLimitedLog, RateLimiter
from gateway.server.stdio import read_lines


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_allows_the_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(Rate.parse("3/m"), clock=clock)
    assert [limiter.take("alice") for _ in range(3)] == [None, None, None]
    refused = limiter.take("alice")
    assert refused is not None and refused.code == "rate_limited" and refused.http_status == 429
    assert refused.extra["retry_after_seconds"] == 20  # one token per 20 s
    assert limiter.take("bob") is None  # buckets are per principal
    clock.now += 20
    assert limiter.take("alice") is None
    assert limiter.take("alice") is not None


def test_off_means_no_limit_and_memory_stays_bounded() -> None:
    assert Rate.parse("off") is None and RateLimiter(None).take("x") is None
    limiter = RateLimiter(Rate.parse("1/h"), clock=Clock())
    for i in range(MAX_PRINCIPALS_TRACKED + 50):
        limiter.take(f"p{i}")
    assert len(limiter._buckets) == MAX_PRINCIPALS_TRACKED


@pytest.mark.parametrize("text", ["", "3", "3/w", "0/s", "-1/s", "1/s/2", "9999999999/s"])
def test_a_malformed_rate_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="COUNT/UNIT"):
        Rate.parse(text)


def test_the_throttled_log_writes_once_per_interval_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = RateLimitedLog(logging.getLogger("tests.throttled"), interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, "tests.throttled"):
        for _ in range(1000):
            log.log(logging.WARNING, "accept", "accept failed: %s", "EMFILE")
        clock.now += 10
        log.log(logging.WARNING, "accept", "accept failed: %s", "EMFILE")
    assert [r.getMessage() for r in caplog.records] == [
        "accept failed: EMFILE",
        "accept failed: EMFILE (and 999 more like it in the last 10s)",
    ]


def test_event_arguments_are_bounded_with_a_marker_and_a_hash() -> None:
    big = "x" * (3 * 1024 * 1024)
    out = bound_arguments({"small": "ok", "big": big, "n": 10**5000, "nested": {"a": ["y" * 2000]}})
    assert out["small"] == "ok"
    assert out["big"].startswith("x" * 128) and TRUNCATED in out["big"]
    assert hashlib.sha256(big.encode()).hexdigest() in out["big"]
    assert out["n"] == "<unprintable int>"  # past Python's digit limit: never a crash
    assert TRUNCATED in out["nested"]
    many = bound_arguments({f"k{i}": "v" * (MAX_VALUE - 10) for i in range(100)})
    assert len(json.dumps(many)) < MAX_TOTAL + 2 * MAX_VALUE
    assert "more argument(s)" in many["…"]


def test_a_malformed_key_is_kept_as_escaped_evidence_not_as_a_key() -> None:
    assert event_key("k" * 16) == ("k" * 16, None)
    assert event_key("\x1b[2J" + "k" * 16) == (None, "\\x1b[2J" + "k" * 16)
    assert event_key("k" * 16 + "\n") == (None, "k" * 16 + "\\x0a")
    assert event_key(42) == (None, None)


async def _lines(data: bytes, limit: int) -> list[bytes | None]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return [line async for line in read_lines(reader, limit)]


async def test_stdio_framing_drops_an_over_long_line_whole_and_keeps_the_rest() -> None:
    data = b"short\n" + b"y" * 200_000 + b"\nnext\n" + b"z" * 11 + b"\nlast"
    assert await _lines(data, 10) == [b"short", None, b"next", None, b"last"]


def test_the_caps_the_process_tests_assume_are_the_gateways() -> None:
    from gateway.server.limits import MAX_SUBSCRIPTIONS_PER_SESSION, MAX_URI_LENGTH
    from tests.security import test_caps

    assert (test_caps.MAX_URI_LENGTH, test_caps.MAX_SUBSCRIPTIONS_PER_SESSION) == (
        MAX_URI_LENGTH,
        MAX_SUBSCRIPTIONS_PER_SESSION,
    )
