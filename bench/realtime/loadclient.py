"""Driving the Node load client (client.js): start it, wait for `ready`, say `go`, read the
result. The client runs pinned to its own core; its npm dependencies live in bench/."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.realtime.procs import pinned
from bench.realtime.servers import BENCH_DIR, CLIENT_CORE, HERE, NODE, Running

CONNECT_CONCURRENCY = 50


def ensure_node_modules() -> None:
    """`npm ci` into bench/ from the committed lock file, when it has not been done yet."""
    stamp = BENCH_DIR / "node_modules" / ".package-lock.json"
    lock = BENCH_DIR / "package-lock.json"
    if stamp.exists() and stamp.stat().st_mtime >= lock.stat().st_mtime:
        return
    print("Installing the load client's npm dependencies (npm ci in bench/)...", flush=True)
    flags = ["--no-audit", "--no-fund", "--loglevel=error"]
    if subprocess.run(["npm", "ci", *flags], cwd=BENCH_DIR, check=False).returncode != 0:
        # npm 11 writes locks holding only this platform's optional packages (msgpackr's
        # native builds, through bullmq), which its own `npm ci` then calls out of sync.
        # `npm install` takes the same pinned versions from the lock and fills the gap.
        print("npm ci refused the lock file; installing with npm install instead", flush=True)
        subprocess.run(["npm", "install", *flags], cwd=BENCH_DIR, check=True)


@dataclass
class ClientConfig:
    mode: str  # burst | paced | idle
    n: int
    m: int = 0
    rate: float = 0.0
    warmup: int = 5
    window: int = 16
    timeout_s: float = 120.0
    concurrency: int = CONNECT_CONCURRENCY

    def for_server(self, running: Running, urls: list[str] | None = None) -> dict[str, Any]:
        return {
            "kind": running.spec.client_kind,
            "urls": urls or running.urls,
            "token": running.token,
            "conversation": running.conversation,
            "mode": self.mode,
            "n": self.n,
            "m": self.m,
            "rate": self.rate,
            "warmup": self.warmup,
            "window": self.window,
            "timeout_s": self.timeout_s,
            "concurrency": self.concurrency,
        }


class LoadClient:
    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log

    @classmethod
    async def start(
        cls, config: dict[str, Any], log: Path, core: int | None = CLIENT_CORE
    ) -> LoadClient:
        with log.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                *pinned([NODE, str(HERE / "client.js"), json.dumps(config)], core),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=sink,
                cwd=BENCH_DIR,
                env={**os.environ, "NODE_PATH": str(BENCH_DIR / "node_modules")},
                limit=2**24,
            )
        return cls(proc, log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _line(self, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109 - per line
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            await self.proc.wait()
            raise RuntimeError(
                f"load client exited ({self.proc.returncode}): "
                f"{self.log.read_text(errors='replace')[-2000:]}"
            )
        line: dict[str, Any] = json.loads(raw)
        if line.get("event") == "error":
            raise RuntimeError(f"load client failed: {line['error']}")
        return line

    async def ready(self, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
        return await self._line(timeout)

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")

    async def result(self, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
        return await self._line(timeout)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()
