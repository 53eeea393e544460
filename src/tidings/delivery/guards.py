"""Per-connector circuit breakers, concurrency limits and send rates.

Breakers live in each worker process: a provider that keeps failing is skipped by that worker
for `open_seconds`, after which one trial delivery (half-open) decides whether it closes again.
Rates go through the shared rate limiter (Redis in the scaled profile), so a connector's rate
(Telegram's 30 messages/s) holds across every worker; concurrency is per process.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum

from tidings.infra.ratelimit import Rate, RateLimiter


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class _Circuit:
    failures: int = 0
    opened_at: float | None = None
    trial_running: bool = False


@dataclass
class CircuitBreakers:
    failure_threshold: int
    open_seconds: float
    _circuits: dict[uuid.UUID, _Circuit] = field(default_factory=dict)

    def state(self, connector_id: uuid.UUID) -> CircuitState:
        circuit = self._circuits.get(connector_id)
        if circuit is None or circuit.opened_at is None:
            return CircuitState.CLOSED
        if time.monotonic() - circuit.opened_at < self.open_seconds:
            return CircuitState.OPEN
        return CircuitState.HALF_OPEN

    def allow(self, connector_id: uuid.UUID) -> bool:
        """May a delivery go to this connector now? A half-open circuit lets one through."""
        state = self.state(connector_id)
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.OPEN:
            return False
        circuit = self._circuits[connector_id]
        if circuit.trial_running:
            return False
        circuit.trial_running = True
        return True

    def seconds_until_trial(self, connector_id: uuid.UUID) -> float:
        circuit = self._circuits.get(connector_id)
        if circuit is None or circuit.opened_at is None:
            return 0.0
        return max(0.0, self.open_seconds - (time.monotonic() - circuit.opened_at))

    def succeeded(self, connector_id: uuid.UUID) -> None:
        self._circuits.pop(connector_id, None)

    def failed(self, connector_id: uuid.UUID) -> None:
        circuit = self._circuits.setdefault(connector_id, _Circuit())
        circuit.failures += 1
        if circuit.trial_running or circuit.failures >= self.failure_threshold:
            circuit.opened_at = time.monotonic()  # open, or open again after a failed trial
        circuit.trial_running = False

    def release_trial(self, connector_id: uuid.UUID) -> None:
        """A trial that ended without a verdict (e.g. a permanent per-message error)."""
        circuit = self._circuits.get(connector_id)
        if circuit is not None:
            circuit.trial_running = False


def rate_of(per_second: float) -> Rate:
    """A token bucket allowing `per_second` on average, bursting to at most one second's worth."""
    if per_second >= 1:
        return Rate(int(per_second), 1.0)
    return Rate(1, 1.0 / per_second)


class ConnectorThrottle:
    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter
        self._semaphores: dict[uuid.UUID, tuple[int, asyncio.Semaphore]] = {}

    def _semaphore(self, connector_id: uuid.UUID, limit: int) -> asyncio.Semaphore:
        current = self._semaphores.get(connector_id)
        if current is None or current[0] != limit:
            current = (limit, asyncio.Semaphore(limit))
            self._semaphores[connector_id] = current
        return current[1]

    @asynccontextmanager
    async def slot(
        self,
        connector_id: uuid.UUID,
        *,
        max_concurrency: int | None,
        rate_per_second: float | None,
    ) -> AsyncIterator[None]:
        if rate_per_second:
            rate = rate_of(rate_per_second)
            while True:
                decision = await self._limiter.hit(f"connector:{connector_id}", rate)
                if decision.allowed:
                    break
                await asyncio.sleep(max(decision.retry_after_seconds, 0.001))
        if not max_concurrency:
            yield
            return
        async with self._semaphore(connector_id, max_concurrency):
            yield
