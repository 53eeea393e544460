"""Which Tidings processes are alive: each announces itself on the backplane.

Every process publishes a heartbeat on the `nodes` channel and forgets peers that miss three.
The realtime gateway uses this to drop the presence of a process that died.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import asdict, dataclass

import orjson

from tidings.infra.backplane import Backplane, Subscription
from tidings.infra.logging import get_logger

CHANNEL = "nodes"
_log = get_logger(__name__)


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    role: str
    host: str
    pid: int
    started_at: float


class ClusterMembership:
    def __init__(self, backplane: Backplane, *, node_id: str, role: str, interval: float) -> None:
        self._backplane = backplane
        self.me = NodeInfo(node_id, role, socket.gethostname(), os.getpid(), time.time())
        self._interval = interval
        self._peers: dict[str, tuple[NodeInfo, float]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self._backplane.subscribe(CHANNEL, self._on_heartbeat)
        self._task = asyncio.create_task(self._announce_loop(), name="cluster-heartbeat")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._subscription is not None:
            await self._subscription.close()

    def alive(self) -> list[NodeInfo]:
        deadline = time.monotonic() - 3 * self._interval
        return [self.me] + [
            info
            for node_id, (info, seen) in sorted(self._peers.items())
            if seen >= deadline and node_id != self.me.node_id
        ]

    async def _announce_loop(self) -> None:
        payload = orjson.dumps(asdict(self.me))
        while True:
            try:
                await self._backplane.publish(CHANNEL, payload)
            except Exception:
                _log.warning("cluster_heartbeat_failed", exc_info=True)
            await asyncio.sleep(self._interval)

    def _on_heartbeat(self, _: str, data: bytes) -> None:
        info = NodeInfo(**orjson.loads(data))
        if info.node_id != self.me.node_id:
            self._peers[info.node_id] = (info, time.monotonic())
