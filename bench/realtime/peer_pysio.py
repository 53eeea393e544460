"""Peer server: python-socketio's AsyncServer as an ASGI app on uvicorn (uvloop, httptools,
websockets-sansio, per-message deflate off), WebSocket transport only; subscribers join room
`r`, each broadcast is `await sio.emit("m", payload, room="r")`.
Usage: python peer_pysio.py PORT PAD"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import socketio  # type: ignore[import-untyped]
import uvicorn

PAD = "x" * int(sys.argv[2]) if len(sys.argv) > 2 else ""
sio = socketio.AsyncServer(
    async_mode="asgi", transports=["websocket"], cors_allowed_origins="*", http_compression=False
)
_TASKS: set[asyncio.Task[None]] = set()


def _now_ms() -> float:
    return time.time() * 1000


async def _run(command: dict[str, Any]) -> None:
    if command["cmd"] == "burst":
        warm = command.get("w", 0)
        for i in range(command["m"]):
            await sio.emit(
                "m", {"i": -1 if warm else i, "t": _now_ms(), "w": warm, "p": PAD}, room="r"
            )
            await asyncio.sleep(0)
        return
    rate = float(command["rate"])
    start = _now_ms() + 20
    for i in range(command["m"]):
        due = start + i * 1000 / rate
        delay = (due - _now_ms()) / 1000
        if delay > 0:
            await asyncio.sleep(delay)
        await sio.emit("m", {"i": i, "t": due, "w": 0, "p": PAD}, room="r")


@sio.event  # type: ignore[untyped-decorator]
async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
    if "ctl=1" in environ.get("QUERY_STRING", ""):
        return
    await sio.enter_room(sid, "r")


@sio.on("go")  # type: ignore[untyped-decorator]
async def go(sid: str, command: dict[str, Any]) -> None:
    task = asyncio.create_task(_run(command))
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


async def _health(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok\n"})


app = socketio.ASGIApp(sio, other_asgi_app=_health)

if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
