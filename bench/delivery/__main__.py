"""Send API and delivery: Tidings on both profiles next to BullMQ, on the same machine.

Run: `python -m bench.delivery [--quick] [--profiles embedded,scaled] [--rounds N]`.

Three measurements, each for Tidings embedded (SQLite, `tidings serve` with its in-process
worker), Tidings scaled (PostgreSQL + Redis, `tidings serve` + `tidings worker` processes) and
a BullMQ peer (a Node HTTP front end calling `queue.add`/`addBulk`, and Node BullMQ workers):

1. **Accept**: a Node load client (keep-alive) sends closed-loop for `--seconds`: single sends
   from `--clients` connections, then batches (`--batch-sizes`, from `--batch-clients`
   connections, counting messages). Every message has `send_at` a day ahead (BullMQ: `delay`),
   so no delivery runs while accepts are measured, and the worker stays configured as usual.
2. **Delivery**: the provider holds every request (a gate); a backlog of `--backlog` messages
   is preloaded (Tidings: the batch API, 500 per request; BullMQ: `addBulk`); once every
   worker slot is waiting at the gate, it opens. Deliveries/s = backlog ÷ (gate opened → the
   provider answered the last one); then the bench confirms every message `sent` in the
   database (BullMQ: `completed` in the queue). 1 and 2 worker processes at `--concurrency`
   each. The ceiling is concurrency x processes ÷ provider delay.
3. **Latency**: `--latency-rate` single sends/s, open loop, for `--latency-seconds` (+2 s
   discarded), provider answering after `--provider-delay-ms`; accept (the 202) → the provider
   received the delivery, p50/p99, and the API latency from the intended send time. Scaled is
   measured twice: with one `tidings worker` process, and with the worker inside `serve`
   (`tidings-scaled-serve-worker`, TIDINGS_SERVE_RUNS_WORKER=true), where an accepted job is
   handed to the worker in memory (still leased in PostgreSQL) instead of through the stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import asyncpg
import httpx

from bench import machine
from bench.profiles import (
    POSTGRES_ADMIN_DSN,
    REDIS_URL,
    Stores,
    _drop_database,
    _recreate_database,
    new_run_tag,
)
from bench.realtime.loadclient import ensure_node_modules
from bench.realtime.procs import cpu_seconds
from bench.report import RESULTS_DIR
from bench.stats import Latency, Spread
from tidings.db import migrate

HERE = Path(__file__).resolve().parent
BENCH_DIR = HERE.parent
NODE = "node"
TIDINGS_BIN = str(Path(sys.executable).parent / "tidings")
DATABASE = "tidings_bench_delivery"
PASSWORD = "correct horse battery staple"  # noqa: S105 - a benchmark account
SIGNING_SECRET = "bench-signing-secret-0123456789"  # noqa: S105 - the bench's provider
PRELOAD_CHUNK = 500
TARGET_BATCH_VS_SINGLE = 10.0
TARGET_VS_BULLMQ = 1.0
TARGET_OF_CEILING = 0.9
# The scaled profile with its worker inside `serve` (TIDINGS_SERVE_RUNS_WORKER=true): latency only.
SCALED_IN_SERVE = "tidings-scaled-serve-worker"
SYSTEMS = ("tidings-embedded", "tidings-scaled", SCALED_IN_SERVE, "bullmq")
LOG_DIR: Path | None = None  # where the processes' logs go (kept with the results)
PARTIAL: Path | None = None  # rounds so far, rewritten after every system


@dataclass(frozen=True)
class Params:
    profiles: list[str]
    rounds: int
    seconds: float
    warmup: float
    clients: int
    batch_sizes: list[int]
    batch_clients: int
    concurrency: int
    workers: list[int]
    backlog: int
    provider_delay_ms: float
    latency_rate: float
    latency_seconds: float
    latency_discard: float = 2.0
    sections: tuple[str, ...] = ("accept", "delivery", "latency")
    peer: bool = True
    py_spy: str | None = None  # profile Tidings' delivery processes while the backlog drains
    # Jobs a Tidings worker process holds (TIDINGS_WORKER_CONCURRENCY); at most `concurrency`
    # of them call the provider at once (the connector's max_concurrency), the others are read
    # or written meanwhile. 0 in results saved before the option existed.
    worker_jobs: int = 0


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Proc:
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    async def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                await asyncio.to_thread(self.process.wait, 30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait, 10)


def _spawn(command: list[str], env: dict[str, str], log: Path, *, pipe: bool = False) -> Proc:
    output: IO[bytes]
    with log.open("ab") as output:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE if pipe else output,
            stderr=output,
            cwd=BENCH_DIR,
        )
    return Proc(process, log)


async def _first_json_line(proc: Proc, limit: float = 30.0) -> dict[str, Any]:
    assert proc.process.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.process.stdout.readline), limit)
    if not line:
        raise RuntimeError(f"{proc.process.args!r} exited:\n{proc.log.read_text()[-3000:]}")
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def _node_env() -> dict[str, str]:
    return {**os.environ, "NODE_PATH": str(BENCH_DIR / "node_modules")}


async def _node(script: str, args: list[str], log: Path) -> tuple[Proc, dict[str, Any]]:
    proc = _spawn([NODE, str(HERE / script), *args], _node_env(), log, pipe=True)
    try:
        return proc, await _first_json_line(proc)
    except BaseException:
        await proc.stop()
        raise


async def _node_once(script: str, args: list[str], log: Path, limit: float) -> dict[str, Any]:
    proc = _spawn([NODE, str(HERE / script), *args], _node_env(), log, pipe=True)
    try:
        assert proc.process.stdout is not None
        out = await asyncio.wait_for(asyncio.to_thread(proc.process.stdout.read), limit)
        await asyncio.to_thread(proc.process.wait, 10)
        if proc.process.returncode != 0 or not out.strip():
            raise RuntimeError(f"{script} {args[:1]} failed, see {log}")
        parsed: dict[str, Any] = json.loads(out.splitlines()[-1])
        return parsed
    finally:
        await proc.stop()


# -- the provider ------------------------------------------------------------------------------


class Provider:
    def __init__(self, proc: Proc, port: int) -> None:
        self.proc = proc
        self.base = f"http://127.0.0.1:{port}"
        self.url = f"{self.base}/hook"
        self._http = httpx.AsyncClient(base_url=self.base, timeout=30)

    @classmethod
    async def start(cls, log: Path, delay_ms: float) -> Provider:
        proc, ready = await _node("provider.js", ["--delay-ms", str(delay_ms)], log)
        return cls(proc, int(ready["port"]))

    async def control(self, action: str, **params: Any) -> dict[str, Any]:
        method = "GET" if action in ("stats", "receipts") else "POST"
        response = await self._http.request(method, f"/_ctl/{action}", params=params)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    async def turnarounds(self) -> Latency:
        """From each answer to the next request on that connection: the client's time between
        two calls on one slot (what keeps a worker below the ceiling)."""
        response = await self._http.get("/_ctl/turnarounds")
        response.raise_for_status()
        return Latency.of_seconds([gap / 1000 for _, gap in response.json()])

    async def wait(self, key: str, count: int, limit: float) -> dict[str, Any]:
        deadline = time.perf_counter() + limit
        while True:
            stats = await self.control("stats")
            if stats[key] >= count:
                return stats
            if time.perf_counter() > deadline:
                raise TimeoutError(f"provider: {key} {stats[key]} of {count} after {limit} s")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self._http.aclose()
        await self.proc.stop()


# -- Tidings -----------------------------------------------------------------------------------


class DeliveryStores(Stores):
    """bench.profiles.Stores with this bench's own PostgreSQL database, so it can run while
    `python -m bench` (which uses `tidings_bench`) runs too."""

    async def prepare(self, profiles: list[str]) -> None:
        await super().prepare([p for p in profiles if p == "embedded"])
        if "scaled" in profiles:
            await _recreate_database(DATABASE)
            admin = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0]
            url = f"{admin.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{DATABASE}"
            await migrate.upgrade_async(url)
            self._postgres_url = url

    async def cleanup(self) -> None:
        scaled = self._postgres_url is not None
        self._postgres_url = None
        self._redis_used = True
        await super().cleanup()
        if scaled:
            await _drop_database(DATABASE)


def _tidings_env(
    database_url: str,
    data_dir: Path,
    redis: tuple[str, str] | None,
    port: int,
    concurrency: int,
    *,
    worker_in_serve: bool = False,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(
        TIDINGS_DATA_DIR=str(data_dir),
        TIDINGS_DATABASE_URL=database_url,
        TIDINGS_PORT=str(port),
        TIDINGS_LOG_LEVEL="warning",
        TIDINGS_JWT_SECRET=secrets.token_urlsafe(48),
        TIDINGS_MASTER_KEY=secrets.token_urlsafe(32),
        TIDINGS_ARGON2_TIME_COST="2",
        TIDINGS_ARGON2_MEMORY_KIB="19456",
        TIDINGS_ARGON2_PARALLELISM="1",
        TIDINGS_OUTBOUND_ALLOW_NETWORKS="127.0.0.0/8",
        # The gate holds the first deliveries while the backlog is preloaded.
        TIDINGS_OUTBOUND_TIMEOUT_SECONDS="120",
        TIDINGS_WORKER_CONCURRENCY=str(concurrency),
        **{
            f"TIDINGS_RATE_LIMIT_{name}": "100000000/minute"
            for name in ("IP", "USER", "API_KEY", "LOGIN", "REGISTER", "REFRESH")
        },
    )
    if redis is not None:
        env.update(TIDINGS_REDIS_URL=redis[0], TIDINGS_REDIS_PREFIX=redis[1])
    if worker_in_serve:
        env.update(TIDINGS_SERVE_RUNS_WORKER="true")
    return env


@dataclass
class TidingsStack:
    profile: str
    base: str
    key: str
    serve: Proc
    database_url: str
    env: dict[str, str]
    log_dir: Path
    name: str
    workers: list[Proc] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [self.serve.pid, *(w.pid for w in self.workers)]

    @property
    def worker_pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    async def start_workers(self, count: int) -> None:
        for index in range(count):
            log = self.log_dir / f"{self.name}-worker-{index}.log"
            self.workers.append(_spawn([TIDINGS_BIN, "worker"], self.env, log))

    async def count_sent(self) -> int:
        query = "SELECT count(*) FROM outbound_messages WHERE status = 'sent'"
        if self.profile == "embedded":
            path = self.database_url.split("///", 1)[1]

            def count() -> int:
                with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                    return int(db.execute(query).fetchone()[0])

            return await asyncio.to_thread(count)
        conn = await asyncpg.connect(self.database_url.replace("+asyncpg", "", 1))
        try:
            return int(await conn.fetchval(query))
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def tidings_stack(
    stores: DeliveryStores,
    profile: str,
    params: Params,
    provider: Provider,
    *,
    worker_in_serve: bool = False,
) -> AsyncIterator[TidingsStack]:
    deployment = await stores.fresh(profile)
    port = free_port()
    redis = (deployment.redis_url, deployment.redis_prefix) if deployment.redis_url else None
    env = _tidings_env(
        deployment.database_url,
        deployment.data_dir,
        redis,
        port,
        params.worker_jobs,
        worker_in_serve=worker_in_serve,
    )
    log_dir = LOG_DIR or deployment.data_dir
    name = f"{profile}-{deployment.data_dir.name}"
    serve = _spawn([TIDINGS_BIN, "serve"], env, log_dir / f"{name}-serve.log")
    base = f"http://127.0.0.1:{port}"
    stack: TidingsStack | None = None
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(600):
                if serve.process.poll() is not None:
                    raise RuntimeError(f"tidings serve exited:\n{serve.log.read_text()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"{base}/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        key = await _prepare_tidings(base, provider.url, params.concurrency)
        stack = TidingsStack(profile, base, key, serve, deployment.database_url, env, log_dir, name)
        yield stack
    finally:
        for proc in [*(stack.workers if stack is not None else []), serve]:
            await proc.stop()


async def _prepare_tidings(base: str, provider_url: str, concurrency: int) -> str:
    """An account, a workspace, an API key with messages:send and a webhook connector.

    The connector allows `concurrency` provider calls at once per worker process: the provider
    sees what BullMQ's worker at that concurrency gives it.
    """
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        registered = await http.post(
            "/api/v1/auth/register",
            json={"email": "sender@example.com", "password": PASSWORD, "display_name": "sender"},
        )
        registered.raise_for_status()
        owner = {"Authorization": f"Bearer {registered.json()['tokens']['access_token']}"}
        created = await http.post("/api/v1/workspaces", json={"name": "Sends"}, headers=owner)
        created.raise_for_status()
        workspace = created.json()["id"]
        key = await http.post(
            f"/api/v1/workspaces/{workspace}/api-keys",
            json={"name": "bench", "scopes": ["messages:send"]},
            headers=owner,
        )
        key.raise_for_status()
        connector = await http.post(
            f"/api/v1/workspaces/{workspace}/connectors",
            json={
                "type": "webhook",
                "name": "hook",
                "settings": {"url": provider_url},
                "credentials": {"signing_secret": SIGNING_SECRET},
                "max_concurrency": concurrency,
            },
            headers=owner,
        )
        connector.raise_for_status()
        return f"Bearer {key.json()['key']}"


async def _preload_http(base: str, auth: str, count: int) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=300, headers={"Authorization": auth}) as c:
        for start in range(0, count, PRELOAD_CHUNK):
            messages = [
                {
                    "to": f"user-{i}@example.com",
                    "connector": "hook",
                    "content": {"text": f"backlog message {i}"},
                }
                for i in range(start, min(count, start + PRELOAD_CHUNK))
            ]
            response = await c.post("/api/v1/messages/batch", json={"messages": messages})
            if response.status_code != 202:
                raise RuntimeError(f"preload: {response.status_code} {response.text[:300]}")


# -- BullMQ ------------------------------------------------------------------------------------


@dataclass
class BullStack:
    base: str
    api: Proc
    redis_args: list[str]
    log_dir: Path
    workers: list[Proc] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [self.api.pid, *(w.pid for w in self.workers)]

    async def start_workers(self, count: int, concurrency: int, provider: Provider) -> None:
        for index in range(count):
            proc, _ = await _node(
                "peer_bullmq.js",
                [
                    "worker",
                    *self.redis_args,
                    "--concurrency",
                    str(concurrency),
                    "--url",
                    provider.url,
                    "--secret",
                    SIGNING_SECRET,
                ],
                self.log_dir / f"bullmq-worker-{index}.log",
            )
            self.workers.append(proc)

    async def counts(self) -> dict[str, Any]:
        return await _node_once(
            "peer_bullmq.js", ["counts", *self.redis_args], self.log_dir / "bullmq.log", 60
        )


@contextlib.asynccontextmanager
async def bull_stack(stores: DeliveryStores, log_dir: Path) -> AsyncIterator[BullStack]:
    queue = f"q{secrets.token_hex(4)}"
    redis_args = [
        "--redis",
        stores.redis_url_for_peers(),
        "--prefix",
        f"bench:{stores.run_tag}:bull",
        "--queue",
        queue,
    ]
    api, ready = await _node("peer_bullmq.js", ["api", *redis_args], log_dir / "bullmq-api.log")
    stack = BullStack(f"http://127.0.0.1:{ready['port']}", api, redis_args, log_dir)
    try:
        yield stack
    finally:
        for proc in [*stack.workers, api]:
            await proc.stop()


# -- measurements ------------------------------------------------------------------------------


async def _pg_counters() -> dict[str, int]:
    """Commits and rows written/read in the bench database so far (pg_stat_database)."""
    admin = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0]
    conn = await asyncpg.connect(f"{admin}/{DATABASE}")
    try:
        row = await conn.fetchrow(
            "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted, tup_returned "
            "FROM pg_stat_database WHERE datname = $1",
            DATABASE,
        )
        # Rows read by sequential scans, per table: where a tup_returned that is high per
        # delivery comes from (the statistics collector lags by up to half a second).
        scans = await conn.fetch(
            "SELECT relname, seq_tup_read FROM pg_stat_user_tables WHERE seq_tup_read > 0"
        )
        indexes = await conn.fetch(
            "SELECT indexrelname, idx_tup_read FROM pg_stat_user_indexes WHERE idx_tup_read > 0"
        )
        return {
            **dict(row),
            **{f"seq_rows:{r['relname']}": r["seq_tup_read"] for r in scans},
            **{f"index_rows:{r['indexrelname']}": r["idx_tup_read"] for r in indexes},
        }
    finally:
        await conn.close()


async def _load(args: list[str], log: Path, limit: float) -> dict[str, Any]:
    return await _node_once("load.js", args, log, limit)


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def _start_spies(params: Params, targets: list[tuple[str, int]]) -> list[subprocess.Popen[bytes]]:
    if LOG_DIR is None:
        return []
    return machine.start_profiles(params.py_spy, targets, LOG_DIR)


_stop_spies = machine.stop_profiles


def _without_ours(cpu: dict[str, float], *ours: float) -> dict[str, float]:
    """The meter's figures with the systems under test, the load client and the provider
    taken out of "other": they are not the bench process, but they are not interference."""
    others = max(0.0, cpu["other_cpu_percent"] - sum(ours))
    return {**cpu, "other_cpu_percent": round(others, 1)}


async def measure_accept(
    base: str,
    auth: str,
    pids: list[int],
    params: Params,
    log: Path,
    profile_as: str | None = None,
) -> dict[str, Any]:
    """Closed-loop single sends, then batches; every message scheduled a day ahead."""
    send_at = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    runs: dict[str, Any] = {}
    plans = [("single", 0, params.clients)] + [
        (f"batch{size}", size, params.batch_clients) for size in params.batch_sizes
    ]
    for name, batch, clients in plans:
        await machine.QUIET.wait()
        meter = machine.CpuMeter(database=DATABASE)
        meter.start()
        before, wall = _cpu(pids), time.perf_counter()
        spies = _start_spies(
            params, [(f"{profile_as}-accept-{name}", pids[0])] if profile_as else []
        )
        result = await _load(
            [
                "--mode", "closed",
                "--url", f"{base}/api/v1/messages",
                "--auth", auth,
                "--concurrency", str(clients),
                "--seconds", str(params.seconds),
                "--warmup", str(params.warmup),
                "--batch", str(batch),
                "--send-at", send_at,
            ],
            log,
            params.seconds + params.warmup + 120,
        )  # fmt: skip
        elapsed = time.perf_counter() - wall
        await _stop_spies(spies)
        result["server_cpu_percent"] = round(100 * (_cpu(pids) - before) / elapsed, 1)
        result.update(
            _without_ours(
                meter.stop(), result["server_cpu_percent"], result.get("client_cpu_percent", 0.0)
            )
        )
        runs[name] = result
    return runs


async def measure_delivery(
    provider: Provider,
    workers: int,
    params: Params,
    preload: Any,
    slots_ready: int,
    pids: Any,
    confirm: Any,
    profile: list[tuple[str, int]] | None = None,
    db_counters: bool = False,
) -> dict[str, Any]:
    """Gate closed, backlog preloaded, every slot waiting at the gate: open it, time the drain."""
    await provider.control("delay", ms=params.provider_delay_ms)
    await provider.control("reset")
    await provider.control("hold")
    await preload()
    await provider.wait("held", slots_ready, limit=120)
    await asyncio.sleep(0.3)  # a held count above the slots would show a leak of slots
    held = (await provider.control("stats"))["held"]
    await machine.QUIET.wait()
    meter = machine.CpuMeter(database=DATABASE)
    meter.start()
    provider_before = cpu_seconds(provider.proc.pid)
    before = _cpu(pids())
    db_before = await _pg_counters() if db_counters else None
    named = [(str(i), pid) for i, pid in enumerate(pids())]
    by_process = {name: cpu_seconds(pid) for name, pid in named}
    spies = _start_spies(params, profile or [])
    released = await provider.control("release")
    wall = time.perf_counter()
    stats = await provider.wait("completed", params.backlog, limit=max(120, params.backlog / 20))
    elapsed_wall = time.perf_counter() - wall
    await _stop_spies(spies)
    cpu = meter.stop()
    server_cpu = _cpu(pids()) - before
    provider_cpu = cpu_seconds(provider.proc.pid) - provider_before
    drain_s = (stats["last_completed_ms"] - released["released_ms"]) / 1000
    by_process = {
        name: round(1000 * (cpu_seconds(pid) - by_process[name]) / params.backlog, 3)
        for name, pid in named
    }
    confirm_started = time.perf_counter()
    confirmed = await confirm()
    db_per_delivery = None
    if db_before is not None:
        # Includes the confirming count(*) queries: a handful in total, not per delivery.
        after = await _pg_counters()
        db_per_delivery = {
            k: round((after[k] - db_before.get(k, 0)) / params.backlog, 2)
            for k in after
            if after[k] != db_before.get(k, 0)
        }
    rate = params.backlog / drain_s
    ceiling = workers * params.concurrency / (params.provider_delay_ms / 1000)
    await asyncio.sleep(0.3)
    final = await provider.control("stats")
    turnaround = await provider.turnarounds()
    return {
        "workers": workers,
        "concurrency_per_worker": params.concurrency,
        "worker_jobs": params.worker_jobs,
        "backlog": params.backlog,
        "held_at_gate": held,
        "drain_seconds": round(drain_s, 3),
        "deliveries_per_s": round(rate, 1),
        "ceiling_per_s": round(ceiling, 1),
        "of_ceiling": round(rate / ceiling, 3),
        "provider_received": final["received"],
        "turnaround_ms": turnaround.as_dict(),
        "duplicates": final["received"] - params.backlog,
        "confirmed": confirmed,
        "confirm_seconds_after_last_answer": round(time.perf_counter() - confirm_started, 3),
        "server_cpu_percent": round(100 * server_cpu / elapsed_wall, 1),
        "server_cpu_ms_per_delivery": round(1000 * server_cpu / params.backlog, 3),
        # Process 0 is `tidings serve` (BullMQ: the API), then the workers.
        "cpu_ms_per_delivery_by_process": by_process,
        "postgres_per_delivery": db_per_delivery,
        "provider_cpu_percent": round(100 * provider_cpu / elapsed_wall, 1),
        **_without_ours(cpu, 100 * server_cpu / elapsed_wall, 100 * provider_cpu / elapsed_wall),
    }


async def measure_latency(
    provider: Provider,
    base: str,
    auth: str,
    pids: list[int],
    params: Params,
    log: Path,
    profile: list[tuple[str, int]] | None = None,
) -> dict[str, Any]:
    """Open-loop single sends; accept (202) → provider receipt for each accepted message."""
    await provider.control("delay", ms=params.provider_delay_ms)
    await provider.control("reset")
    # Warm-up: the worker is up and the connector's client is connected.
    warm = await _load(
        [
            "--mode", "open", "--url", f"{base}/api/v1/messages", "--auth", auth,
            "--rate", "50", "--seconds", "1", "--concurrency", "64",
        ],
        log,
        120,
    )  # fmt: skip
    await provider.wait("received", len(warm["accepted"]), limit=120)
    await provider.control("reset")
    await machine.QUIET.wait()
    meter = machine.CpuMeter(database=DATABASE)
    meter.start()
    spies = _start_spies(params, profile or [])
    before, wall = _cpu(pids), time.perf_counter()
    seconds = params.latency_seconds + params.latency_discard
    result = await _load(
        [
            "--mode", "open", "--url", f"{base}/api/v1/messages", "--auth", auth,
            "--rate", str(params.latency_rate), "--seconds", str(seconds), "--concurrency", "256",
            "--timeout-ms", "30000",
        ],
        log,
        seconds + 120,
    )  # fmt: skip
    accepted = result.pop("accepted")
    # A system that cannot keep up leaves a backlog: wait for it at most 30 s, then count what
    # has not arrived as missing (reported; its latency would be above everything measured).
    with contextlib.suppress(TimeoutError):
        await provider.wait("received", len(accepted), limit=30)
    elapsed = time.perf_counter() - wall
    cpu = meter.stop()
    server_cpu = _cpu(pids) - before
    await _stop_spies(spies)
    receipts = await provider.control("receipts")
    start = min((item[1] for item in accepted), default=0.0)
    cut = start + params.latency_discard * 1000
    kept = [item for item in accepted if item[1] >= cut]
    to_receipt = [(receipts[i] - done) / 1000 for i, _, done in kept if i in receipts]
    api = [(done - intended) / 1000 for _, intended, done in kept]
    return {
        "offered_per_s": params.latency_rate,
        "seconds": params.latency_seconds,
        "sent": result["sent"],
        "accepted": len(accepted),
        "measured": len(kept),
        "missing_at_provider": len(kept) - len(to_receipt),
        "statuses": result["statuses"],
        "first_error": result["first_error"],
        "sent_late_over_5ms": result["sent_late_over_5ms"],
        "accept_to_receipt_ms": Latency.of_seconds(to_receipt).as_dict(),
        "api_ms": Latency.of_seconds(api).as_dict(),
        "client_cpu_percent": result.get("client_cpu_percent"),
        "server_cpu_percent": round(100 * server_cpu / elapsed, 1),
        **cpu,
    }


# -- one system, one round ---------------------------------------------------------------------


async def run_tidings(
    stores: DeliveryStores,
    profile: str,
    provider: Provider,
    params: Params,
    log_dir: Path,
    out: dict[str, Any],
) -> dict[str, Any]:
    """Fills `out` as it goes: a failure keeps what was measured before it."""
    await provider.control("reset")
    if profile == SCALED_IN_SERVE.removeprefix("tidings-"):
        # The scaled profile with the worker inside `serve` (TIDINGS_SERVE_RUNS_WORKER): only
        # the latency differs (an accepted job is handed to the worker in memory, still
        # leased in PostgreSQL); deliveries/s are measured with worker processes.
        if "latency" in params.sections:
            out["latency"] = await _tidings_latency(
                stores, "scaled", provider, params, log_dir, worker_in_serve=True
            )
        return out
    if "accept" in params.sections:
        async with tidings_stack(stores, profile, params, provider) as stack:
            out["accept"] = await measure_accept(
                stack.base, stack.key, stack.pids, params, log_dir / "load.log", stack.name
            )
    out["delivery"] = {}
    # Embedded, the worker runs inside `tidings serve` (`tidings worker` refuses the profile).
    worker_counts = params.workers if profile == "scaled" else [1]
    if "delivery" not in params.sections:
        worker_counts = []
    for workers in worker_counts:
        async with tidings_stack(stores, profile, params, provider) as stack:
            if profile == "scaled":
                await stack.start_workers(workers)
            current = stack

            async def confirm(s: TidingsStack = current) -> dict[str, Any]:
                deadline = time.perf_counter() + 120
                while (sent := await s.count_sent()) < params.backlog:
                    if time.perf_counter() > deadline:
                        break
                    await asyncio.sleep(0.05)
                return {"sent": sent, "all_sent": sent == params.backlog}

            out["delivery"][str(workers)] = await measure_delivery(
                provider,
                workers,
                params,
                preload=lambda s=current: _preload_http(s.base, s.key, params.backlog),
                slots_ready=workers * params.concurrency,
                pids=lambda s=current: s.pids,
                confirm=confirm,
                db_counters=profile == "scaled",
                profile=[
                    (f"{current.name}-{'serve' if profile == 'embedded' else f'worker{i}'}", pid)
                    for i, pid in enumerate(
                        [current.serve.pid] if profile == "embedded" else current.worker_pids
                    )
                ],
            )
    if "latency" in params.sections:
        out["latency"] = await _tidings_latency(stores, profile, provider, params, log_dir)
    return out


async def _tidings_latency(
    stores: DeliveryStores,
    profile: str,
    provider: Provider,
    params: Params,
    log_dir: Path,
    *,
    worker_in_serve: bool = False,
) -> dict[str, Any]:
    async with tidings_stack(
        stores, profile, params, provider, worker_in_serve=worker_in_serve
    ) as stack:
        if profile == "scaled" and not worker_in_serve:
            await stack.start_workers(1)
        return await measure_latency(
            provider,
            stack.base,
            stack.key,
            stack.pids,
            params,
            log_dir / "load.log",
            profile=[
                (f"{stack.name}-latency-{name}", pid)
                for name, pid in [("serve", stack.serve.pid)]
                + [(f"worker{i}", pid) for i, pid in enumerate(stack.worker_pids)]
            ],
        )


async def run_bullmq(
    stores: DeliveryStores, provider: Provider, params: Params, log_dir: Path, out: dict[str, Any]
) -> dict[str, Any]:
    await provider.control("reset")
    if "accept" in params.sections:
        async with bull_stack(stores, log_dir) as stack:
            out["accept"] = await measure_accept(
                stack.base, "Bearer bench", stack.pids, params, log_dir / "load.log"
            )
    out["delivery"] = {}
    for workers in params.workers if "delivery" in params.sections else []:
        async with bull_stack(stores, log_dir) as stack:
            await stack.start_workers(workers, params.concurrency, provider)
            current = stack

            async def preload(s: BullStack = current) -> None:
                await _node_once(
                    "peer_bullmq.js",
                    ["preload", *s.redis_args, "--count", str(params.backlog)],
                    log_dir / "bullmq.log",
                    300,
                )

            async def confirm(s: BullStack = current) -> dict[str, Any]:
                deadline = time.perf_counter() + 120
                while (counts := await s.counts())["completed"] < params.backlog:
                    if time.perf_counter() > deadline:
                        break
                    await asyncio.sleep(0.05)
                return {**counts, "all_sent": counts["completed"] == params.backlog}

            out["delivery"][str(workers)] = await measure_delivery(
                provider,
                workers,
                params,
                preload=preload,
                slots_ready=workers * params.concurrency,
                pids=lambda s=current: s.pids,
                confirm=confirm,
            )
    if "latency" in params.sections:
        async with bull_stack(stores, log_dir) as stack:
            await stack.start_workers(1, params.concurrency, provider)
            out["latency"] = await measure_latency(
                provider, stack.base, "Bearer bench", stack.pids, params, log_dir / "load.log"
            )
    return out


async def run(params: Params, log_dir: Path) -> dict[str, Any]:
    stores = DeliveryStores(new_run_tag())
    systems = [f"tidings-{p}" for p in params.profiles]
    if "scaled" in params.profiles and "latency" in params.sections:
        systems.append(SCALED_IN_SERVE)
    systems += ["bullmq"] if params.peer else []
    rounds: list[dict[str, Any]] = []
    provider: Provider | None = None
    try:
        await stores.prepare(params.profiles)
        provider = await Provider.start(log_dir / "provider.log", params.provider_delay_ms)
        for number in range(params.rounds):
            order = systems[number % len(systems) :] + systems[: number % len(systems)]
            current: dict[str, Any] = {}
            rounds.append(current)
            for system in order:
                print(f"  round {number + 1}: {system}", flush=True)
                current[system] = {}
                try:
                    if system == "bullmq":
                        await run_bullmq(stores, provider, params, log_dir, current[system])
                    else:
                        profile = system.removeprefix("tidings-")
                        await run_tidings(
                            stores, profile, provider, params, log_dir, current[system]
                        )
                except Exception as exc:  # a failed run is recorded, the others go on
                    print(f"    {system} failed: {type(exc).__name__}: {exc}", flush=True)
                    current.setdefault("failed", {})[system] = f"{type(exc).__name__}: {exc}"
                if PARTIAL is not None:  # what was measured so far survives a crash
                    PARTIAL.write_text(  # noqa: ASYNC240 - small, between runs
                        json.dumps({"rounds": rounds}, indent=2), encoding="utf-8"
                    )
    finally:
        if provider is not None:
            await provider.close()
        await stores.cleanup()
    return {"rounds": rounds, "summary": summarize(rounds, params, systems)}


# -- summary and table -------------------------------------------------------------------------


def _spread(values: list[float]) -> dict[str, Any]:
    return Spread.of(values).as_dict()


def summarize(rounds: list[dict[str, Any]], params: Params, systems: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for system in systems:
        entry: dict[str, Any] = {"accept": {}, "delivery": {}, "latency": {}}
        runs = [r[system] for r in rounds if r.get(system, {}).get("accept")]
        for name in runs[0]["accept"] if runs else []:
            entry["accept"][name] = {
                "messages_per_s": _spread([r["accept"][name]["messages_per_s"] for r in runs]),
                "p50_ms": _spread([r["accept"][name]["latency_ms"]["p50"] for r in runs]),
                "p99_ms": _spread([r["accept"][name]["latency_ms"]["p99"] for r in runs]),
            }
        for name in [n for n in entry["accept"] if n.startswith("batch")]:
            entry["accept"][name]["vs_single"] = _spread(
                [
                    r["accept"][name]["messages_per_s"] / r["accept"]["single"]["messages_per_s"]
                    for r in runs
                    if r["accept"]["single"]["messages_per_s"]
                ]
            )
        runs = [r[system] for r in rounds if r.get(system, {}).get("delivery")]
        for workers in runs[0]["delivery"] if runs else []:
            entry["delivery"][workers] = {
                "deliveries_per_s": _spread(
                    [r["delivery"][workers]["deliveries_per_s"] for r in runs]
                ),
                "of_ceiling": _spread([r["delivery"][workers]["of_ceiling"] for r in runs]),
                "server_cpu_ms_per_delivery": _spread(
                    [r["delivery"][workers]["server_cpu_ms_per_delivery"] for r in runs]
                ),
                "all_confirmed": all(r["delivery"][workers]["confirmed"]["all_sent"] for r in runs),
                # Results from before the provider measured turnarounds have none.
                "turnaround_p50_ms": _spread(
                    [
                        r["delivery"][workers].get("turnaround_ms", {}).get("p50", math.nan)
                        for r in runs
                    ]
                ),
                "turnaround_p99_ms": _spread(
                    [
                        r["delivery"][workers].get("turnaround_ms", {}).get("p99", math.nan)
                        for r in runs
                    ]
                ),
            }
        runs = [r[system] for r in rounds if r.get(system, {}).get("latency")]
        if runs:
            entry["latency"]["reached_provider"] = _spread(
                [
                    (r["latency"]["measured"] - r["latency"]["missing_at_provider"])
                    / max(1, r["latency"]["measured"])
                    for r in runs
                ]
            )
        for key in ("accept_to_receipt_ms", "api_ms") if runs else ():
            entry["latency"][key] = {
                q: _spread([r["latency"][key][q] for r in runs]) for q in ("p50", "p99", "max")
            }
        summary[system] = entry
    ratios: dict[str, Any] = {}

    def paired(system: str, section: str) -> list[dict[str, Any]]:
        """The rounds in which both this system and BullMQ ran `section` (ratios are taken
        within a round)."""
        return [r for r in rounds if all(r.get(s, {}).get(section) for s in (system, "bullmq"))]

    for system in [s for s in systems if s.startswith("tidings-")]:
        delivered = paired(system, "delivery")
        for workers in delivered[0][system]["delivery"] if delivered else []:
            pairs = [r for r in delivered if workers in r["bullmq"]["delivery"]]
            if pairs:
                ratios[f"{system}/bullmq delivery {workers}w"] = _spread(
                    [
                        r[system]["delivery"][workers]["deliveries_per_s"]
                        / r["bullmq"]["delivery"][workers]["deliveries_per_s"]
                        for r in pairs
                    ]
                )
        if timed := paired(system, "latency"):
            ratios[f"{system}/bullmq accept→receipt p99"] = _spread(
                [
                    r[system]["latency"]["accept_to_receipt_ms"]["p99"]
                    / r["bullmq"]["latency"]["accept_to_receipt_ms"]["p99"]
                    for r in timed
                ]
            )
        if accepted := paired(system, "accept"):
            ratios[f"{system}/bullmq single accepts"] = _spread(
                [
                    r[system]["accept"]["single"]["messages_per_s"]
                    / r["bullmq"]["accept"]["single"]["messages_per_s"]
                    for r in accepted
                ]
            )
    summary["ratios"] = ratios
    return summary


def _f(spread: dict[str, Any], digits: int = 0, unit: str = "") -> str:
    median = spread["median"]
    if median is None:
        return "n/a"
    text = f"{median:,.{digits}f}{unit}"
    if len(spread["values"]) > 1:
        text += f" [{spread['min']:,.{digits}f}-{spread['max']:,.{digits}f}]"
    return text


def _pct(spread: dict[str, Any]) -> str:
    scaled = {k: (v * 100 if isinstance(v, (int, float)) else v) for k, v in spread.items()}
    return _f(scaled, 0, " %")


def render(results: dict[str, Any]) -> str:
    summary = results["summary"]
    params = results["params"]
    systems = [s for s in summary if s != "ratios"]
    ratios = summary["ratios"]
    lines = [
        "Accept (closed loop, send_at +1 day): messages/s and request latency p50 / p99 ms",
        "",
        "| system | kind | messages/s | p50 ms | p99 ms | vs single (target batch ≥ 10x) |",
        "|---|---|---|---|---|---|",
    ]
    for system in systems:
        for name, item in summary[system]["accept"].items():
            vs = item.get("vs_single")
            verdict = ""
            if vs is not None and vs["median"] is not None:
                met = vs["median"] >= TARGET_BATCH_VS_SINGLE
                verdict = f"{_f(vs, 1, 'x')} {'met' if met else 'missed'}"
            lines.append(
                f"| {system} | {name} | {_f(item['messages_per_s'])} | {_f(item['p50_ms'], 1)} "
                f"| {_f(item['p99_ms'], 1)} | {verdict} |"
            )
    ceiling = params["concurrency"] / (params["provider_delay_ms"] / 1000)
    lines += [
        "",
        f"Delivery to a {params['provider_delay_ms']:g} ms provider, backlog {params['backlog']:,}, "
        f"concurrency {params['concurrency']} per worker process (ceiling {ceiling:,.0f}/s per "
        "process)",
        "",
        "| system | workers | deliveries/s | % of ceiling (≥ 90 %) | vs BullMQ (≥ 1.0x) "
        "| server CPU ms/delivery | slot turnaround p50 / p99 ms | all sent |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for system in systems:
        for workers, item in summary[system]["delivery"].items():
            ratio = ratios.get(f"{system}/bullmq delivery {workers}w")
            of = item["of_ceiling"]
            of_text = (
                f"{100 * of['median']:.0f} % [{100 * of['min']:.0f}-{100 * of['max']:.0f}] "
                f"{'met' if of['median'] >= TARGET_OF_CEILING else 'missed'}"
            )
            ratio_text = (
                f"{_f(ratio, 2, 'x')} {'met' if ratio['median'] >= TARGET_VS_BULLMQ else 'missed'}"
                if ratio and ratio["median"] is not None
                else "-"
            )
            lines.append(
                f"| {system} | {workers} | {_f(item['deliveries_per_s'])} | {of_text} "
                f"| {ratio_text} | {_f(item['server_cpu_ms_per_delivery'], 2)} "
                f"| {_f(item.get('turnaround_p50_ms'), 1)} / {_f(item.get('turnaround_p99_ms'), 1)} "
                f"| {'yes' if item['all_confirmed'] else 'NO'} |"
            )
    lines += [
        "",
        f"Latency at {params['latency_rate']:g} sends/s open loop, {params['latency_seconds']:g} s "
        f"(provider answers after {params['provider_delay_ms']:g} ms; one worker: a process of "
        f"its own, or inside `serve` for {SCALED_IN_SERVE})",
        "",
        "| system | accept→receipt p50 ms | p99 ms | max ms | p99 vs BullMQ (≤ 1.0x) "
        "| API p50 ms | API p99 ms | reached the provider (answers + 30 s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for system in systems:
        item = summary[system]["latency"]
        if not item:
            continue
        ratio = ratios.get(f"{system}/bullmq accept→receipt p99")
        ratio_text = (
            f"{_f(ratio, 2, 'x')} {'met' if ratio['median'] <= 1.0 else 'missed'}"
            if ratio and ratio["median"] is not None
            else "-"
        )
        lines.append(
            f"| {system} | {_f(item['accept_to_receipt_ms']['p50'], 1)} "
            f"| {_f(item['accept_to_receipt_ms']['p99'], 1)} "
            f"| {_f(item['accept_to_receipt_ms']['max'], 1)} | {ratio_text} "
            f"| {_f(item['api_ms']['p50'], 1)} | {_f(item['api_ms']['p99'], 1)} "
            f"| {_pct(item['reached_provider'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.delivery", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run, not for figures")
    parser.add_argument("--profiles", default="embedded,scaled")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick 1)")
    parser.add_argument("--seconds", type=float, help="closed-loop accept run (default 8)")
    parser.add_argument("--clients", type=int, default=32, help="single-send connections")
    parser.add_argument("--batch-sizes", default="100,500")
    parser.add_argument("--batch-clients", type=int, default=4)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="provider calls at once per worker process (BullMQ's worker concurrency)",
    )
    parser.add_argument(
        "--worker-jobs",
        type=int,
        default=0,
        help="jobs a Tidings worker process holds (default: 2 x --concurrency)",
    )
    parser.add_argument("--workers", default="1,2", help="worker processes (scaled, BullMQ)")
    parser.add_argument("--backlog", type=int, help="messages preloaded (default 2000)")
    parser.add_argument("--provider-delay-ms", type=float, default=50.0)
    parser.add_argument("--latency-rate", type=float, default=200.0)
    parser.add_argument("--latency-seconds", type=float, help="default 20")
    parser.add_argument("--quiet-wait", type=float, help="default 10 s (0 with --quick)")
    parser.add_argument("--sections", default="accept,delivery,latency")
    parser.add_argument("--no-peer", action="store_true", help="skip BullMQ")
    parser.add_argument(
        "--py-spy", metavar="BIN", help="py-spy binary: profile Tidings while the backlog drains"
    )
    parser.add_argument("--render", type=Path, metavar="JSON", help="print a results file")
    args = parser.parse_args(argv)
    if args.render is not None:
        saved = json.loads(args.render.read_text(encoding="utf-8"))
        # Recomputed, so a file written by an older version renders with today's columns.
        names = {**saved["params"], "sections": tuple(saved["params"].get("sections", ()))}
        systems = [s for s in SYSTEMS if any(s in r for r in saved["rounds"])]
        saved["summary"] = summarize(saved["rounds"], Params(**names), systems)
        print(render(saved))
        return 0
    for name in [
        n for n in os.environ if n.startswith("TIDINGS_") and not n.startswith("TIDINGS_BENCH_")
    ]:
        del os.environ[name]
    quick = args.quick
    params = Params(
        profiles=[p.strip() for p in args.profiles.split(",") if p.strip()],
        rounds=args.rounds or (1 if quick else 3),
        seconds=args.seconds or (3.0 if quick else 8.0),
        warmup=1.0 if quick else 2.0,
        clients=args.clients,
        batch_sizes=[int(s) for s in args.batch_sizes.split(",") if s.strip()],
        batch_clients=args.batch_clients,
        concurrency=args.concurrency,
        worker_jobs=args.worker_jobs or 2 * args.concurrency,
        workers=[int(w) for w in args.workers.split(",") if w.strip()],
        backlog=args.backlog or (1000 if quick else 2000),
        provider_delay_ms=args.provider_delay_ms,
        latency_rate=args.latency_rate,
        latency_seconds=args.latency_seconds or (5.0 if quick else 20.0),
        sections=tuple(x.strip() for x in args.sections.split(",") if x.strip()),
        peer=not args.no_peer,
        py_spy=args.py_spy,
    )
    machine.QUIET.max_wait = (
        args.quiet_wait if args.quiet_wait is not None else (0 if quick else 10)
    )
    ensure_node_modules()
    started = time.perf_counter()
    info = asyncio.run(
        machine.describe(POSTGRES_ADMIN_DSN if "scaled" in params.profiles else None, REDIS_URL)
    )
    node_version = subprocess.run(
        [NODE, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    bullmq = json.loads((BENCH_DIR / "node_modules" / "bullmq" / "package.json").read_text())
    info["node"], info["bullmq"] = node_version, bullmq["version"]
    # Others edit src/ while benches run: record what was measured.
    git = ["git", "-C", str(BENCH_DIR.parent)]
    info["commit"] = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    info["src_uncommitted"] = subprocess.run(
        [*git, "status", "--short", "src"], capture_output=True, text=True, check=False
    ).stdout.split("\n")
    print(f"Machine: {machine.summary_line(info)}; Node {node_version}, BullMQ {bullmq['version']}")
    print(
        f"== Send API and delivery: {params.rounds} round(s), profiles {','.join(params.profiles)}"
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    log_dir = RESULTS_DIR / f"delivery-{stamp}-logs"
    log_dir.mkdir()
    global LOG_DIR, PARTIAL
    LOG_DIR = log_dir
    PARTIAL = log_dir / "partial.json"
    results = asyncio.run(run(params, log_dir))
    results.update(
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        params=params.__dict__,
        machine=info,
        elapsed_seconds=round(time.perf_counter() - started, 1),
        quiet_waited_seconds=round(machine.QUIET.waited, 1),
        quiet_gave_up=machine.QUIET.gave_up,
    )
    print(render(results))
    path = RESULTS_DIR / f"delivery-{stamp}.json"
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
