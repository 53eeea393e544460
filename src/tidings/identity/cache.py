"""Short-lived caches of what authentication looked up, invalidated across processes.

A revoked API key or session must stop working everywhere within a second: entries live at most
`ttl` seconds, and a revocation is also published on the backplane so every process drops the
entry at once (`invalidate`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Generic, TypeVar

from tidings.infra.backplane import Backplane

V = TypeVar("V")
CHANNEL = "auth-invalidate"


class TTLCache(Generic[V]):
    def __init__(self, ttl_seconds: float, max_entries: int = 100_000) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def get(self, key: str) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored_at, value = entry
        if time.monotonic() - stored_at > self._ttl:
            del self._entries[key]
            return None
        return value

    def put(self, key: str, value: V) -> None:
        self._entries[key] = (time.monotonic(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def evict(self, key: str) -> None:
        self._entries.pop(key, None)


class AuthCaches:
    """The caches of one process, and their cross-process invalidation."""

    def __init__(self, backplane: Backplane, ttl_seconds: float) -> None:
        self._backplane = backplane
        self.api_keys: TTLCache[object] = TTLCache(ttl_seconds)
        self.sessions: TTLCache[bool] = TTLCache(ttl_seconds)

    async def start(self) -> None:
        await self._backplane.subscribe(CHANNEL, self._on_invalidate)

    async def invalidate(self, key: str) -> None:
        self._evict(key)
        await self._backplane.publish(CHANNEL, key.encode())

    def _on_invalidate(self, _: str, data: bytes) -> None:
        self._evict(data.decode())

    def _evict(self, key: str) -> None:
        self.api_keys.evict(key)
        self.sessions.evict(key)
