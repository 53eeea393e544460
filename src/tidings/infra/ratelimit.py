"""Token-bucket rate limiting: per API key, per user, per IP, and stricter on the auth endpoints.

A bucket holds up to `capacity` tokens and refills evenly over `period_seconds`; a hit takes
`cost` tokens or, when there are not enough, is refused and takes nothing. Embedded: buckets
live in this process. Scaled: one Redis hash per bucket, updated by one Lua script on the
server's clock, so every process on every machine draws from the same bucket.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis

from tidings.http.problems import RateLimited

# Float refill arithmetic can leave 0.9999999 where a whole token is due.
_EPSILON = 1e-9

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$", re.IGNORECASE | re.ASCII)


def _unit_seconds(name: str) -> float | None:
    name = name.lower()
    if name in _UNITS:
        return _UNITS[name]
    # Plurals of the words only: "ms" must not read as minutes.
    if name.endswith("s") and len(name) > 2:
        return _UNITS.get(name[:-1])
    return None


@dataclass(frozen=True)
class Rate:
    """`capacity` requests, refilled evenly over `period_seconds`."""

    capacity: int
    period_seconds: float

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"rate capacity must be at least 1, not {self.capacity}")
        if not (self.period_seconds > 0 and math.isfinite(self.period_seconds)):
            raise ValueError(
                f"rate period must be a positive number of seconds, not {self.period_seconds}"
            )

    @classmethod
    def parse(cls, text: str) -> Rate:
        match = _RATE.match(text)
        unit = _unit_seconds(match.group(3)) if match else None
        if match is None or unit is None:
            raise ValueError(
                f"invalid rate {text!r}: expected '<count>/<period>' such as '10/minute', "
                "'5/30s', '100/hour' or '20/second'"
            )
        count = match.group(2)
        try:
            return cls(int(match.group(1)), (float(count) if count else 1.0) * unit)
        except ValueError as exc:
            raise ValueError(f"invalid rate {text!r}: {exc}") from None

    @property
    def seconds_per_token(self) -> float:
        return self.period_seconds / self.capacity

    def __str__(self) -> str:
        return f"{self.capacity}/{self.period_seconds:g}s"


def _ceil(seconds: float) -> int:
    # Round first so 2.0000000001 s of float noise is announced as 2, not 3.
    return math.ceil(round(seconds, 6))


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: float
    retry_after_seconds: float

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(_ceil(self.reset_seconds)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, _ceil(self.retry_after_seconds)))
        return headers


def _check_cost(rate: Rate, cost: int) -> None:
    # Such a hit could never be allowed; refusing it forever with no useful Retry-After
    # would hide a configuration mistake.
    if cost < 1:
        raise ValueError(f"rate-limit cost must be at least 1, not {cost}")
    if cost > rate.capacity:
        raise ValueError(f"rate-limit cost {cost} exceeds the bucket capacity {rate.capacity}")


def _decide(rate: Rate, cost: int, allowed: bool, tokens: float) -> Decision:
    """The decision once `tokens` are left in the bucket (after the hit, when allowed)."""
    tokens = min(float(rate.capacity), max(0.0, tokens))
    per_token = rate.seconds_per_token
    return Decision(
        allowed=allowed,
        limit=rate.capacity,
        remaining=math.floor(tokens + _EPSILON) if allowed else 0,
        reset_seconds=(rate.capacity - tokens) * per_token,
        retry_after_seconds=0.0 if allowed else max(0.0, cost - tokens) * per_token,
    )


class RateLimiter(Protocol):
    async def hit(self, key: str, rate: Rate, cost: int = 1) -> Decision: ...

    async def reset(self, key: str) -> None: ...


async def enforce(limiter: RateLimiter, key: str, rate: Rate, cost: int = 1) -> Decision:
    """Take `cost` tokens from `key`'s bucket or raise a 429 carrying the RateLimit-* headers."""
    decision = await limiter.hit(key, rate, cost)
    if not decision.allowed:
        exc = RateLimited(retry_after=_ceil(decision.retry_after_seconds))
        exc.headers.update(decision.headers())
        raise exc
    return decision


@dataclass
class _Bucket:
    tokens: float
    updated: float
    full_at: float


class InProcessRateLimiter:
    """Buckets in this process (embedded profile), on the monotonic clock.

    Memory is bounded: a bucket that has refilled completely is the same as no bucket, so
    full ones are dropped as they come up in least-recently-used order, and beyond `max_keys`
    the least recently used bucket is dropped even if not yet full.
    """

    def __init__(
        self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    async def hit(self, key: str, rate: Rate, cost: int = 1) -> Decision:
        _check_cost(rate, cost)
        # No await below: each hit is atomic on the event loop.
        now = self._clock()
        bucket = self._buckets.get(key)
        tokens = float(rate.capacity)
        if bucket is not None:
            elapsed = max(0.0, now - bucket.updated)
            tokens = min(tokens, bucket.tokens + elapsed / rate.seconds_per_token)
        allowed = tokens + _EPSILON >= cost
        if allowed:
            tokens = max(0.0, tokens - cost)
            full_at = now + (rate.capacity - tokens) * rate.seconds_per_token
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(tokens, now, full_at)
            else:
                bucket.tokens, bucket.updated, bucket.full_at = tokens, now, full_at
        if bucket is not None:
            self._buckets.move_to_end(key)
        self._evict(now)
        return _decide(rate, cost, allowed, tokens)

    async def reset(self, key: str) -> None:
        self._buckets.pop(key, None)

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            oldest = next(iter(buckets.values()))
            if oldest.full_at > now and len(buckets) <= self._max_keys:
                break
            buckets.popitem(last=False)


# KEYS[1]: the bucket. ARGV: capacity, period in microseconds, cost.
# Returns {allowed (0/1), tokens left as a string} (Lua numbers would come back truncated).
# Time is the Redis server's, in integer microseconds (exact in a double until year 2255).
_HIT_SCRIPT = """
local capacity = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = capacity
if state[1] and state[2] then
  local elapsed = math.max(0, now - tonumber(state[2]))
  tokens = math.min(capacity, tonumber(state[1]) + elapsed * capacity / period)
end
if tokens + 1e-9 < cost then
  return {0, tostring(tokens)}
end
tokens = math.max(0, tokens - cost)
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
-- A bucket is full again within one period, and a missing bucket is a full one.
redis.call('PEXPIRE', KEYS[1], math.ceil(period / 1000))
return {1, tostring(tokens)}
"""


class RedisRateLimiter:
    """Buckets shared by every process through Redis (scaled profile)."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "tidings:rl:") -> None:
        self._client = client
        self._prefix = prefix
        self._script = client.register_script(_HIT_SCRIPT)

    async def hit(self, key: str, rate: Rate, cost: int = 1) -> Decision:
        _check_cost(rate, cost)
        period_us = max(1, round(rate.period_seconds * 1_000_000))
        allowed, tokens = await self._script(
            keys=[self._prefix + key], args=[rate.capacity, period_us, cost]
        )
        text = tokens.decode() if isinstance(tokens, bytes) else str(tokens)
        return _decide(rate, cost, bool(int(allowed)), float(text))

    async def reset(self, key: str) -> None:
        await self._client.delete(self._prefix + key)
