"""Outbox throughput: committed events/s vs dispatched events/s, and commit-to-dispatch latency.

Producers commit one event per transaction (``events.service.emit`` inside ``db.transaction()``)
on a handful of streams at a fixed offered rate (open loop), while a dispatcher hands batches to
a live consumer that notes when it saw each event id. The offered rate steps up until a step is
no longer sustained.

Two ways to place the producers (``mode``):

* ``processes``: as in a scaled deployment. Producer processes (each its own event loop and
  `Runtime`, like API processes) commit the events; the bench process runs only the
  dispatcher's `Runtime` (role ``worker``, holding the dispatcher lease) and the recording
  consumer. Commit and receipt times are taken with ``time.time()``, comparable across
  processes; the producers report their commits (id, time) at the end of each step.
* ``inline``: everything in the bench process, one event loop (the embedded deployment: one
  process by design). Times are ``time.perf_counter()``.

``auto`` (the default) picks ``inline`` for embedded and ``processes`` for scaled.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

from bench.machine import CpuMeter, settle
from bench.pacing import run_paced
from bench.profiles import Deployment, Stores
from bench.stats import Latency, slope_per_second
from tidings.events.dispatcher import DispatchedEvent
from tidings.events.service import NewEvent, emit, emit_many
from tidings.runtime import Runtime

EVENT_TYPE = "bench.message"
TARGET_P99_MS = 50.0
MODES = ("auto", "inline", "processes")
# A step is "sustained" when the producers achieved this share of the offered rate...
MIN_ACHIEVED_SHARE = 0.95
# ...and the mean outbox lag of the last third did not exceed the first third's by this much.
LAG_GROWTH_FACTOR = 1.25
LAG_GROWTH_SLACK_S = 0.010
LAG_SAMPLE_INTERVAL_S = 0.1


@dataclass(frozen=True)
class OutboxParams:
    rates: tuple[int, ...]
    step_seconds: float
    warmup_seconds: float
    producers: int = 16
    streams: int = 8
    drain_timeout: float = 15.0
    refine: bool = True
    mode: str = "auto"
    # Producer processes in `processes` mode; the `producers` tasks are spread over them.
    producer_processes: int = 4

    def mode_for(self, profile: str) -> str:
        if self.mode != "auto":
            return self.mode
        return "inline" if profile == "embedded" else "processes"


class RecordingConsumer:
    """A live consumer that notes the first time it saw each event id."""

    name = "bench-recorder"

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.seen: dict[uuid.UUID, float] = {}
        self.batches = 0
        self._clock = clock

    async def handle(self, events: Sequence[DispatchedEvent]) -> None:
        now = self._clock()
        seen = self.seen
        for event in events:
            seen.setdefault(event.id, now)
        self.batches += 1


def _payload(index: int) -> dict[str, Any]:
    # About 200 bytes of JSON, like a chat message event.
    return {
        "conversation_id": f"conv-{index % 97}",
        "author_id": f"user-{index % 13}",
        "text": "lorem ipsum dolor sit amet " * 4,
        "n": index,
    }


@dataclass
class _Produced:
    """What the producers of one step did, on one clock (perf_counter inline, time() else)."""

    offered: float
    started: float
    ended: float
    committed: list[tuple[uuid.UUID, float]] = field(default_factory=list)  # (id, commit time)
    sent: int = 0
    failures: int = 0
    first_error: str | None = None
    intended_to_commit: list[float] = field(default_factory=list)
    producer_cpu_seconds: float | None = None

    @property
    def duration(self) -> float:
        return self.ended - self.started


def _lag_samples(
    committed: list[tuple[uuid.UUID, float]], seen: dict[uuid.UUID, float], start: float, end: float
) -> list[tuple[float, float]]:
    """Every 100 ms from `start` to `end`, the age of the oldest committed but not yet
    dispatched event: the outbox lag a production gauge would show (computed afterwards from
    the commit and receipt times, so the measurement costs nothing while the step runs)."""
    order = sorted(committed, key=lambda item: item[1])
    samples: list[tuple[float, float]] = []
    oldest = 0
    moment = start
    while moment <= end:
        while oldest < len(order) and order[oldest][1] <= moment:
            seen_at = seen.get(order[oldest][0])
            if seen_at is None or seen_at > moment:
                break
            oldest += 1
        if oldest < len(order) and order[oldest][1] <= moment:
            samples.append((moment, moment - order[oldest][1]))
        else:
            samples.append((moment, 0.0))
        moment += LAG_SAMPLE_INTERVAL_S
    return samples


async def _drain(
    consumer: RecordingConsumer, committed: list[tuple[uuid.UUID, float]], within: float
) -> None:
    deadline = time.perf_counter() + within
    pending = [event_id for event_id, _ in committed]
    while time.perf_counter() < deadline:
        pending = [event_id for event_id in pending if event_id not in consumer.seen]
        if not pending:
            return
        await asyncio.sleep(0.01)


def _summarise(
    produced: _Produced,
    consumer: RecordingConsumer,
    batches: int,
    drain_seconds: float,
    cpu: dict[str, float],
    params: OutboxParams,
) -> dict[str, Any]:
    rate = produced.offered
    seen = consumer.seen
    committed = produced.committed
    lags = [seen[i] - at for i, at in committed if i in seen]
    ages = [
        (at - produced.started, age)
        for at, age in _lag_samples(committed, seen, produced.started, produced.ended)
    ]
    third = produced.duration / 3
    first_ages = [age for at, age in ages if at < third]
    last_ages = [age for at, age in ages if at >= 2 * third]
    first_lag = statistics.fmean(first_ages) if first_ages else math.nan
    last_lag = statistics.fmean(last_ages) if last_ages else math.nan
    growing = bool(first_ages and last_ages) and (
        last_lag > LAG_GROWTH_FACTOR * first_lag + LAG_GROWTH_SLACK_S
    )
    undispatched = sum(1 for event_id, _ in committed if event_id not in seen)
    in_window = sum(1 for i, _ in committed if i in seen and seen[i] <= produced.ended)
    latency = Latency.of_seconds(lags)
    achieved = produced.sent / produced.duration if produced.duration > 0 else 0.0
    limits = []
    if achieved < MIN_ACHIEVED_SHARE * rate:
        limits.append("commit-bound: producers could not commit at the offered rate")
    if growing:
        limits.append("dispatch lag grew")
    if undispatched:
        limits.append(f"{undispatched} events undispatched after {params.drain_timeout} s")
    if produced.failures:
        limits.append(f"{produced.failures} failed transactions")
    sustained = not limits
    dispatched = len(lags)
    bench_cpu = cpu["bench_process_cpu_percent"]
    return {
        "offered_per_s": rate,
        "seconds": round(produced.duration, 3),
        "committed": len(committed),
        "committed_per_s": round(achieved, 1),
        "dispatched_per_s": round(in_window / produced.duration, 1),
        "failures": produced.failures,
        "first_error": produced.first_error,
        "undispatched_after_drain": undispatched,
        "drain_seconds": round(drain_seconds, 3),
        "commit_to_dispatch_ms": latency.as_dict(),
        # The outbox lag (age of the oldest undispatched event) every 100 ms while producing.
        "lag_first_third_ms": _ms(first_lag),
        "lag_last_third_ms": _ms(last_lag),
        "lag_max_ms": _ms(max((age for _, age in ages), default=math.nan)),
        "lag_slope_ms_per_s": round(slope_per_second(ages) * 1000, 3),
        "lag_growing": growing,
        "intended_to_commit_ms": Latency.of_seconds(produced.intended_to_commit).as_dict(),
        "dispatch_batches": batches,
        "mean_batch_size": round(dispatched / batches, 1) if batches else None,
        # CPU of the bench process per event committed in the step: in `processes` mode that
        # is the dispatcher's own cost (read, hand-off, mark, lease, Redis stream, recorder).
        "bench_cpu_us_per_event": round(bench_cpu / 100 * produced.duration / len(committed) * 1e6)
        if committed
        else None,
        "sustained": sustained,
        "limited_by": limits,
        "meets_p99_target": sustained and latency.p99 <= TARGET_P99_MS,
        **cpu,
    }


# -- inline: producers in the bench process ------------------------------------------------


async def _inline_step(
    runtime: Runtime, consumer: RecordingConsumer, rate: float, params: OutboxParams
) -> dict[str, Any]:
    committed: list[tuple[uuid.UUID, float]] = []
    batches_before = consumer.batches

    async def send(index: int, _intended: float) -> None:
        async with runtime.db.transaction() as session:
            event = await emit(
                session,
                EVENT_TYPE,
                stream_key=f"bench-stream-{index % params.streams}",
                payload=_payload(index),
            )
        committed.append((event.id, time.perf_counter()))

    meter = CpuMeter()
    meter.start()
    paced = await run_paced(rate, params.step_seconds, params.producers, send)
    cpu = meter.stop()
    await _drain(consumer, committed, params.drain_timeout)
    produced = _Produced(
        offered=rate,
        started=paced.started,
        ended=paced.ended,
        committed=committed,
        sent=paced.sent,
        failures=paced.failures,
        first_error=paced.first_error,
        intended_to_commit=list(paced.completion.values()),
    )
    drain_seconds = time.perf_counter() - paced.ended
    return _summarise(
        produced, consumer, consumer.batches - batches_before, drain_seconds, cpu, params
    )


# -- processes: producers in their own processes, the dispatcher in the bench process --------


def _producer_main(
    conn: Connection, deployment: Deployment, overrides: dict[str, Any], slot: int, count: int
) -> None:
    """A producer process: an API-like `Runtime` that commits events when told to."""
    from tidings.infra.logging import configure_logging

    configure_logging(level="warning", fmt="console")
    asyncio.run(_producer(conn, deployment, overrides, slot, count))


async def _producer(
    conn: Connection, deployment: Deployment, overrides: dict[str, Any], slot: int, count: int
) -> None:
    runtime = Runtime(deployment.settings(**overrides), role="cli")
    await runtime.start()
    try:
        conn.send(("ready", os.getpid()))
        while True:
            message = await asyncio.to_thread(conn.recv)
            if message[0] != "step":
                break
            _, rate, seconds, start_wall, tasks, streams = message
            conn.send(
                await _produce(runtime, rate, seconds, start_wall, tasks, streams, slot, count)
            )
    finally:
        await runtime.stop()


async def _produce(
    runtime: Runtime,
    rate: float,
    seconds: float,
    start_wall: float,
    tasks: int,
    streams: int,
    slot: int,
    count: int,
) -> dict[str, Any]:
    # Process `slot` of `count` offers rate/count, its schedule shifted by slot/rate: together
    # the processes send at evenly spaced times, like one schedule at `rate`.
    share = rate / count
    offset = time.time() - time.perf_counter()
    await asyncio.sleep(max(0.0, start_wall + slot / rate - 0.05 - time.time()))
    committed: list[tuple[bytes, float]] = []

    async def send(index: int, _intended: float) -> None:
        number = index * count + slot
        async with runtime.db.transaction() as session:
            event = await emit(
                session,
                EVENT_TYPE,
                stream_key=f"bench-stream-{number % streams}",
                payload=_payload(number),
            )
        committed.append((event.id.bytes, time.time()))

    cpu_before = time.process_time()
    paced = await run_paced(share, seconds, tasks, send)
    return {
        "committed": committed,
        "sent": paced.sent,
        "failures": paced.failures,
        "first_error": paced.first_error,
        "started": paced.started + offset,
        "ended": paced.ended + offset,
        "intended_to_commit": list(paced.completion.values()),
        "cpu_seconds": time.process_time() - cpu_before,
    }


class _Producers:
    """The producer processes of one profile run, started once and driven step by step."""

    def __init__(self, deployment: Deployment, overrides: dict[str, Any], count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._processes: list[Any] = []
        for slot in range(count):
            parent, child = context.Pipe()
            process = context.Process(
                target=_producer_main,
                args=(child, deployment, overrides, slot, count),
                name=f"bench-outbox-producer-{slot}",
                daemon=True,
            )
            process.start()
            child.close()
            self._pipes.append(parent)
            self._processes.append(process)

    async def ready(self) -> None:
        for pipe in self._pipes:
            message = await asyncio.to_thread(pipe.recv)
            if message[0] != "ready":
                raise RuntimeError(f"outbox producer failed to start: {message}")

    async def step(self, rate: float, seconds: float, tasks: int, streams: int) -> _Produced:
        start_wall = time.time() + 0.3
        per_process = max(1, round(tasks / len(self._pipes)))
        for pipe in self._pipes:
            pipe.send(("step", rate, seconds, start_wall, per_process, streams))
        replies = [await asyncio.to_thread(pipe.recv) for pipe in self._pipes]
        produced = _Produced(
            offered=rate,
            started=min(reply["started"] for reply in replies),
            ended=max(reply["ended"] for reply in replies),
            producer_cpu_seconds=sum(reply["cpu_seconds"] for reply in replies),
        )
        for reply in replies:
            produced.committed.extend((uuid.UUID(bytes=i), at) for i, at in reply["committed"])
            produced.sent += reply["sent"]
            produced.failures += reply["failures"]
            produced.first_error = produced.first_error or reply["first_error"]
            produced.intended_to_commit.extend(reply["intended_to_commit"])
        return produced

    async def stop(self) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
        for process in self._processes:
            await asyncio.to_thread(process.join, 30)
            if process.is_alive():
                process.kill()
        for pipe in self._pipes:
            pipe.close()


async def _processes_step(
    producers: _Producers, consumer: RecordingConsumer, rate: float, params: OutboxParams
) -> dict[str, Any]:
    batches_before = consumer.batches
    meter = CpuMeter()
    meter.start()
    produced = await producers.step(rate, params.step_seconds, params.producers, params.streams)
    cpu = meter.stop()
    # The producers' CPU is part of the benchmark, not interference.
    elapsed = max(time.time() - produced.started, 1e-9)
    producers_cpu = 100 * (produced.producer_cpu_seconds or 0.0) / elapsed
    cpu["producers_cpu_percent"] = round(producers_cpu, 1)
    cpu["other_cpu_percent"] = round(max(0.0, cpu["other_cpu_percent"] - producers_cpu), 1)
    await _drain(consumer, produced.committed, params.drain_timeout)
    drain_seconds = time.time() - produced.ended
    return _summarise(
        produced, consumer, consumer.batches - batches_before, drain_seconds, cpu, params
    )


# -- the stepped run -------------------------------------------------------------------------


async def run_outbox(stores: Stores, profile: str, params: OutboxParams) -> dict[str, Any]:
    mode = params.mode_for(profile)
    deployment = await stores.fresh(profile)
    # One set of secrets for every process of the deployment (the keyring's root key).
    probe = deployment.settings()
    assert probe.jwt_secret is not None
    assert probe.master_key is not None
    overrides = {
        "jwt_secret": probe.jwt_secret.get_secret_value(),
        "master_key": probe.master_key.get_secret_value(),
    }
    inline = mode == "inline"
    runtime = Runtime(deployment.settings(**overrides), role="serve" if inline else "worker")
    consumer = RecordingConsumer(time.perf_counter if inline else time.time)
    runtime.dispatcher.add_live(consumer)
    await runtime.start()
    producers: _Producers | None = None
    if not inline:
        # The bench process must hold the dispatcher lease before any producer starts.
        deadline = time.perf_counter() + 30
        while not runtime.dispatcher.is_leader and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        producers = _Producers(deployment, overrides, params.producer_processes)

    async def step(rate: float, step_params: OutboxParams) -> dict[str, Any]:
        if producers is None:
            return await _inline_step(runtime, consumer, rate, step_params)
        return await _processes_step(producers, consumer, rate, step_params)

    steps: list[dict[str, Any]] = []
    try:
        if producers is not None:
            await producers.ready()
        # Warm-up: open every pool connection and prepare statements, then let the dispatcher
        # catch up.
        await step(200, replace(params, step_seconds=params.warmup_seconds))
        await step(4000, replace(params, step_seconds=0.5))
        for rate in params.rates:
            await settle(1.0)
            result = await step(rate, params)
            steps.append(result)
            print(f"  outbox {profile:8} {_step_line(result)}", flush=True)
            if not result["sustained"]:
                break
        sustained_rates = [s["offered_per_s"] for s in steps if s["sustained"]]
        if params.refine and steps and not steps[-1]["sustained"] and sustained_rates:
            # One more step half-way between the last sustained rate and the first failed one.
            middle = round((max(sustained_rates) + steps[-1]["offered_per_s"]) / 2 / 25) * 25
            if max(sustained_rates) < middle < steps[-1]["offered_per_s"]:
                await settle(1.0)
                result = await step(middle, params)
                steps.append(result)
                print(f"  outbox {profile:8} {_step_line(result)}", flush=True)
    finally:
        if producers is not None:
            await producers.stop()
        await runtime.stop()
    steps.sort(key=lambda step: step["offered_per_s"])
    sustained = [step for step in steps if step["sustained"]]
    meeting = [step for step in steps if step["meets_p99_target"]]
    return {
        "profile": profile,
        "mode": mode,
        "producer_processes": 0 if inline else params.producer_processes,
        "producers": params.producers,
        "streams": params.streams,
        "step_seconds": params.step_seconds,
        "worker_in_process": runtime.worker is not None,
        "steps": steps,
        "max_sustained_per_s": max((s["offered_per_s"] for s in sustained), default=0),
        "lag_grew_at_any_step": any(step["lag_growing"] for step in steps),
        "max_meeting_p99_target_per_s": max((s["offered_per_s"] for s in meeting), default=0),
    }


# -- drain: the dispatcher's own cost per event ------------------------------------------------


class _FirstBatchClock(RecordingConsumer):
    """The recorder, noting the clocks when its first batch was handled."""

    first_wall = 0.0
    first_cpu = 0.0
    first_size = 0

    async def handle(self, events: Sequence[DispatchedEvent]) -> None:
        await super().handle(events)
        if not self.first_size:
            self.first_wall, self.first_cpu = time.perf_counter(), time.process_time()
            self.first_size = len(events)


async def run_drain(
    stores: Stores, profile: str, events: int, batch_sizes: Sequence[int]
) -> list[dict[str, Any]]:
    """Dispatcher capacity without producers: `events` undispatched rows are in the table, then
    a worker `Runtime` (production consumers plus the recorder) starts and dispatches them all
    in batches of at most `batch_size`. Reports events/s and this process's CPU per event:
    what the dispatcher costs, whatever the producers and other processes do meanwhile."""
    results = []
    for batch_size in batch_sizes:
        deployment = await stores.fresh(profile)
        runtime = Runtime(deployment.settings(outbox_batch_size=batch_size), role="worker")
        for start in range(0, events, 500):
            async with runtime.db.transaction() as session:
                await emit_many(
                    session,
                    [
                        NewEvent(EVENT_TYPE, f"bench-stream-{n % 8}", _payload(n))
                        for n in range(start, min(events, start + 500))
                    ],
                )
        consumer = _FirstBatchClock()
        runtime.dispatcher.add_live(consumer)
        await settle(0.5)
        meter = CpuMeter()
        meter.start()
        await runtime.start()
        try:
            deadline = time.perf_counter() + 120
            while len(consumer.seen) < events and time.perf_counter() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - consumer.first_wall
            cpu_seconds = time.process_time() - consumer.first_cpu
            cpu = meter.stop()
        finally:
            await runtime.stop()
        # Counted from the end of the first batch: the runtime's start is not dispatch work.
        counted = max(1, len(consumer.seen) - consumer.first_size)
        result = {
            "batch_size": batch_size,
            "events": events,
            "dispatched": len(consumer.seen),
            "batches": consumer.batches,
            "events_per_s": round(counted / elapsed),
            "cpu_us_per_event": round(cpu_seconds / counted * 1e6),
            **cpu,
        }
        results.append(result)
        print(
            f"  drain  {profile:8} batch {batch_size:>4}: {result['events_per_s']:>6} ev/s, "
            f"{result['cpu_us_per_event']:>5} µs CPU/ev (others {cpu['other_cpu_percent']}%)",
            flush=True,
        )
    return results


def _ms(seconds: float) -> float | None:
    return round(seconds * 1000, 3) if math.isfinite(seconds) else None


def _step_line(step: dict[str, Any]) -> str:
    latency = step["commit_to_dispatch_ms"]
    producers = (
        f"producers {step['producers_cpu_percent']}%, " if "producers_cpu_percent" in step else ""
    )
    return (
        f"offered {step['offered_per_s']:>6}/s  committed {step['committed_per_s']:>8}/s  "
        f"dispatched {step['dispatched_per_s']:>8}/s  p50 {latency['p50']} ms  "
        f"p99 {latency['p99']} ms  max {latency['max']} ms  "
        f"lag {step['lag_first_third_ms']}→{step['lag_last_third_ms']} ms  "
        f"batch {step['mean_batch_size']}  "
        f"cpu {step['bench_process_cpu_percent']}% ({step['bench_cpu_us_per_event']} µs/ev; "
        f"{producers}others {step['other_cpu_percent']}%)  "
        f"{'sustained' if step['sustained'] else 'NOT sustained: ' + '; '.join(step['limited_by'])}"
    )
