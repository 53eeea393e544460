"""``python -m bench``: run the sections on the chosen profiles, print a table, write JSON."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SECTIONS = ("outbox", "jobs")


def _strip_tidings_environment() -> None:
    # A developer's own TIDINGS_* variables (or a .env) must not change what is measured.
    for name in [n for n in os.environ if n.startswith("TIDINGS_")]:
        if not name.startswith("TIDINGS_BENCH_"):
            del os.environ[name]


def _csv(kind: type[Any], allowed: tuple[str, ...] | None = None) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        values = [kind(part.strip()) for part in text.split(",") if part.strip()]
        if allowed is not None:
            unknown = sorted(set(values) - set(allowed))
            if unknown:
                raise argparse.ArgumentTypeError(f"unknown: {', '.join(map(str, unknown))}")
        return values

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Tidings benchmarks: outbox throughput and job runner vs SAQ and arq.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short smoke run (under a minute), not for figures"
    )
    parser.add_argument(
        "--sections", type=_csv(str, SECTIONS), default=list(SECTIONS), help="outbox,jobs"
    )
    parser.add_argument(
        "--profiles",
        type=_csv(str, ("embedded", "scaled")),
        default=["embedded", "scaled"],
        help="embedded,scaled",
    )
    parser.add_argument(
        "--peers", type=_csv(str, ("saq", "arq")), default=["saq", "arq"], help="saq,arq"
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds of the job section")
    parser.add_argument("--jobs", type=int, help="no-op jobs per throughput run")
    parser.add_argument("--concurrency", type=int, default=50, help="worker concurrency (all)")
    parser.add_argument("--enqueuers", type=int, default=20, help="concurrent enqueuing tasks")
    parser.add_argument("--batch-size", type=int, default=100, help="0 skips the batch variant")
    parser.add_argument("--latency-rate", type=float, default=200.0, help="jobs/s, open loop")
    parser.add_argument("--latency-seconds", type=float, help="length of the latency run")
    parser.add_argument(
        "--outbox-rates", type=_csv(int), help="offered events/s, stepped up, e.g. 250,500,1000"
    )
    parser.add_argument("--outbox-seconds", type=float, help="length of each outbox step")
    parser.add_argument("--producers", type=int, default=16, help="outbox producer tasks")
    parser.add_argument("--streams", type=int, default=8, help="outbox streams written")
    parser.add_argument(
        "--outbox-mode",
        choices=("auto", "inline", "processes"),
        default="auto",
        help="where the outbox producers run: in the bench process (inline), in producer "
        "processes with only the dispatcher in the bench process (processes), or auto: "
        "inline for embedded (one process by design), processes for scaled",
    )
    parser.add_argument(
        "--producer-processes", type=int, default=4, help="outbox producer processes"
    )
    parser.add_argument(
        "--outbox-drain",
        type=_csv(int),
        help="dispatcher batch sizes for the drain measurement (default 1,20,500; 0 skips it)",
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop for everything (default: asyncio, as `tidings worker` uses)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="before each run, wait up to this many seconds for other processes to go idle "
        "(default 10; in total at most 120 or 6x this; 0 with --quick)",
    )
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="print a results file as Markdown tables"
    )
    parser.add_argument("--output", type=Path, help="JSON path (default bench/results/<ts>.json)")
    return parser.parse_args(argv)


def _configure_logging() -> None:
    from tidings.infra.logging import configure_logging

    configure_logging(level="warning", fmt="console")
    # SAQ warns on every stop that its blocked dequeues had to be cancelled; that is expected.
    logging.getLogger("saq").setLevel(logging.ERROR)


async def _main(args: argparse.Namespace) -> int:
    from bench import machine, report
    from bench.jobs import JobParams, run_jobs
    from bench.outbox import OutboxParams, run_drain, run_outbox
    from bench.profiles import (
        POSTGRES_ADMIN_DSN,
        PROFILE_LABELS,
        REDIS_URL,
        Stores,
        new_run_tag,
    )

    quick = args.quick
    profiles: list[str] = args.profiles
    needs_services = "scaled" in profiles or ("jobs" in args.sections and args.peers)
    started = time.perf_counter()
    info = await machine.describe(
        POSTGRES_ADMIN_DSN if "scaled" in profiles else None,
        REDIS_URL if needs_services else None,
    )
    info["event_loop"] = args.loop
    print(f"Machine: {machine.summary_line(info)}; load average {info['load_average']}")
    print(f"Profiles: {', '.join(f'{p} ({PROFILE_LABELS[p]})' for p in profiles)}")

    outbox_params = OutboxParams(
        rates=tuple(
            args.outbox_rates or ((250, 1000) if quick else (100, 250, 500, 1000, 2000, 4000))
        ),
        step_seconds=args.outbox_seconds or (2.0 if quick else 10.0),
        warmup_seconds=0.5 if quick else 2.0,
        producers=args.producers,
        streams=args.streams,
        drain_timeout=5.0 if quick else 15.0,
        refine=not quick,
        mode=args.outbox_mode,
        producer_processes=args.producer_processes,
    )
    job_params = JobParams(
        jobs=args.jobs or (500 if quick else 5000),
        rounds=args.rounds or (1 if quick else 3),
        latency_seconds=args.latency_seconds or (1.5 if quick else 5.0),
        concurrency=args.concurrency,
        enqueuers=args.enqueuers,
        latency_rate=args.latency_rate,
        batch_size=args.batch_size,
        warmup_jobs=100 if quick else 300,
        peers=tuple(args.peers),
    )

    machine.QUIET.max_wait = (
        args.quiet_wait if args.quiet_wait is not None else (0 if quick else 10)
    )
    if info["load_average"][0] > 1.0:
        print(
            f"Warning: load average {info['load_average'][0]} before start: other processes "
            "are busy; figures will be noisy (each run records others' CPU use)."
        )
    stores = Stores(new_run_tag())
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": info,
        "profiles": profiles,
    }
    try:
        await stores.prepare(profiles)
        if "outbox" in args.sections:
            print(
                f"\n== Outbox: {outbox_params.producers} producers, {outbox_params.streams} "
                f"streams, one event per transaction, {outbox_params.step_seconds:g} s per step; "
                + ", ".join(
                    f"{p}: {outbox_params.mode_for(p)}"
                    + (
                        f" ({outbox_params.producer_processes} producer processes)"
                        if outbox_params.mode_for(p) == "processes"
                        else ""
                    )
                    for p in profiles
                )
            )
            results["outbox_parameters"] = {
                "rates": list(outbox_params.rates),
                "step_seconds": outbox_params.step_seconds,
                "producers": outbox_params.producers,
                "streams": outbox_params.streams,
                "modes": {p: outbox_params.mode_for(p) for p in profiles},
                "producer_processes": outbox_params.producer_processes,
            }
            results["outbox"] = {
                profile: await run_outbox(stores, profile, outbox_params) for profile in profiles
            }
            drain_sizes = [n for n in (args.outbox_drain or [1, 20, 500]) if n > 0]
            if drain_sizes:
                drain_events = 1000 if quick else 3000
                print(
                    f"\n== Outbox drain: {drain_events} committed events, then the dispatcher "
                    "alone (no producers)"
                )
                results["outbox_drain"] = {
                    profile: await run_drain(stores, profile, drain_events, drain_sizes)
                    for profile in profiles
                }
        if "jobs" in args.sections:
            print(
                f"\n== Jobs: {job_params.jobs} no-op jobs, concurrency {job_params.concurrency}, "
                f"1 worker each, {job_params.enqueuers} enqueuers, {job_params.rounds} round(s); "
                f"latency at {job_params.latency_rate:g} jobs/s for {job_params.latency_seconds:g} s"
            )
            results["jobs"] = await run_jobs(stores, profiles, job_params)
    finally:
        await stores.cleanup()

    results["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    results["quiet_wait"] = {
        "max_wait_seconds": machine.QUIET.max_wait,
        "waited_seconds": round(machine.QUIET.waited, 1),
        "runs_started_while_busy": machine.QUIET.gave_up,
    }
    rows = report.build_rows(results)
    results["table"] = [row.__dict__ for row in rows]
    busy, measured, worst = report.interference(
        {"outbox": results.get("outbox"), "jobs": results.get("jobs")}
    )
    results["interference"] = {
        "busy_runs": busy,
        "measured_runs": measured,
        "max_other_cpu_percent": worst,
    }
    print()
    print(report.render_table(rows))
    print(
        f"\nOther processes used > {machine.BUSY_OTHERS_PERCENT:.0f}% of a core during {busy} of "
        f"{measured} measured runs (worst {worst:.0f}%)"
        + ("; rerun on a quiet machine before trusting the figures." if busy else ".")
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = report.write_json(results, args.output or report.RESULTS_DIR / f"{stamp}.json")
    print(f"\n{results['elapsed_seconds']} s; results written to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        import json

        from bench.report import render_markdown

        print(render_markdown(json.loads(args.render.read_text(encoding="utf-8"))))
        return 0
    _strip_tidings_environment()
    _configure_logging()
    coroutine: Coroutine[Any, Any, int] = _main(args)
    if args.loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coroutine)
    return asyncio.run(coroutine)


if __name__ == "__main__":
    sys.exit(main())
