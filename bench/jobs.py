"""Job throughput and enqueue-to-start latency: Tidings on each profile next to SAQ and arq.

Each round runs every system once, in an order rotated from round to round, so that drift of
a noisy machine hits all of them alike; ratios are taken within a round and reported as median
and min-max over the rounds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bench.harness import QueueSystem, Recorder, all_done, measure_latency, measure_throughput
from bench.machine import CpuMeter, settle
from bench.profiles import Stores
from bench.stats import Spread
from bench.systems import ArqSystem, SaqSystem, TidingsSystem

PEERS = ("saq", "arq")
TARGET_VS_SAQ = 1.0
TARGET_VS_ARQ = 5.0
TARGET_START_P50_MS = 5.0
# Offsets keep the job indices of the phases of one run apart.
WARMUP_BASE = 10_000_000
BATCH_BASE = 20_000_000
LATENCY_BASE = 30_000_000


@dataclass(frozen=True)
class JobParams:
    jobs: int
    rounds: int
    latency_seconds: float
    concurrency: int = 50
    enqueuers: int = 20
    latency_rate: float = 200.0
    latency_producers: int = 8
    batch_size: int = 100
    warmup_jobs: int = 300
    timeout: float = 180.0
    peers: tuple[str, ...] = PEERS


async def _build(stores: Stores, name: str, recorder: Recorder, params: JobParams) -> QueueSystem:
    if name.startswith("tidings-"):
        deployment = await stores.fresh(name.removeprefix("tidings-"))
        return TidingsSystem(deployment, recorder, concurrency=params.concurrency)
    queue_name = f"bench-{stores.run_tag}-{name}-{time.monotonic_ns()}"
    if name == "saq":
        url = stores.redis_url_for_peers()
        return SaqSystem(url, queue_name, recorder, concurrency=params.concurrency)
    if name == "arq":
        url = stores.redis_url_for_peers()
        return ArqSystem(url, queue_name, recorder, concurrency=params.concurrency)
    raise ValueError(f"unknown system {name!r}")


async def _batch_throughput(
    system: TidingsSystem, params: JobParams, *, base: int
) -> dict[str, Any]:
    recorder = system.recorder
    recorder.expect(params.jobs)
    meter = CpuMeter()
    meter.start()
    started = time.perf_counter()
    indices = list(range(base, base + params.jobs))
    for start in range(0, len(indices), params.batch_size):
        await system.enqueue_many(indices[start : start + params.batch_size])
    enqueued = time.perf_counter()
    complete = await all_done(system, params.timeout)
    elapsed = time.perf_counter() - started
    return {
        "jobs": params.jobs,
        "batch_size": params.batch_size,
        "complete": complete,
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(params.jobs / elapsed, 1) if complete else 0.0,
        "enqueue_per_s": round(params.jobs / (enqueued - started), 1),
        **meter.stop(),
    }


async def _run_system(stores: Stores, name: str, params: JobParams) -> dict[str, Any]:
    recorder = Recorder()
    system = await _build(stores, name, recorder, params)
    await system.start()
    try:
        await measure_throughput(
            system,
            jobs=params.warmup_jobs,
            enqueuers=params.enqueuers,
            base=WARMUP_BASE,
            budget=params.timeout,
        )
        result: dict[str, Any] = {
            "throughput": await measure_throughput(
                system, jobs=params.jobs, enqueuers=params.enqueuers, base=0, budget=params.timeout
            )
        }
        if isinstance(system, TidingsSystem) and params.batch_size > 0:
            result["batch_throughput"] = await _batch_throughput(system, params, base=BATCH_BASE)
        await settle(0.5)
        result["latency"] = await measure_latency(
            system,
            rate=params.latency_rate,
            seconds=params.latency_seconds,
            producers=params.latency_producers,
            base=LATENCY_BASE,
            budget=params.timeout,
        )
    finally:
        await system.stop()
    return result


def _line(name: str, result: dict[str, Any]) -> str:
    throughput = result["throughput"]
    latency = result["latency"]["enqueue_to_start_ms"]
    batch = result.get("batch_throughput")
    extra = f"  batch {batch['jobs_per_s']} jobs/s" if batch else ""
    return (
        f"{name:18} {throughput['jobs_per_s']:>8} jobs/s "
        f"(enqueue {throughput['enqueue_per_s']}/s, cpu {throughput['bench_process_cpu_percent']}%,"
        f" others {throughput['other_cpu_percent']}%)"
        f"  start p50 {latency['p50']} ms p99 {latency['p99']} ms{extra}"
    )


def _median_of(runs: list[dict[str, Any]], *path: str) -> Spread:
    values: list[float] = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value[key]
        values.append(float(value) if value is not None else float("nan"))
    return Spread.of(values)


async def run_jobs(stores: Stores, profiles: list[str], params: JobParams) -> dict[str, Any]:
    systems = [f"tidings-{profile}" for profile in profiles] + list(params.peers)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
    for round_index in range(params.rounds):
        shift = round_index % len(systems)
        for name in systems[shift:] + systems[:shift]:
            await settle(1.0)
            result = await _run_system(stores, name, params)
            runs[name].append(result)
            print(f"  jobs round {round_index + 1}  {_line(name, result)}", flush=True)

    summary: dict[str, Any] = {}
    for name, results in runs.items():
        summary[name] = {
            "jobs_per_s": _median_of(results, "throughput", "jobs_per_s").as_dict(),
            "start_p50_ms": _median_of(results, "latency", "enqueue_to_start_ms", "p50").as_dict(),
            "start_p99_ms": _median_of(results, "latency", "enqueue_to_start_ms", "p99").as_dict(),
        }
        if results and "batch_throughput" in results[0]:
            summary[name]["batch_jobs_per_s"] = _median_of(
                results, "batch_throughput", "jobs_per_s"
            ).as_dict()
    ratios: dict[str, Any] = {}
    for profile in profiles:
        ours = runs[f"tidings-{profile}"]
        for peer in params.peers:
            per_round = [
                mine["throughput"]["jobs_per_s"] / theirs["throughput"]["jobs_per_s"]
                if theirs["throughput"]["jobs_per_s"]
                else float("nan")
                for mine, theirs in zip(ours, runs[peer], strict=True)
            ]
            ratios[f"tidings-{profile}/{peer}"] = Spread.of(per_round).as_dict()
    return {
        "parameters": {
            "jobs": params.jobs,
            "rounds": params.rounds,
            "concurrency": params.concurrency,
            "enqueuers": params.enqueuers,
            "workers": 1,
            "latency_rate_per_s": params.latency_rate,
            "latency_seconds": params.latency_seconds,
            "latency_producers": params.latency_producers,
            "batch_size": params.batch_size,
            "warmup_jobs": params.warmup_jobs,
        },
        "runs": runs,
        "summary": summary,
        "ratios": ratios,
    }
