"""Open-loop load: sends happen at their intended times, whatever the system under test does.

A fixed schedule (send i is due at ``start + i / rate``) is shared by a few producer tasks; a
producer takes the next due send, sleeps until its time if it is early, and sends at once if it
is late. A slow send therefore never postpones the schedule, and every latency is measured from
the *intended* time (no coordinated omission). If the producers fall behind, the achieved rate
drops below the offered one, which the caller reports.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

Send = Callable[[int, float], Awaitable[None]]


@dataclass
class PacedRun:
    offered_rate: float
    started: float
    ended: float = 0.0
    sent: int = 0
    failures: int = 0
    first_error: str | None = None
    # Seconds from a send's intended time to its completion, by send index.
    completion: dict[int, float] = field(default_factory=dict)
    # Intended time of each send, by index (perf_counter clock).
    intended: dict[int, float] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.ended - self.started

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.duration if self.duration > 0 else 0.0


class _Schedule:
    def __init__(self, rate: float, total: int, start: float) -> None:
        self._interval = 1.0 / rate
        self._total = total
        self._start = start
        self._next = 0

    def take(self) -> tuple[int, float] | None:
        if self._next >= self._total:
            return None
        index = self._next
        self._next += 1
        return index, self._start + index * self._interval


async def run_paced(rate: float, duration: float, producers: int, send: Send) -> PacedRun:
    """Offer `rate` sends per second for `duration` seconds through `producers` tasks."""
    start = time.perf_counter() + 0.05  # let every producer reach its first sleep
    run = PacedRun(offered_rate=rate, started=start)
    schedule = _Schedule(rate, max(1, round(rate * duration)), start)

    async def producer() -> None:
        while (item := schedule.take()) is not None:
            index, intended = item
            run.intended[index] = intended
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await send(index, intended)
            except Exception as exc:
                run.failures += 1
                run.first_error = run.first_error or f"{type(exc).__name__}: {exc}"
                continue
            run.completion[index] = time.perf_counter() - intended
            run.sent += 1

    await asyncio.gather(*(producer() for _ in range(producers)))
    run.ended = time.perf_counter()
    return run
