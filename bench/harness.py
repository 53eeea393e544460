"""What every queue under test shares: a no-op job that records when it ran, and the runs.

A *system* is one queue with one worker (Tidings on a profile, SAQ, arq). The harness measures
it in the same way for all:

* throughput: N jobs enqueued individually by a few concurrent enqueuers while the worker runs;
  jobs/s = N / (first enqueue → the store reports the last job complete);
* latency: jobs enqueued at a fixed rate (open loop); enqueue-to-start = handler start - the
  job's intended enqueue time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from bench.machine import CpuMeter
from bench.pacing import run_paced
from bench.stats import Latency


class Recorder:
    """Shared by the no-op handlers of every system: when did job `i` start, how many ran."""

    def __init__(self) -> None:
        self.started: dict[int, float] = {}
        self.ran = 0
        self._expected = 0
        self._all_ran = asyncio.Event()

    def expect(self, count: int) -> None:
        self.started.clear()
        self.ran = 0
        self._expected = count
        self._all_ran.clear()

    def job_ran(self, index: int) -> None:
        self.started.setdefault(index, time.perf_counter())
        self.ran += 1
        if self.ran >= self._expected:
            self._all_ran.set()

    async def wait(self) -> None:
        await self._all_ran.wait()


class QueueSystem(Protocol):
    name: str
    recorder: Recorder

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def enqueue(self, index: int) -> None: ...

    async def wait_all_complete(self) -> None:
        """Return once the store itself records every job enqueued so far as complete."""
        ...


async def poll_until(check: Callable[[], Awaitable[bool]], interval: float = 0.005) -> None:
    # Polling is the point: the condition lives in an external store, with nothing to await.
    while not await check():  # noqa: ASYNC110
        await asyncio.sleep(interval)


async def all_done(system: QueueSystem, budget: float) -> bool:
    """Every job ran and the store records it complete, within `budget` seconds."""
    try:
        async with asyncio.timeout(budget):
            await system.recorder.wait()
            await system.wait_all_complete()
    except TimeoutError:
        return False
    return True


async def enqueue_all(system: QueueSystem, indices: Sequence[int], enqueuers: int) -> None:
    """Enqueue each index with its own call, from `enqueuers` concurrent tasks."""
    pending = iter(indices)

    async def enqueuer() -> None:
        for index in pending:
            await system.enqueue(index)

    await asyncio.gather(*(enqueuer() for _ in range(enqueuers)))


async def measure_throughput(
    system: QueueSystem, *, jobs: int, enqueuers: int, base: int, budget: float
) -> dict[str, Any]:
    recorder = system.recorder
    recorder.expect(jobs)
    meter = CpuMeter()
    meter.start()
    started = time.perf_counter()
    await enqueue_all(system, range(base, base + jobs), enqueuers)
    enqueued = time.perf_counter()
    complete = await all_done(system, budget)
    finished = time.perf_counter()
    cpu = meter.stop()
    elapsed = finished - started
    return {
        "jobs": jobs,
        "enqueuers": enqueuers,
        "ran": recorder.ran,
        "complete": complete,
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(jobs / elapsed, 1) if complete else 0.0,
        "enqueue_seconds": round(enqueued - started, 3),
        "enqueue_per_s": round(jobs / (enqueued - started), 1),
        **cpu,
    }


async def measure_latency(
    system: QueueSystem, *, rate: float, seconds: float, producers: int, base: int, budget: float
) -> dict[str, Any]:
    recorder = system.recorder
    total = max(1, round(rate * seconds))
    recorder.expect(total)
    returned: dict[int, float] = {}

    async def send(index: int, _intended: float) -> None:
        await system.enqueue(base + index)
        returned[index] = time.perf_counter()

    meter = CpuMeter()
    meter.start()
    paced = await run_paced(rate, seconds, producers, send)
    complete = await all_done(system, budget)
    cpu = meter.stop()
    started = recorder.started
    from_intended = [
        started[base + i] - at for i, at in paced.intended.items() if base + i in started
    ]
    from_return = [started[base + i] - at for i, at in returned.items() if base + i in started]
    return {
        "offered_per_s": rate,
        "jobs": total,
        "ran": recorder.ran,
        "complete": complete,
        "achieved_enqueue_per_s": round(paced.achieved_rate, 1),
        "failures": paced.failures,
        "enqueue_to_start_ms": Latency.of_seconds(from_intended).as_dict(),
        "enqueue_returned_to_start_ms": Latency.of_seconds(from_return).as_dict(),
        "enqueue_call_ms": Latency.of_seconds(list(paced.completion.values())).as_dict(),
        **cpu,
    }
