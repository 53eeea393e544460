"""A real uvicorn server in the test's event loop, with the gateway's WebSocket protocol, and
real WebSocket clients (the `websockets` library) talking to it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import free_port
from tests.support.users import Account
from tidings.app import create_app
from tidings.realtime.connection import WebSocketConnection
from tidings.settings import Settings

REALTIME_TIMINGS: dict[str, Any] = {
    "ws_heartbeat_seconds": 0.5,
    "ws_idle_timeout_seconds": 30.0,
    "typing_ttl_seconds": 0.6,
}


@dataclass
class LiveServer:
    base_url: str
    ws_url: str
    app: Any
    http: httpx.AsyncClient
    clients: list[ClientConnection] = field(default_factory=list)

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    async def ticket(self, account: Account) -> str:
        response = await self.http.post("/api/v1/realtime/tickets", headers=account.headers)
        assert response.status_code == 200, response.text
        ticket: str = response.json()["ticket"]
        return ticket

    async def connect(self, account: Account) -> Client:
        ticket = await self.ticket(account)
        socket = await connect(f"{self.ws_url}?ticket={ticket}", max_size=2**22)
        self.clients.append(socket)
        client = Client(socket)
        client.hello = await client.expect("hello")
        return client


class Client:
    """A WebSocket client that remembers everything it received."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.hello: dict[str, Any] = {}
        self.frames: list[dict[str, Any]] = []
        self._next = 0
        self._refs = 0

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109 - per frame
        raw = await asyncio.wait_for(self.socket.recv(), timeout)
        frame: dict[str, Any] = json.loads(raw)
        self.frames.append(frame)
        return frame

    async def expect(
        self,
        kind: str,
        where: Callable[[dict[str, Any]], bool] = lambda _: True,
        timeout: float = 5.0,  # noqa: ASYNC109 - a deadline over several frames
    ) -> dict[str, Any]:
        """The next frame of `kind` matching `where` (others are kept in `frames`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - loop.time()))
            if frame.get("type") == kind and where(frame):
                return frame

    async def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Send a command; return its reply (ack, error, resumed or pong, by `ref`)."""
        self._refs += 1
        ref = self._refs
        await self.socket.send(json.dumps({"type": kind, "ref": ref, **fields}))
        while True:
            frame = await self.recv(10)
            if frame.get("ref") == ref and frame["type"] in {"ack", "error", "resumed", "pong"}:
                return frame

    def events(self, stream: str | None = None) -> list[dict[str, Any]]:
        return [
            f
            for f in self.frames
            if f.get("type") == "event" and (stream is None or f["stream"] == stream)
        ]

    async def close(self) -> None:
        await self.socket.close()


async def _serve(app: Any, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        ws=WebSocketConnection,
        lifespan="on",
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    return server, task


@pytest.fixture
def realtime_settings(settings_values: dict[str, Any]) -> Settings:
    return Settings(_env_file=None, **{**settings_values, **REALTIME_TIMINGS})  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def live_server(settings: Settings) -> AsyncIterator[LiveServer]:
    app = create_app(settings)
    port = free_port()
    server, task = await _serve(app, port)
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        live = LiveServer(base, f"ws://127.0.0.1:{port}/api/v1/realtime", app, http)
        try:
            yield live
        finally:
            for socket in live.clients:
                with contextlib.suppress(Exception):
                    await socket.close()
            server.should_exit = True
            await asyncio.wait_for(task, 30)


@pytest.fixture
async def live(realtime_settings: Settings) -> AsyncIterator[LiveServer]:
    async with live_server(realtime_settings) as server:
        yield server
