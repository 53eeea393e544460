"""``python -m bench.realtime``: WebSocket fan-out of Tidings' realtime gateway against peers.

Scenarios (one fresh server process per run, pinned to core 0; the Node load client pinned to
core 1; rounds interleaved round → scenario → server; medians over rounds):

1. burst: N subscribers in one room, M broadcasts as fast as possible → deliveries/s, server CPU
   µs per delivery, reach. Tidings' messages go through its real path: a sender connection of
   the same user issues `send` commands (16 outstanding), each committed, dispatched by the
   outbox and fanned out by the hub.
2. paced: 50 broadcasts/s into the same room, open loop; latency = receipt - scheduled send time
   (carried in the message), p50/p99/p99.9.
3. idle: 10,000 idle authenticated connections on one process; RSS per connection.
4. slow consumer: the burst with one subscriber that never reads; the others' deliveries/s
   against the same run without it; whether the slow one was cut off (close code 1008).
5. scaled: PostgreSQL + Redis; one `serve` vs two (subscribers split, sender on the first):
   reach, deliveries/s, and the p50 latency the hop to the second process adds (paced).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import machine
from bench.profiles import POSTGRES_ADMIN_DSN, REDIS_URL, new_run_tag
from bench.realtime import report, scenarios
from bench.realtime.loadclient import ensure_node_modules
from bench.realtime.procs import TASKSET
from bench.realtime.scenarios import PEER_PAYLOAD_OVERHEAD, SLOW_RUN_SETTINGS, FanoutParams
from bench.realtime.servers import ALL_SERVERS, CLIENT_CORE, SERVER_CORE, Lab

SCENARIOS = ("burst", "paced", "idle", "slow", "scaled")
# A Tidings message.created frame of this bench is about this long; the first Tidings run
# measures it and the peers' payloads are padded to match.
DEFAULT_FRAME_BYTES = 761
# python-socketio cannot sustain 50 broadcasts/s to 1,000 subscribers (its burst capacity is
# well below 50,000 deliveries/s), so its paced latency only measures a growing backlog.
PACED_DEFAULT = ("tidings", "node-sio", "node-ws", "websockets")
# The latency of the hop to a second process is measured below one process's saturation (at
# 50/s x 1,000 one scaled process is saturated and its latency is a backlog): 20 broadcasts/s,
# for one and two scaled processes and, as the reference without Redis, one embedded process.
SCALED_PACED_RATE = 20.0
IDLE_DEFAULT = ("tidings", "node-sio", "node-ws", "websockets", "python-socketio")


@dataclass(frozen=True)
class Plan:
    rounds: int
    burst: FanoutParams
    paced: FanoutParams
    idle_connections: int
    idle_settle: float
    idle_tidings_rounds: int
    idle_peers: bool
    slow: FanoutParams
    scaled_burst: FanoutParams
    scaled_paced: FanoutParams


def plan_for(args: argparse.Namespace) -> Plan:
    if args.quick:
        # A smoke run of every scenario at a small scale: not for figures.
        n = args.subscribers or 200
        plan = Plan(
            rounds=1,
            burst=FanoutParams(n, 50, timeout=60),
            paced=FanoutParams(n, 100, rate=50, timeout=30),
            idle_connections=1000,
            idle_settle=1.0,
            idle_tidings_rounds=1,
            idle_peers=False,
            slow=FanoutParams(n, 400, timeout=60),
            scaled_burst=FanoutParams(n, 50, timeout=60),
            scaled_paced=FanoutParams(n, 40, rate=SCALED_PACED_RATE, timeout=30),
        )
    else:
        n = args.subscribers or 1000
        plan = Plan(
            rounds=3,
            burst=FanoutParams(n, 200, timeout=90),
            paced=FanoutParams(n, 300, rate=50, timeout=40),
            idle_connections=10_000,
            idle_settle=3.0,
            idle_tidings_rounds=1,
            idle_peers=True,
            slow=FanoutParams(n, 500, timeout=90),
            scaled_burst=FanoutParams(n, 200, timeout=90),
            scaled_paced=FanoutParams(n, 120, rate=SCALED_PACED_RATE, timeout=40),
        )
    if args.rounds:
        plan = replace(plan, rounds=args.rounds)
    if args.idle_connections:
        plan = replace(plan, idle_connections=args.idle_connections)
    return plan


def _csv(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [part.strip() for part in text.split(",") if part.strip()]
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown: {', '.join(unknown)}")
        return values

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.realtime",
        description="Realtime fan-out: Tidings vs Node ws, Socket.IO, python-socketio, websockets.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of every scenario at a small scale (~2 minutes), not for figures",
    )
    parser.add_argument(
        "--scenarios", type=_csv(SCENARIOS), default=list(SCENARIOS), help=",".join(SCENARIOS)
    )
    parser.add_argument(
        "--servers", type=_csv(ALL_SERVERS), default=list(ALL_SERVERS), help=",".join(ALL_SERVERS)
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick 1)")
    parser.add_argument("--subscribers", type=int, help="in the room (default 1000; quick 200)")
    parser.add_argument("--idle-connections", type=int, help="default 10000 (quick 1000)")
    parser.add_argument(
        "--tidings-src",
        type=Path,
        metavar="DIR",
        help="import tidings from DIR (e.g. a patched copy of src/) for the Tidings servers",
    )
    parser.add_argument("--output", type=Path, help="JSON path (default bench/results/<ts>)")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="print a results file as Markdown"
    )
    return parser.parse_args(argv)


def _raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Runner:
    def __init__(self, lab: Lab, plan: Plan, servers: list[str]) -> None:
        self.lab = lab
        self.plan = plan
        self.servers = servers
        self.runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.failures: list[str] = []
        self.discarded: list[dict[str, Any]] = []
        self.retry_busy = True

    async def _attempt(
        self, scenario: str, key: str, round_no: int, run: Callable[[], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any] | None:
        """One measured run; repeated once if other processes were busy during it (the busy
        run is kept in the JSON under `discarded`)."""
        for attempt in (1, 2):
            await machine.QUIET.wait()
            started = time.perf_counter()
            try:
                result = await run()
            except Exception as exc:
                message = f"{scenario}/{key} round {round_no}: {type(exc).__name__}: {exc}"
                print(f"  {key:<26} FAILED: {message[:300]}", flush=True)
                self.failures.append(message)
                return None
            result["seconds"] = round(time.perf_counter() - started, 1)
            result["round"] = round_no
            busy = result.get("other_cpu_percent", 0.0) > machine.BUSY_OTHERS_PERCENT
            if busy and attempt == 1 and self.retry_busy:
                print(f"  {key:<26} (others busy: {report.run_line(scenario, result)}; again)")
                self.discarded.append({"scenario": scenario, "key": key, **result})
                continue
            self.runs.setdefault(scenario, {}).setdefault(key, []).append(result)
            print(f"  {key:<26} {report.run_line(scenario, result)}", flush=True)
            return result
        return None

    def _frame_seen(self, result: dict[str, Any] | None) -> None:
        if result and result.get("frame_bytes") and self.lab.pad == 0:
            self.lab.pad = int(result["frame_bytes"]) - PEER_PAYLOAD_OVERHEAD

    async def burst(self, round_no: int) -> None:
        for name in self.servers:
            result = await self._attempt(
                "burst",
                name,
                round_no,
                lambda name=name: scenarios.fanout(self.lab, name, self.plan.burst),  # type: ignore[misc]
            )
            if name == "tidings":
                self._frame_seen(result)

    async def paced(self, round_no: int) -> None:
        for name in [s for s in self.servers if s in PACED_DEFAULT]:
            await self._attempt(
                "paced",
                name,
                round_no,
                lambda name=name: scenarios.fanout(self.lab, name, self.plan.paced),  # type: ignore[misc]
            )

    async def idle(self, round_no: int) -> None:
        for name in [s for s in self.servers if s in IDLE_DEFAULT]:
            if round_no > (self.plan.idle_tidings_rounds if name == "tidings" else 1):
                continue
            if name != "tidings" and not self.plan.idle_peers:
                continue
            await self._attempt(
                "idle",
                name,
                round_no,
                lambda name=name: scenarios.idle(  # type: ignore[misc]
                    self.lab,
                    name,
                    self.plan.idle_connections,
                    self.plan.idle_settle,
                    timeout=240,
                ),
            )

    async def slow(self, round_no: int) -> None:
        for key, slow in (("without slow consumer", False), ("with slow consumer", True)):
            await self._attempt(
                "slow",
                key,
                round_no,
                lambda slow=slow: scenarios.fanout(  # type: ignore[misc]
                    self.lab,
                    "tidings",
                    self.plan.slow,
                    tidings={"settings": SLOW_RUN_SETTINGS},
                    slow=slow,
                ),
            )

    async def scaled(self, round_no: int) -> None:
        runs: list[tuple[str, FanoutParams, str, int]] = [
            ("burst", self.plan.scaled_burst, "scaled", 1),
            ("burst", self.plan.scaled_burst, "scaled", 2),
            ("paced", self.plan.scaled_paced, "scaled", 1),
            ("paced", self.plan.scaled_paced, "scaled", 2),
            ("paced", self.plan.scaled_paced, "embedded", 1),
        ]
        for kind, params, profile, processes in runs:
            options: dict[str, Any] = {"profile": profile, "processes": processes}
            if processes == 2:
                # One process per core; the client floats (there is no third core).
                options["cores"] = (SERVER_CORE, CLIENT_CORE)
            key = f"{kind}, {processes} process{'es' if processes > 1 else ''}"
            if profile == "embedded":
                key = f"{kind}, embedded reference"
            await self._attempt(
                "scaled",
                key,
                round_no,
                lambda options=options, params=params, processes=processes: scenarios.fanout(  # type: ignore[misc]
                    self.lab,
                    "tidings",
                    params,
                    tidings=options,
                    client_core=CLIENT_CORE if processes == 1 else None,
                ),
            )


async def _main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    plan = plan_for(args)
    chosen: list[str] = args.scenarios
    servers: list[str] = args.servers
    if "tidings" in servers:  # first in every round: its frame size sets the peers' payload
        servers = ["tidings", *[s for s in servers if s != "tidings"]]
    uses_services = "scaled" in chosen
    info = await machine.describe(
        POSTGRES_ADMIN_DSN if uses_services else None, REDIS_URL if uses_services else None
    )
    info["node"] = _node_versions()
    info["python_packages"] = {
        name: _version(name)
        for name in (
            "uvicorn",
            "uvloop",
            "httptools",
            "websockets",
            "python-socketio",
            "python-engineio",
        )
    }
    info["fd_limit"] = _raise_fd_limit()
    info["taskset"] = TASKSET is not None
    info["git"] = _git_state()
    print(f"Machine: {machine.summary_line(info)}; load average {info['load_average']}")
    print(
        f"Server pinned to core {SERVER_CORE}, load client to core {CLIENT_CORE}"
        if TASKSET
        else "taskset not found: processes are not pinned"
    )
    if info["load_average"][0] > 1.0:
        print(
            f"Warning: load average {info['load_average'][0]}: other processes are busy; "
            "each run records their CPU use (other_cpu_percent)."
        )
    ensure_node_modules()
    lab = Lab(new_run_tag())
    if args.tidings_src is not None:
        lab.tidings_src = args.tidings_src.resolve()
        print(f"Tidings imported from {lab.tidings_src}")
    lab.pad = 0 if "tidings" in servers else DEFAULT_FRAME_BYTES - PEER_PAYLOAD_OVERHEAD
    runner = Runner(lab, plan, servers)
    # Before each run wait (up to 15 s, 180 s in all) for other processes to go idle; a run
    # during which they were busy anyway is repeated once.
    machine.QUIET.max_wait = 0.0 if args.quick else 15.0
    machine.QUIET.total_budget = 180.0
    runner.retry_busy = not args.quick
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": info,
        "plan": asdict(plan),
        "servers": servers,
        "scenarios": chosen,
        "tidings_src": str(lab.tidings_src) if lab.tidings_src else None,
        "settings": {
            "slow_runs": SLOW_RUN_SETTINGS,
            "tidings": {k: v for k, v in lab.base_env().items() if k.startswith("TIDINGS_")},
        },
    }
    try:
        await lab.prepare(
            embedded="tidings" in servers,
            scaled="scaled" in chosen,
        )
        steps = {
            "burst": runner.burst,
            "paced": runner.paced,
            "idle": runner.idle,
            "slow": runner.slow,
            "scaled": runner.scaled,
        }
        for round_no in range(1, plan.rounds + 1):
            for scenario in chosen:
                if scenario in {"slow", "scaled"} and "tidings" not in servers:
                    continue
                print(f"\n== round {round_no}/{plan.rounds}: {scenario}", flush=True)
                await steps[scenario](round_no)
    finally:
        await lab.cleanup()
    results["runs"] = runner.runs
    results["failures"] = runner.failures
    results["discarded_busy_runs"] = runner.discarded
    results["quiet_wait"] = {
        "max_wait_seconds": machine.QUIET.max_wait,
        "waited_seconds": round(machine.QUIET.waited, 1),
        "runs_started_while_busy": machine.QUIET.gave_up,
    }
    results["peer_payload_bytes"] = lab.pad + PEER_PAYLOAD_OVERHEAD
    results["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    results["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    results["summary"] = report.summarise(results)
    rows = report.build_rows(results)
    results["table"] = [row.__dict__ for row in rows]
    print()
    print(report.render_table(rows))
    print(report.interference_line(results))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = report.write_json(results, args.output or report.RESULTS_DIR / f"realtime-{stamp}.json")
    print(f"\n{results['elapsed_seconds']} s; results written to {path}")
    return 1 if runner.failures else 0


def _git_state() -> dict[str, Any]:
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args],
                capture_output=True,
                text=True,
                check=True,
                cwd=Path(__file__).parent,
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "src_changed": bool(git("status", "--porcelain", "--", "../../src/tidings/realtime")),
    }


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _node_versions() -> dict[str, str | None]:
    import subprocess

    from bench.realtime.servers import BENCH_DIR, NODE

    versions: dict[str, str | None] = {}
    try:
        versions["node"] = subprocess.run(
            [NODE, "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        versions["node"] = None
    for package in ("ws", "socket.io", "socket.io-client", "bufferutil", "utf-8-validate"):
        manifest = BENCH_DIR / "node_modules" / package / "package.json"
        try:
            versions[package] = json.loads(manifest.read_text(encoding="utf-8"))["version"]
        except (OSError, ValueError, KeyError):
            versions[package] = None
    return versions


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        print(report.render_markdown(json.loads(args.render.read_text(encoding="utf-8"))))
        return 0
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
