"""Token buckets: in-process and on Redis, rate parsing, headers and the 429 they lead to."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from tests.conftest import REDIS_URL
from tidings.http.problems import RateLimited
from tidings.infra.ratelimit import (
    Decision,
    InProcessRateLimiter,
    Rate,
    RateLimiter,
    RedisRateLimiter,
    enforce,
)
from tidings.infra.redis import redis_client

# -- Redis plumbing ------------------------------------------------------------------------


async def _connected_client() -> aioredis.Redis:
    client = redis_client(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        pytest.fail(
            f"Redis is required for the Redis rate limiter and is not reachable at {REDIS_URL}: "
            f"{exc!r}",
            pytrace=False,
        )
    return client


async def _purge(client: aioredis.Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
    if keys:
        await client.delete(*keys)


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:rl:"


@pytest.fixture
async def redis_clients(prefix: str) -> AsyncIterator[Callable[[], aioredis.Redis]]:
    """A factory of separate clients (each with its own pool); keys and clients are cleaned up."""
    first = await _connected_client()
    handed: list[aioredis.Redis] = []

    def another() -> aioredis.Redis:
        client = redis_client(REDIS_URL) if handed else first
        handed.append(client)
        return client

    yield another
    await _purge(first, prefix)
    for client in handed or [first]:
        await client.aclose()


@pytest.fixture(params=["in_process", "redis"])
async def limiter(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[RateLimiter]:
    if request.param == "in_process":
        yield InProcessRateLimiter()
        return
    client = await _connected_client()
    yield RedisRateLimiter(client, prefix=prefix)
    await _purge(client, prefix)
    await client.aclose()


# -- both implementations -------------------------------------------------------------------


async def test_exactly_capacity_hits_then_refused_with_retry_after(limiter: RateLimiter) -> None:
    rate = Rate(3, 2.0)  # one token every 0.667 s
    allowed = [await limiter.hit("k", rate) for _ in range(3)]
    assert [d.allowed for d in allowed] == [True, True, True]
    assert [d.remaining for d in allowed] == [2, 1, 0]
    assert all(d.limit == 3 and d.retry_after_seconds == 0 for d in allowed)
    refused = await limiter.hit("k", rate)
    assert not refused.allowed
    assert refused.remaining == 0
    assert 0.55 < refused.retry_after_seconds <= 2 / 3 + 1e-6
    assert 1.8 < refused.reset_seconds <= 2.0 + 1e-6
    assert refused.headers()["Retry-After"] == "1"
    assert refused.headers()["RateLimit-Reset"] == "2"


async def test_allowed_again_after_the_refill_time(limiter: RateLimiter) -> None:
    rate = Rate(2, 0.5)
    assert (await limiter.hit("k", rate)).allowed
    assert (await limiter.hit("k", rate)).allowed
    refused = await limiter.hit("k", rate)
    assert not refused.allowed
    await asyncio.sleep(refused.retry_after_seconds + 0.05)
    again = await limiter.hit("k", rate)
    assert again.allowed
    assert again.remaining == 0
    await asyncio.sleep(0.6)  # a whole period: the bucket is full again
    full = await limiter.hit("k", rate)
    assert full.allowed
    assert full.remaining == 1


async def test_partial_refill(limiter: RateLimiter) -> None:
    rate = Rate(4, 2.0)  # one token every 0.5 s
    for _ in range(4):
        assert (await limiter.hit("k", rate)).allowed
    await asyncio.sleep(1.15)  # ~2.3 tokens back
    first = await limiter.hit("k", rate)
    second = await limiter.hit("k", rate)
    third = await limiter.hit("k", rate)
    assert (first.allowed, second.allowed, third.allowed) == (True, True, False)
    assert (first.remaining, second.remaining) == (1, 0)
    # ~0.3 of a token is left, so the next one is ~0.35 s away (less with a slow sleep).
    assert 0.05 < third.retry_after_seconds < 0.5


async def test_cost_above_one_and_refusals_take_nothing(limiter: RateLimiter) -> None:
    rate = Rate(5, 60.0)
    first = await limiter.hit("k", rate, cost=3)
    assert first.allowed
    assert first.remaining == 2
    refused = await limiter.hit("k", rate, cost=3)
    assert not refused.allowed
    assert 11.0 < refused.retry_after_seconds <= 12.0 + 1e-6  # one token short, 12 s each
    rest = await limiter.hit("k", rate, cost=2)
    assert rest.allowed
    assert rest.remaining == 0


async def test_invalid_costs_raise(limiter: RateLimiter) -> None:
    with pytest.raises(ValueError, match="exceeds the bucket capacity"):
        await limiter.hit("k", Rate(3, 1.0), cost=4)
    with pytest.raises(ValueError, match="at least 1"):
        await limiter.hit("k", Rate(3, 1.0), cost=0)


async def test_keys_are_independent_and_reset_empties_one(limiter: RateLimiter) -> None:
    rate = Rate(1, 60.0)
    assert (await limiter.hit("a", rate)).allowed
    assert (await limiter.hit("b", rate)).allowed
    assert not (await limiter.hit("a", rate)).allowed
    await limiter.reset("a")
    assert (await limiter.hit("a", rate)).allowed
    assert not (await limiter.hit("b", rate)).allowed
    await limiter.reset("never-used")


async def test_concurrent_hits_allow_exactly_capacity(limiter: RateLimiter) -> None:
    rate = Rate(10, 60.0)
    decisions = await asyncio.gather(*(limiter.hit("hot", rate) for _ in range(50)))
    assert sum(d.allowed for d in decisions) == 10
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(10))


async def test_enforce_raises_a_429_with_the_ratelimit_headers(limiter: RateLimiter) -> None:
    rate = Rate(2, 10.0)
    decision = await enforce(limiter, "k", rate)
    assert decision.allowed
    assert decision.remaining == 1
    await enforce(limiter, "k", rate)
    with pytest.raises(RateLimited) as caught:
        await enforce(limiter, "k", rate)
    exc = caught.value
    assert exc.status == 429
    assert exc.code == "rate_limited"
    assert exc.headers["Retry-After"] == "5"
    assert exc.headers["RateLimit-Limit"] == "2"
    assert exc.headers["RateLimit-Remaining"] == "0"
    assert exc.headers["RateLimit-Reset"] == "10"


# -- Redis only ------------------------------------------------------------------------------


async def test_two_redis_limiters_on_two_clients_share_one_bucket(
    redis_clients: Callable[[], aioredis.Redis], prefix: str
) -> None:
    first = RedisRateLimiter(redis_clients(), prefix=prefix)
    second = RedisRateLimiter(redis_clients(), prefix=prefix)
    rate = Rate(3, 60.0)
    answers = [await (first if i % 2 == 0 else second).hit("shared", rate) for i in range(4)]
    assert [d.allowed for d in answers] == [True, True, True, False]
    assert [d.remaining for d in answers] == [2, 1, 0, 0]
    await first.reset("shared")
    assert (await second.hit("shared", rate)).remaining == 2


async def test_concurrent_hits_across_two_redis_clients(
    redis_clients: Callable[[], aioredis.Redis], prefix: str
) -> None:
    limiters = [RedisRateLimiter(redis_clients(), prefix=prefix) for _ in range(2)]
    rate = Rate(10, 60.0)
    decisions = await asyncio.gather(*(limiters[i % 2].hit("hot", rate) for i in range(50)))
    assert sum(d.allowed for d in decisions) == 10


async def test_redis_bucket_is_a_prefixed_hash_that_expires_within_a_period(
    redis_clients: Callable[[], aioredis.Redis], prefix: str
) -> None:
    client = redis_clients()
    limiter = RedisRateLimiter(client, prefix=prefix)
    await limiter.hit("user:1", Rate(10, 30.0))
    key = f"{prefix}user:1"
    assert await client.type(key) == b"hash"
    # redis-py annotates its sync and async hash commands as one union.
    fields = await client.hgetall(key)  # type: ignore[misc]
    assert set(fields) == {b"tokens", b"ts"}
    assert 25_000 < await client.pttl(key) <= 30_000
    await limiter.hit("user:2", Rate(2, 0.3))
    await asyncio.sleep(0.5)  # full again, so nothing is left behind
    assert not await client.exists(f"{prefix}user:2")


async def test_redis_limiter_survives_a_flushed_script_cache(
    redis_clients: Callable[[], aioredis.Redis], prefix: str
) -> None:
    client = redis_clients()
    limiter = RedisRateLimiter(client, prefix=prefix)
    rate = Rate(2, 60.0)
    assert (await limiter.hit("k", rate)).allowed
    await client.script_flush()  # a restarted or failed-over Redis forgets loaded scripts
    assert (await limiter.hit("k", rate)).remaining == 0


# -- in-process only -------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_in_process_refill_is_exact_on_its_clock() -> None:
    clock = FakeClock()
    limiter = InProcessRateLimiter(clock=clock)
    rate = Rate(4, 1.0)
    for _ in range(4):
        assert (await limiter.hit("k", rate)).allowed
    clock.now += 0.5
    assert (await limiter.hit("k", rate)).remaining == 1
    assert (await limiter.hit("k", rate)).remaining == 0
    refused = await limiter.hit("k", rate)
    assert not refused.allowed
    assert refused.retry_after_seconds == pytest.approx(0.25)
    assert refused.reset_seconds == pytest.approx(1.0)
    clock.now += 0.25
    allowed = await limiter.hit("k", rate)
    assert allowed.allowed
    assert allowed.reset_seconds == pytest.approx(1.0)
    clock.now -= 10  # a clock going backwards refills nothing rather than crashing
    assert not (await limiter.hit("k", rate)).allowed


async def test_in_process_memory_is_bounded_by_max_keys() -> None:
    clock = FakeClock()
    limiter = InProcessRateLimiter(max_keys=100, clock=clock)
    rate = Rate(3, 60.0)
    for _ in range(3):
        await limiter.hit("hot", rate)
    for index in range(10_000):
        await limiter.hit(f"ip:{index}", rate)
        assert not (await limiter.hit("hot", rate)).allowed  # in use, so never evicted
        assert len(limiter) <= 100
    assert len(limiter) == 100


async def test_in_process_full_buckets_are_swept() -> None:
    clock = FakeClock()
    limiter = InProcessRateLimiter(clock=clock)
    rate = Rate(5, 1.0)
    for index in range(1000):
        await limiter.hit(f"ip:{index}", rate)
    assert len(limiter) == 1000
    clock.now += 1.0  # every bucket has refilled: keeping them would change nothing
    await limiter.hit("late", rate)
    assert len(limiter) == 1


# -- Rate and Decision ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "capacity", "period"),
    [
        ("10/minute", 10, 60.0),
        ("5/30s", 5, 30.0),
        ("100/hour", 100, 3600.0),
        ("20/second", 20, 1.0),
        ("3/2s", 3, 2.0),
        ("1/day", 1, 86400.0),
        ("7 / 2 Minutes", 7, 120.0),
        ("4/0.5s", 4, 0.5),
        ("60/min", 60, 60.0),
        ("2/hrs", 2, 3600.0),
        ("9/30 seconds", 9, 30.0),
    ],
)
def test_rate_parse(text: str, capacity: int, period: float) -> None:
    assert Rate.parse(text) == Rate(capacity, period)


@pytest.mark.parametrize(
    "text",
    [
        *("", "10", "minute", "10/", "/minute", "ten/minute", "1.5/s", "-1/s", "10/fortnight"),
        *("5/100ms", "10/s/s", "10/ss", "0/minute", "10/0s", "10 per minute"),
    ],
)
def test_rate_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid rate"):
        Rate.parse(text)


def test_rate_rejects_impossible_values() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Rate(0, 1.0)
    with pytest.raises(ValueError, match="period"):
        Rate(1, 0.0)
    with pytest.raises(ValueError, match="period"):
        Rate(1, math.inf)


def test_headers_when_allowed_and_when_refused() -> None:
    allowed = Decision(
        allowed=True, limit=10, remaining=7, reset_seconds=18.2, retry_after_seconds=0.0
    )
    assert allowed.headers() == {
        "RateLimit-Limit": "10",
        "RateLimit-Remaining": "7",
        "RateLimit-Reset": "19",
    }
    refused = Decision(
        allowed=False, limit=10, remaining=0, reset_seconds=60.0, retry_after_seconds=5.2
    )
    assert refused.headers() == {
        "RateLimit-Limit": "10",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "60",
        "Retry-After": "6",
    }
    # Never "Retry-After: 0", and float noise does not add a second.
    soon = Decision(
        allowed=False, limit=1, remaining=0, reset_seconds=2.0000000001, retry_after_seconds=0.01
    )
    assert soon.headers()["Retry-After"] == "1"
    assert soon.headers()["RateLimit-Reset"] == "2"
