"""CPU time and resident memory of the processes under test, from /proc.

CPU is utime + stime of a process and its live descendants; RSS is VmRSS summed over the same
tree. Machine-wide busy time comes from bench.machine, so a run can tell how much CPU the
processes outside the server, the client and the harness used meanwhile (interference).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bench.machine import _CLOCK_TICKS, CpuMeter, _read

TASKSET = shutil.which("taskset")
CORES = os.cpu_count() or 1


def pinned(command: list[str], core: int | None) -> list[str]:
    """`command` under `taskset -c core` when taskset exists and the core does."""
    if TASKSET is None or core is None or core >= CORES:
        return command
    return [TASKSET, "-c", str(core), *command]


def _children(pid: int) -> list[int]:
    found: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        tasks = list(task_dir.iterdir())
    except OSError:
        return found
    for task in tasks:
        found.extend(int(child) for child in _read(task / "children").split())
    return found


def tree(pid: int) -> list[int]:
    pids, pending = [], [pid]
    while pending:
        current = pending.pop()
        pids.append(current)
        pending.extend(_children(current))
    return pids


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for member in tree(pid):
        stat = _read(Path(f"/proc/{member}/stat"))
        if not stat:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return total


def rss_bytes(pid: int) -> int:
    total = 0
    for member in tree(pid):
        for line in _read(Path(f"/proc/{member}/status")).splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
                break
    return total


@dataclass
class Window:
    """CPU used over one measured span by the servers and the client (from /proc), and, from
    bench.machine's meter, by this harness, by the PostgreSQL/Redis work of this run's
    database, and by everything else on the machine (interference)."""

    servers: list[int]
    client: int | None
    database: str = ""
    _meter: CpuMeter = field(default_factory=CpuMeter)
    _servers: float = 0.0
    _client: float = 0.0

    def start(self) -> None:
        self._meter = CpuMeter(database=self.database or "-")
        self._servers = sum(cpu_seconds(pid) for pid in self.servers)
        self._client = cpu_seconds(self.client) if self.client else 0.0
        self._meter.start()

    def stop(self, wall: float) -> dict[str, float]:
        meter = self._meter.stop()
        servers = sum(cpu_seconds(pid) for pid in self.servers) - self._servers
        client = (cpu_seconds(self.client) if self.client else 0.0) - self._client
        wall = max(wall, 1e-9)
        server_pct, client_pct = 100 * servers / wall, 100 * client / wall
        # The meter counts the server and the client among "others"; take them out.
        other = meter["other_cpu_percent"] - server_pct - client_pct
        return {
            "server_cpu_seconds": round(servers, 3),
            "client_cpu_seconds": round(client, 3),
            "server_cpu_percent": round(server_pct, 1),
            "client_cpu_percent": round(client_pct, 1),
            "services_cpu_percent": meter["services_cpu_percent"],
            "harness_cpu_percent": meter["bench_process_cpu_percent"],
            "other_cpu_percent": round(max(0.0, other), 1),
        }
