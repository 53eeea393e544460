"""Outbox throughput: committed events/s vs dispatched events/s, and commit-to-dispatch latency.

Producer tasks commit one event per transaction (``events.service.emit`` inside
``db.transaction()``) on a handful of streams at a fixed offered rate (open loop), while the
runtime's dispatcher hands batches to a live consumer that notes when it saw each event id. The
offered rate steps up until a step is no longer sustained.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from bench.machine import CpuMeter, settle
from bench.pacing import run_paced
from bench.profiles import Stores
from bench.stats import Latency, slope_per_second
from tidings.events.dispatcher import DispatchedEvent
from tidings.events.service import emit
from tidings.runtime import Runtime

EVENT_TYPE = "bench.message"
TARGET_P99_MS = 50.0
# A step is "sustained" when the producers achieved this share of the offered rate...
MIN_ACHIEVED_SHARE = 0.95
# ...and the mean outbox lag of the last third did not exceed the first third's by this much.
LAG_GROWTH_FACTOR = 1.25
LAG_GROWTH_SLACK_S = 0.010


@dataclass(frozen=True)
class OutboxParams:
    rates: tuple[int, ...]
    step_seconds: float
    warmup_seconds: float
    producers: int = 16
    streams: int = 8
    drain_timeout: float = 15.0
    refine: bool = True


class RecordingConsumer:
    """A live consumer that notes the first time it saw each event id."""

    name = "bench-recorder"

    def __init__(self) -> None:
        self.seen: dict[uuid.UUID, float] = {}
        self.batches = 0

    async def handle(self, events: Sequence[DispatchedEvent]) -> None:
        now = time.perf_counter()
        for event in events:
            self.seen.setdefault(event.id, now)
        self.batches += 1


def _payload(index: int) -> dict[str, Any]:
    # About 200 bytes of JSON, like a chat message event.
    return {
        "conversation_id": f"conv-{index % 97}",
        "author_id": f"user-{index % 13}",
        "text": "lorem ipsum dolor sit amet " * 4,
        "n": index,
    }


class _LagSampler:
    """Every `interval` seconds, the age of the oldest committed but not yet dispatched event:
    the outbox lag a production gauge would show, sampled while the producers run."""

    def __init__(self, seen: dict[uuid.UUID, float], interval: float = 0.1) -> None:
        self.committed: list[tuple[float, uuid.UUID]] = []  # in the order commits returned
        self.samples: list[tuple[float, float]] = []
        self._seen = seen
        self._interval = interval
        self._oldest = 0

    def age(self, now: float) -> float:
        while self._oldest < len(self.committed) and self.committed[self._oldest][1] in self._seen:
            self._oldest += 1
        if self._oldest == len(self.committed):
            return 0.0
        return now - self.committed[self._oldest][0]

    async def run(self) -> None:
        while True:
            now = time.perf_counter()
            self.samples.append((now, self.age(now)))
            await asyncio.sleep(self._interval)


async def _step(
    runtime: Runtime, consumer: RecordingConsumer, rate: float, params: OutboxParams
) -> dict[str, Any]:
    committed: dict[uuid.UUID, float] = {}
    batches_before = consumer.batches
    sampler = _LagSampler(consumer.seen)

    async def send(index: int, _intended: float) -> None:
        async with runtime.db.transaction() as session:
            event = await emit(
                session,
                EVENT_TYPE,
                stream_key=f"bench-stream-{index % params.streams}",
                payload=_payload(index),
            )
        now = time.perf_counter()
        committed[event.id] = now
        sampler.committed.append((now, event.id))

    meter = CpuMeter()
    meter.start()
    sampling = asyncio.create_task(sampler.run())
    try:
        paced = await run_paced(rate, params.step_seconds, params.producers, send)
    finally:
        sampling.cancel()
    cpu = meter.stop()
    deadline = time.perf_counter() + params.drain_timeout
    while time.perf_counter() < deadline:
        if all(event_id in consumer.seen for event_id in committed):
            break
        await asyncio.sleep(0.01)
    drained_at = time.perf_counter()

    seen = consumer.seen
    lags = [(at - paced.started, seen[i] - at) for i, at in committed.items() if i in seen]
    third = paced.duration / 3
    ages = [(at - paced.started, age) for at, age in sampler.samples if at >= paced.started]
    first_ages = [age for at, age in ages if at < third]
    last_ages = [age for at, age in ages if at >= 2 * third]
    first_lag = statistics.fmean(first_ages) if first_ages else math.nan
    last_lag = statistics.fmean(last_ages) if last_ages else math.nan
    growing = bool(first_ages and last_ages) and (
        last_lag > LAG_GROWTH_FACTOR * first_lag + LAG_GROWTH_SLACK_S
    )
    undispatched = sum(1 for event_id in committed if event_id not in seen)
    in_window = sum(1 for i in committed if i in seen and seen[i] <= paced.ended)
    latency = Latency.of_seconds([lag for _, lag in lags])
    achieved = paced.achieved_rate
    limits = []
    if achieved < MIN_ACHIEVED_SHARE * rate:
        limits.append("commit-bound: producers could not commit at the offered rate")
    if growing:
        limits.append("dispatch lag grew")
    if undispatched:
        limits.append(f"{undispatched} events undispatched after {params.drain_timeout} s")
    if paced.failures:
        limits.append(f"{paced.failures} failed transactions")
    sustained = not limits
    batches = consumer.batches - batches_before
    return {
        "offered_per_s": rate,
        "seconds": round(paced.duration, 3),
        "committed": len(committed),
        "committed_per_s": round(achieved, 1),
        "dispatched_per_s": round(in_window / paced.duration, 1),
        "failures": paced.failures,
        "first_error": paced.first_error,
        "undispatched_after_drain": undispatched,
        "drain_seconds": round(drained_at - paced.ended, 3),
        "commit_to_dispatch_ms": latency.as_dict(),
        # The sampled outbox lag (age of the oldest undispatched event) while producing.
        "lag_first_third_ms": _ms(first_lag),
        "lag_last_third_ms": _ms(last_lag),
        "lag_max_ms": _ms(max((age for _, age in ages), default=math.nan)),
        "lag_slope_ms_per_s": round(slope_per_second(ages) * 1000, 3),
        "lag_growing": growing,
        "intended_to_commit_ms": Latency.of_seconds(list(paced.completion.values())).as_dict(),
        "dispatch_batches": batches,
        "mean_batch_size": round(len(lags) / batches, 1) if batches else None,
        "sustained": sustained,
        "limited_by": limits,
        "meets_p99_target": sustained and latency.p99 <= TARGET_P99_MS,
        **cpu,
    }


async def run_outbox(stores: Stores, profile: str, params: OutboxParams) -> dict[str, Any]:
    deployment = await stores.fresh(profile)
    runtime = Runtime(deployment.settings(), role="serve")
    consumer = RecordingConsumer()
    runtime.dispatcher.add_live(consumer)
    await runtime.start()
    steps: list[dict[str, Any]] = []
    try:
        await _warm_up(runtime, consumer, params)
        for rate in params.rates:
            await settle(1.0)
            step = await _step(runtime, consumer, rate, params)
            steps.append(step)
            print(f"  outbox {profile:8} {_step_line(step)}", flush=True)
            if not step["sustained"]:
                break
        sustained_rates = [s["offered_per_s"] for s in steps if s["sustained"]]
        if params.refine and steps and not steps[-1]["sustained"] and sustained_rates:
            # One more step half-way between the last sustained rate and the first failed one.
            middle = round((max(sustained_rates) + steps[-1]["offered_per_s"]) / 2 / 25) * 25
            if max(sustained_rates) < middle < steps[-1]["offered_per_s"]:
                await settle(1.0)
                step = await _step(runtime, consumer, middle, params)
                steps.append(step)
                print(f"  outbox {profile:8} {_step_line(step)}", flush=True)
    finally:
        await runtime.stop()
    steps.sort(key=lambda step: step["offered_per_s"])
    sustained = [step for step in steps if step["sustained"]]
    meeting = [step for step in steps if step["meets_p99_target"]]
    return {
        "profile": profile,
        "producers": params.producers,
        "streams": params.streams,
        "step_seconds": params.step_seconds,
        "worker_in_process": runtime.worker is not None,
        "steps": steps,
        "max_sustained_per_s": max((s["offered_per_s"] for s in sustained), default=0),
        "lag_grew_at_any_step": any(step["lag_growing"] for step in steps),
        "max_meeting_p99_target_per_s": max((s["offered_per_s"] for s in meeting), default=0),
    }


async def _warm_up(runtime: Runtime, consumer: RecordingConsumer, params: OutboxParams) -> None:
    """Open every pool connection and prepare statements, then let the dispatcher catch up."""
    await _step(runtime, consumer, 200, replace(params, step_seconds=params.warmup_seconds))
    await _step(runtime, consumer, 4000, replace(params, step_seconds=0.5))


def _ms(seconds: float) -> float | None:
    return round(seconds * 1000, 3) if math.isfinite(seconds) else None


def _step_line(step: dict[str, Any]) -> str:
    latency = step["commit_to_dispatch_ms"]
    return (
        f"offered {step['offered_per_s']:>6}/s  committed {step['committed_per_s']:>8}/s  "
        f"dispatched {step['dispatched_per_s']:>8}/s  p50 {latency['p50']} ms  "
        f"p99 {latency['p99']} ms  max {latency['max']} ms  "
        f"lag {step['lag_first_third_ms']}→{step['lag_last_third_ms']} ms  "
        f"cpu {step['bench_process_cpu_percent']}% (others {step['other_cpu_percent']}%)  "
        f"{'sustained' if step['sustained'] else 'NOT sustained: ' + '; '.join(step['limited_by'])}"
    )
