"""The rooms of one process: which local clients follow which stream, and fan-out to them.

A room is named like the stream it carries (`conversation:<id>`, `user:<id>`) or, for
presence, `workspace:<id>`. Fan-out is synchronous: a frame built once is written to each
subscriber's transport in one pass, with no task or queue per recipient.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Protocol

from tidings.realtime.protocol import ws_text


class Subscriber(Protocol):
    user_id: uuid.UUID
    rooms: set[str]

    def deliver(
        self, room: str, seq: int | None, frame: bytes, ws_frame: bytes, ephemeral: bool
    ) -> None: ...

    def deliver_run(
        self,
        room: str,
        items: list[tuple[int | None, bytes]],
        ws_frames: list[bytes],
        joined: bytes,
    ) -> None: ...


class Hub:
    def __init__(self) -> None:
        self.rooms: dict[str, set[Subscriber]] = {}
        self.by_user: dict[uuid.UUID, set[Subscriber]] = {}
        self.delivered = 0
        self.dropped = 0

    def add(self, subscriber: Subscriber) -> None:
        self.by_user.setdefault(subscriber.user_id, set()).add(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        for room in list(subscriber.rooms):
            self.leave(subscriber, room)
        connections = self.by_user.get(subscriber.user_id)
        if connections is not None:
            connections.discard(subscriber)
            if not connections:
                del self.by_user[subscriber.user_id]

    def join(self, subscriber: Subscriber, room: str) -> None:
        subscriber.rooms.add(room)
        self.rooms.setdefault(room, set()).add(subscriber)

    def leave(self, subscriber: Subscriber, room: str) -> None:
        subscriber.rooms.discard(room)
        members = self.rooms.get(room)
        if members is not None:
            members.discard(subscriber)
            if not members:
                del self.rooms[room]

    def connections_of(self, user_ids: Iterable[uuid.UUID]) -> list[Subscriber]:
        return [c for user_id in user_ids for c in self.by_user.get(user_id, ())]

    def has_room(self, room: str) -> bool:
        return room in self.rooms

    def fanout(
        self,
        room: str,
        seq: int | None,
        frame: bytes,
        *,
        ephemeral: bool = False,
        exclude_user: uuid.UUID | None = None,
    ) -> int:
        members = self.rooms.get(room)
        if not members:
            return 0
        ws_frame = ws_text(frame)
        # A copy: delivering can close a slow client, which leaves the room mid-iteration.
        count = 0
        for subscriber in tuple(members):
            if subscriber.user_id != exclude_user:
                subscriber.deliver(room, seq, frame, ws_frame, ephemeral)
                count += 1
        self.delivered += count
        return count

    def fanout_run(self, room: str, items: list[tuple[int | None, bytes]]) -> int:
        """Several plain events of one room: each subscriber gets them in one write."""
        members = self.rooms.get(room)
        if not members:
            return 0
        ws_frames = [ws_text(frame) for _, frame in items]
        joined = b"".join(ws_frames)
        count = len(members) * len(items)
        for subscriber in tuple(members):
            subscriber.deliver_run(room, items, ws_frames, joined)
        self.delivered += count
        return count

    @property
    def connection_count(self) -> int:
        return sum(len(c) for c in self.by_user.values())
