"""Peer server: the `websockets` library's own server with `broadcast()` (encode once, write
to every connection), compression off, on uvloop. Usage: python peer_websockets.py PORT PAD"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from http import HTTPStatus
from typing import Any

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.http11 import Request, Response

SUBSCRIBERS: set[ServerConnection] = set()
_TASKS: set[asyncio.Task[None]] = set()


def _now_ms() -> float:
    return time.time() * 1000


async def _run(command: dict[str, Any], pad: str) -> None:
    if command["cmd"] == "burst":
        warm = command.get("w", 0)
        for i in range(command["m"]):
            payload = {"i": -1 if warm else i, "t": _now_ms(), "w": warm, "p": pad}
            broadcast(SUBSCRIBERS, json.dumps(payload, separators=(",", ":")))
            await asyncio.sleep(0)
        return
    rate = float(command["rate"])
    start = _now_ms() + 20
    for i in range(command["m"]):
        due = start + i * 1000 / rate
        delay = (due - _now_ms()) / 1000
        if delay > 0:
            await asyncio.sleep(delay)
        payload = {"i": i, "t": due, "w": 0, "p": pad}
        broadcast(SUBSCRIBERS, json.dumps(payload, separators=(",", ":")))


def _health(connection: ServerConnection, request: Request) -> Response | None:
    if request.headers.get("Upgrade") is None:
        return connection.respond(HTTPStatus.OK, "ok\n")
    return None


async def main(port: int, pad: str) -> None:
    async def handler(ws: ServerConnection) -> None:
        if ws.request is not None and "ctl=1" in ws.request.path:
            async for message in ws:
                task = asyncio.create_task(_run(json.loads(message), pad))
                _TASKS.add(task)
                task.add_done_callback(_TASKS.discard)
            return
        SUBSCRIBERS.add(ws)
        try:
            await ws.wait_closed()
        finally:
            SUBSCRIBERS.discard(ws)

    async with serve(
        handler, "127.0.0.1", port, compression=None, process_request=_health, max_queue=None
    ) as server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), "x" * int(sys.argv[2])))
