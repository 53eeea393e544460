"""The servers under test, each started as a fresh process for every run.

* Tidings: `tidings serve` (uvicorn + httptools, the gateway's own WebSocket protocol), embedded
  (a copy of a migrated SQLite file) or scaled (a fresh PostgreSQL database created from a
  migrated template, Redis with a key prefix unique to the run); one user registered over
  HTTP, a workspace with its #general, an access token every connection of the run shares.
* Peers: Node `ws`, Node Socket.IO, python-socketio (ASGI on uvicorn) and the `websockets`
  library's `broadcast()`: the scripts beside this file.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis

from bench.profiles import POSTGRES_ADMIN_DSN, REDIS_URL
from bench.realtime.procs import pinned

HERE = Path(__file__).resolve().parent
BENCH_DIR = HERE.parent
VENV_BIN = Path(sys.executable).parent
TIDINGS = str(VENV_BIN / "tidings")
NODE = shutil.which("node") or "node"
SERVER_CORE = 0
CLIENT_CORE = 1
PASSWORD = "correct horse battery staple"  # noqa: S105 - a benchmark account
HIGH_RATE = "1000000/minute"


@dataclass(frozen=True)
class ServerSpec:
    name: str
    label: str
    client_kind: str  # what the load client speaks: tidings, ws or sio


TIDINGS_SPEC = ServerSpec("tidings", "Tidings (serve, embedded)", "tidings")
PEERS = {
    "node-ws": ServerSpec("node-ws", "Node ws", "ws"),
    "node-sio": ServerSpec("node-sio", "Node Socket.IO", "sio"),
    "python-socketio": ServerSpec("python-socketio", "python-socketio (ASGI, uvicorn)", "sio"),
    "websockets": ServerSpec("websockets", "websockets broadcast()", "ws"),
}
ALL_SERVERS = ("tidings", *PEERS)


def spec(name: str) -> ServerSpec:
    return TIDINGS_SPEC if name == "tidings" else PEERS[name]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Running:
    """What a run needs of its started servers."""

    spec: ServerSpec
    pids: list[int]
    urls: list[str]  # one per process: where subscribers connect
    http: list[str]  # one per process: HTTP base URL
    logs: list[Path]
    token: str | None = None
    conversation: str | None = None
    database: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def log_tail(log: Path, chars: int = 1500) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


async def _wait_port(port: int, proc: asyncio.subprocess.Process, budget: float, log: Path) -> None:
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            tail = log_tail(log)
            raise RuntimeError(f"server exited with {proc.returncode} before listening: {tail}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise TimeoutError(f"nothing listened on port {port} within {budget:.0f} s")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


class Lab:
    """Owns the temporary files, the migrated templates and the databases of one invocation."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.tmp = Path(tempfile.mkdtemp(prefix=f"tidings-bench-rt-{tag}-"))
        self.pad = 0  # padding of the peers' payload, set once Tidings' frame size is known
        # A directory to import `tidings` from instead of the installed one (to try a patch).
        self.tidings_src: Path | None = None
        self._counter = itertools.count(1)
        self._sqlite_template: Path | None = None
        self._pg_template: str | None = None
        self._databases: set[str] = set()
        self._redis_used = False

    # -- environment ---------------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        env.update(
            TIDINGS_LOG_LEVEL="warning",
            TIDINGS_ACCESS_TOKEN_MINUTES="60",  # noqa: S106 - a lifetime, not a password
            TIDINGS_ARGON2_TIME_COST="2",
            TIDINGS_ARGON2_MEMORY_KIB="19456",
            TIDINGS_ARGON2_PARALLELISM="1",
            TIDINGS_WS_RATE_LIMIT="1000000/second",
        )
        for name in ("USER", "IP", "REGISTER", "LOGIN", "REFRESH", "API_KEY"):
            env[f"TIDINGS_RATE_LIMIT_{name}"] = HIGH_RATE
        if self.tidings_src is not None:
            env["PYTHONPATH"] = str(self.tidings_src)
        return env

    async def _migrate(self, env: dict[str, str]) -> None:
        proc = await asyncio.create_subprocess_exec(
            TIDINGS,
            "migrate",
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"tidings migrate failed: {err.decode()[-2000:]}")

    async def prepare(self, *, embedded: bool, scaled: bool) -> None:
        if embedded:
            template = self.tmp / "template"
            await self._migrate({**self.base_env(), "TIDINGS_DATA_DIR": str(template)})
            self._sqlite_template = template / "tidings.db"
        if scaled:
            name = f"tidings_bench_rt_{self.tag}_tpl"
            await self._create_database(name)
            env = {**self.base_env(), **self._scaled_env(name, "tpl")}
            env["TIDINGS_DATA_DIR"] = str(self.tmp / "tpl")
            await self._migrate(env)
            self._pg_template = name

    async def _admin(self) -> Any:
        return await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)

    async def _create_database(self, name: str, template: str | None = None) -> None:
        conn = await self._admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            suffix = f' TEMPLATE "{template}"' if template else ""
            await conn.execute(f'CREATE DATABASE "{name}"{suffix}')
        finally:
            await conn.close()
        self._databases.add(name)

    async def drop_database(self, name: str) -> None:
        conn = await self._admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
        self._databases.discard(name)

    def _scaled_env(self, database: str, run: str) -> dict[str, str]:
        self._redis_used = True
        admin = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].replace(
            "postgresql://", "postgresql+asyncpg://", 1
        )
        return {
            "TIDINGS_DATABASE_URL": f"{admin}/{database}",
            "TIDINGS_REDIS_URL": REDIS_URL,
            "TIDINGS_REDIS_PREFIX": f"benchrt:{self.tag}:{run}:",
            "TIDINGS_JWT_SECRET": secrets.token_urlsafe(48),
            "TIDINGS_MASTER_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        }

    async def cleanup(self) -> None:
        if self._pg_template is not None:
            self._databases.add(self._pg_template)
        for name in list(self._databases):
            with contextlib.suppress(Exception):
                await self.drop_database(name)
        if self._redis_used:
            client = aioredis.from_url(REDIS_URL)  # type: ignore[no-untyped-call]
            try:
                keys = [k async for k in client.scan_iter(match=f"benchrt:{self.tag}:*")]
                for start in range(0, len(keys), 1000):
                    await client.delete(*keys[start : start + 1000])
            finally:
                await client.aclose()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- starting servers ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def peer(self, name: str) -> AsyncIterator[Running]:
        server = PEERS[name]
        port = free_port()
        script = {
            "node-ws": [NODE, str(HERE / "peer_ws.js")],
            "node-sio": [NODE, str(HERE / "peer_sio.js")],
            "python-socketio": [sys.executable, str(HERE / "peer_pysio.py")],
            "websockets": [sys.executable, str(HERE / "peer_websockets.py")],
        }[name]
        log = self.tmp / f"{name}-{next(self._counter)}.log"
        with log.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                *pinned([*script, str(port), str(self.pad)], SERVER_CORE),
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=BENCH_DIR,
                env={**os.environ, "NODE_PATH": str(BENCH_DIR / "node_modules")},
            )
        try:
            await _wait_port(port, proc, 30, log)
            scheme = "http" if server.client_kind == "sio" else "ws"
            yield Running(server, [proc.pid], [f"{scheme}://127.0.0.1:{port}/"], [""], [log])
        finally:
            await _stop(proc)

    @contextlib.asynccontextmanager
    async def tidings(
        self,
        *,
        profile: str = "embedded",
        processes: int = 1,
        settings: dict[str, str] | None = None,
        cores: tuple[int | None, ...] = (SERVER_CORE,),
    ) -> AsyncIterator[Running]:
        run = str(next(self._counter))
        env = self.base_env()
        database = ""
        if profile == "scaled":
            assert self._pg_template is not None, "prepare(scaled=True) first"
            database = f"tidings_bench_rt_{self.tag}_{run}"
            await self._create_database(database, self._pg_template)
            env.update(self._scaled_env(database, run))
        env.update(settings or {})
        procs: list[asyncio.subprocess.Process] = []
        ports: list[int] = []
        logs: list[Path] = []
        try:
            for index in range(processes):
                data_dir = self.tmp / f"run-{run}-{index}"
                data_dir.mkdir()
                if profile == "embedded":
                    assert self._sqlite_template is not None, "prepare(embedded=True) first"
                    shutil.copyfile(self._sqlite_template, data_dir / "tidings.db")
                port = free_port()
                log = self.tmp / f"tidings-{run}-{index}.log"
                core = cores[index % len(cores)]
                with log.open("wb") as sink:
                    proc = await asyncio.create_subprocess_exec(
                        *pinned(
                            [TIDINGS, "serve", "--host", "127.0.0.1", "--port", str(port)], core
                        ),
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                        env={**env, "TIDINGS_DATA_DIR": str(data_dir)},
                    )
                procs.append(proc)
                ports.append(port)
                logs.append(log)
            for proc, port, log in zip(procs, ports, logs, strict=True):
                await _wait_port(port, proc, 60, log)
            http = [f"http://127.0.0.1:{port}" for port in ports]
            running = Running(
                TIDINGS_SPEC,
                [p.pid for p in procs],
                [f"ws://127.0.0.1:{port}/api/v1/realtime" for port in ports],
                http,
                logs,
                database=database,
            )
            await _set_up_account(running)
            yield running
        finally:
            for proc in procs:
                await _stop(proc)
            if database:
                await self.drop_database(database)


async def _set_up_account(running: Running) -> None:
    """Register one user, create a workspace and find its #general (created by the outbox)."""
    async with httpx.AsyncClient(base_url=running.http[0], timeout=30) as http:
        response = await http.post(
            "/api/v1/auth/register",
            json={"email": "bench@example.com", "password": PASSWORD, "display_name": "Bench"},
        )
        response.raise_for_status()
        token = response.json()["tokens"]["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        response = await http.post("/api/v1/workspaces", json={"name": "Bench"}, headers=headers)
        response.raise_for_status()
        workspace = response.json()["id"]
        deadline = time.monotonic() + 20
        while True:
            response = await http.get(
                f"/api/v1/workspaces/{workspace}/conversations", headers=headers
            )
            response.raise_for_status()
            body = response.json()
            items = body.get("items", body) if isinstance(body, dict) else body
            if items:
                running.conversation = str(items[0]["id"])
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the workspace's #general did not appear")
            await asyncio.sleep(0.1)
        running.token = token
