"""Server-Sent Events: the same frames as the WebSocket, receive-only, for clients that cannot
open one. Each frame is one `data:` line; events also carry `id: <stream>:<seq>`. A comment
line every heartbeat keeps proxies from closing an idle stream."""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import AsyncIterator

from tidings.realtime import protocol

MAX_QUEUED = 1024


class SseSubscriber:
    def __init__(self, user_id: uuid.UUID, session_id: uuid.UUID | None) -> None:
        self.id = "sse-" + uuid.uuid4().hex[:12]
        self.user_id = user_id
        self.session_id = session_id
        self.rooms: set[str] = set()
        self.opened = True
        self.pending: list[tuple[str, int | None, bytes, bytes, bool]] | None = None
        self.close_reason: str | None = None
        self._queue: deque[bytes] = deque()
        self._ready = asyncio.Event()

    def deliver(
        self, room: str, seq: int | None, frame: bytes, ws_frame: bytes, ephemeral: bool
    ) -> None:
        if not self.opened:
            return
        if self.pending is not None:
            self.pending.append((room, seq, frame, ws_frame, ephemeral))
            return
        self._enqueue(frame, room, seq, ephemeral)

    def deliver_run(
        self,
        room: str,
        items: list[tuple[int | None, bytes]],
        ws_frames: list[bytes],
        joined: bytes,
    ) -> None:
        for (seq, frame), ws_frame in zip(items, ws_frames, strict=True):
            self.deliver(room, seq, frame, ws_frame, False)

    def deliver_now(
        self, room: str, seq: int | None, frame: bytes, ws_frame: bytes, ephemeral: bool
    ) -> None:
        self._enqueue(frame, room, seq, ephemeral)

    def send(self, frame: bytes) -> None:
        self._enqueue(frame, None, None, False)

    def _enqueue(self, frame: bytes, room: str | None, seq: int | None, ephemeral: bool) -> None:
        if ephemeral and len(self._queue) > MAX_QUEUED // 2:
            return
        if len(self._queue) >= MAX_QUEUED:
            self.close(protocol.CLOSE_SLOW_CONSUMER, "slow consumer")
            return
        event_id = f"id: {room}:{seq}\n".encode() if room and seq is not None else b""
        self._queue.append(event_id + b"data: " + frame + b"\n\n")
        self._ready.set()

    def close(self, code: int, reason: str) -> None:
        if self.opened:
            self.opened = False
            self.close_reason = reason
            body = protocol.dumps({"code": code, "reason": reason})
            self._queue.append(b"event: close\ndata: " + body + b"\n\n")
            self._ready.set()

    async def stream(self, heartbeat: float) -> AsyncIterator[bytes]:
        while True:
            while self._queue:
                yield self._queue.popleft()
            if not self.opened:
                return
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout=heartbeat)
            except TimeoutError:
                yield b": ping\n\n"
