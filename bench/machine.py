"""What the benchmark ran on: the machine, the services and the library versions."""

from __future__ import annotations

import asyncio
import os
import platform
import resource
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from bench.profiles import BENCH_DATABASE

# Processes whose CPU time is attributed to the services under test (not the bench process).
SERVICE_PROCESS_NAMES = ("postgres", "redis-server")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PACKAGES = ("tidings", "sqlalchemy", "asyncpg", "aiosqlite", "redis", "hiredis", "saq", "arq")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return float("nan")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


async def describe(postgres_dsn: str | None, redis_url: str | None) -> dict[str, Any]:
    """A JSON-able description of this machine and of the services the profiles use."""
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": _memory_gib(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "packages": {name: _version(name) for name in _PACKAGES},
    }
    if postgres_dsn is not None:
        conn = await asyncpg.connect(postgres_dsn, timeout=5)
        try:
            info["postgresql"] = await conn.fetchval("SHOW server_version")
            info["postgresql_settings"] = {
                name: await conn.fetchval(f"SHOW {name}")
                for name in ("synchronous_commit", "fsync", "shared_buffers", "max_connections")
            }
        finally:
            await conn.close()
    if redis_url is not None:
        client = aioredis.from_url(redis_url)  # type: ignore[no-untyped-call]
        try:
            server = await client.info("server")
            info["redis"] = server.get("redis_version")
        finally:
            await client.aclose()
    return info


def summary_line(info: dict[str, Any]) -> str:
    parts = [
        f"{info['cores']} cores ({info['cpu']})",
        f"{info['memory_gib']} GiB",
        info["kernel"],
        f"Python {info['python']}",
        f"SQLite {info['sqlite']}",
    ]
    if "postgresql" in info:
        parts.append(f"PostgreSQL {info['postgresql']}")
    if "redis" in info:
        parts.append(f"Redis {info['redis']}")
    return ", ".join(parts)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def _is_ours(name: str, pid_dir: Path, database: str) -> bool:
    """Whether a PostgreSQL/Redis process works for this benchmark (not for someone else).

    Redis and PostgreSQL's background processes are shared and counted as ours; a backend or an
    autovacuum worker is ours only when it serves the bench database.
    """
    if name.startswith("redis-server"):
        return True
    title = _read(pid_dir / "cmdline").replace("\0", " ")
    # Backends: "postgres: <cluster>: <user> <database> <client> <state>";
    # autovacuum: "postgres: <cluster>: autovacuum worker <database>".
    parts = title.split(": ", 2)
    words = parts[2].split() if len(parts) == 3 else []
    if words[:2] == ["autovacuum", "worker"]:
        return len(words) < 3 or words[2] == database
    if len(words) >= 3 and ("(" in words[2] or words[2] == "[local]"):
        return words[1] == database
    return True


def _service_cpu_by_pid(database: str) -> dict[int, float]:
    seconds: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _read(entry / "stat")
        name_end = stat.rfind(")")
        name = stat[stat.find("(") + 1 : name_end]
        if not name.startswith(SERVICE_PROCESS_NAMES) or not _is_ours(name, entry, database):
            continue
        fields = stat[name_end + 2 :].split()
        seconds[int(entry.name)] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return seconds


def _service_delta(before: dict[int, float], database: str) -> float:
    # Processes that exited in between are lost (an undercount), never negative.
    after = _service_cpu_by_pid(database)
    return sum(max(0.0, used - before.get(pid, 0.0)) for pid, used in after.items())


def _machine_busy_seconds() -> float:
    """CPU time spent by processes on the machine (all cores), from /proc/stat.

    Interrupt and softirq time (e.g. loopback TCP between the bench and its services) is left
    out: it belongs to no process and would be mistaken for someone else's work.
    """
    fields = _read(Path("/proc/stat")).splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + steal) / _CLOCK_TICKS


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuMeter:
    """CPU used over a measured span by this process, by the PostgreSQL/Redis work it caused,
    and by everything else on the machine (other users' processes: interference).

    Figures are percent of one core (200 % = both cores of a 2-core machine).
    """

    database: str = BENCH_DATABASE
    wall: float = 0.0
    own: float = 0.0
    services: dict[int, float] = field(default_factory=dict)
    machine: float = 0.0

    def start(self) -> None:
        self.wall = time.perf_counter()
        self.own = _own_cpu_seconds()
        self.services = _service_cpu_by_pid(self.database)
        self.machine = _machine_busy_seconds()

    def stop(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.wall, 1e-9)
        own = _own_cpu_seconds() - self.own
        services = _service_delta(self.services, self.database)
        other = max(0.0, _machine_busy_seconds() - self.machine - own - services)
        return {
            "bench_process_cpu_percent": round(100 * own / elapsed, 1),
            "services_cpu_percent": round(100 * services / elapsed, 1),
            "other_cpu_percent": round(100 * other / elapsed, 1),
        }


# Percent of one core used by other processes above which the machine counts as busy.
BUSY_OTHERS_PERCENT = 25.0


@dataclass
class Quiet:
    """Before each measured run: wait (up to `max_wait` s) until other processes are idle."""

    max_wait: float = 0.0
    # Never wait longer than this (or 6 x max_wait) in total: a busy machine must not stretch a
    # run without bound.
    total_budget: float = 120.0
    waited: float = 0.0
    gave_up: int = 0

    async def wait(self) -> None:
        if self.max_wait <= 0:
            return
        started = time.perf_counter()
        budget = max(self.total_budget, 6 * self.max_wait)
        limit = min(self.max_wait, max(0.0, budget - self.waited))
        while True:
            meter = CpuMeter()
            meter.start()
            await asyncio.sleep(0.5)
            if meter.stop()["other_cpu_percent"] < BUSY_OTHERS_PERCENT:
                break
            if time.perf_counter() - started >= limit:
                self.gave_up += 1
                break
        self.waited += time.perf_counter() - started


QUIET = Quiet()


async def settle(seconds: float) -> None:
    """A pause between measured runs so background work of the previous one winds down; then,
    if asked (``--quiet-wait``), wait for other processes on the machine to go idle."""
    await asyncio.sleep(seconds)
    await QUIET.wait()


def start_profiles(
    py_spy: str | None, targets: list[tuple[str, int]], out_dir: Path
) -> list[subprocess.Popen[bytes]]:
    """py-spy recording each `(name, pid)` to `out_dir/py-spy-<name>.txt` (raw, folded stacks)
    until `stop_profiles`; nothing without a py-spy binary."""
    if not py_spy:
        return []
    return [
        subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw",
             "--nonblocking", "--output", str(out_dir / f"py-spy-{name}.txt")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in targets
    ]  # fmt: skip


async def stop_profiles(spies: list[subprocess.Popen[bytes]]) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        await asyncio.to_thread(spy.wait, 30)
