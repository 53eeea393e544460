"""Presence: online, away or offline per user, as the union of every process's connections.

Each process knows its own connections. When a user's status on this process changes it tells
the others on the backplane (`presence` channel), and every few seconds it republishes its whole
view so a process that starts, or missed a message, converges. A process that stops
heartbeating (see `tidings.system.cluster`) is forgotten, and with it the presence of its users.
Each process then tells its own clients when a user's cluster-wide status changes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import orjson

from tidings.infra.backplane import Backplane

CHANNEL = "presence"
ONLINE, AWAY, OFFLINE = "online", "away", "offline"
_RANK = {OFFLINE: 0, AWAY: 1, ONLINE: 2}


@dataclass
class _Remote:
    seen: float
    users: dict[uuid.UUID, tuple[str, frozenset[uuid.UUID]]] = field(default_factory=dict)


class Presence:
    def __init__(
        self,
        backplane: Backplane,
        *,
        node_id: str,
        on_change: Callable[[uuid.UUID, str, frozenset[uuid.UUID]], None],
    ) -> None:
        self._backplane = backplane
        self._node_id = node_id
        self._on_change = on_change
        # user → {connection key: status}, and the workspaces the user's connections are in.
        self._local: dict[uuid.UUID, dict[str, str]] = {}
        # user → {status: how many of its connections here have it}: a user's status is then
        # found without walking its connections (a service account may hold thousands).
        self._counts: dict[uuid.UUID, dict[str, int]] = {}
        self._workspaces: dict[uuid.UUID, frozenset[uuid.UUID]] = {}
        self._remote: dict[str, _Remote] = {}
        # What this process last told its clients, per user (absent = offline), and where.
        self._announced: dict[uuid.UUID, tuple[str, frozenset[uuid.UUID]]] = {}

    async def start(self) -> None:
        await self._backplane.subscribe(CHANNEL, self._on_message)
        await self.publish_snapshot()

    # -- local connections -----------------------------------------------------------------

    def set(
        self,
        user_id: uuid.UUID,
        connection: str,
        status: str,
        workspaces: Iterable[uuid.UUID] = (),
    ) -> bool:
        """Record one connection's status; True when the user's local status changed."""
        before = self._local_status(user_id)
        devices = self._local.setdefault(user_id, {})
        counts = self._counts.setdefault(user_id, {})
        previous = devices.pop(connection, None)
        if previous is not None:
            counts[previous] -= 1
            if not counts[previous]:
                del counts[previous]
        if status != OFFLINE:
            devices[connection] = status
            counts[status] = counts.get(status, 0) + 1
        if not devices:
            del self._local[user_id]
            del self._counts[user_id]
        if status != OFFLINE:
            self._workspaces[user_id] = self._workspaces.get(user_id, frozenset()) | frozenset(
                workspaces
            )
        after = self._local_status(user_id)
        if after != before:
            self._recompute(user_id)
        if user_id not in self._local:
            self._workspaces.pop(user_id, None)
        return after != before

    def join_workspace(self, user_id: uuid.UUID, workspace_id: uuid.UUID) -> bool:
        """A user connected here joined a workspace; True when that is news to announce."""
        if user_id not in self._local:
            return False
        known = self._workspaces.get(user_id, frozenset())
        if workspace_id in known:
            return False
        self._workspaces[user_id] = known | {workspace_id}
        self._recompute(user_id)
        return True

    def _local_status(self, user_id: uuid.UUID) -> str:
        counts = self._counts.get(user_id)
        if not counts:
            return OFFLINE
        return max(counts, key=_RANK.__getitem__)

    def status(self, user_id: uuid.UUID) -> str:
        best = self._local_status(user_id)
        for remote in self._remote.values():
            entry = remote.users.get(user_id)
            if entry is not None and _RANK[entry[0]] > _RANK[best]:
                best = entry[0]
        return best

    def online_in(self, workspace_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
        """Users seen online or away in any of these workspaces."""
        wanted = set(workspace_ids)
        found: dict[uuid.UUID, str] = {}
        for user_id, (status, workspaces) in self._announced.items():
            if workspaces & wanted:
                found[user_id] = status
        return found

    def _workspaces_of(self, user_id: uuid.UUID) -> frozenset[uuid.UUID]:
        workspaces = self._workspaces.get(user_id, frozenset())
        for remote in self._remote.values():
            entry = remote.users.get(user_id)
            if entry is not None:
                workspaces |= entry[1]
        return workspaces

    def _recompute(self, user_id: uuid.UUID) -> None:
        status = self.status(user_id)
        previous_status, previous_workspaces = self._announced.get(user_id, (OFFLINE, frozenset()))
        workspaces = self._workspaces_of(user_id)
        if previous_status == status and previous_workspaces == workspaces:
            return
        if status == OFFLINE:
            # Gone everywhere: tell the workspaces the user was last seen in.
            del self._announced[user_id]
            self._on_change(user_id, status, previous_workspaces | workspaces)
            return
        self._announced[user_id] = (status, workspaces)
        if previous_status != status:
            self._on_change(user_id, status, workspaces)
        elif workspaces - previous_workspaces:
            # Same status, new workspaces: only their members have not seen it yet.
            self._on_change(user_id, status, workspaces - previous_workspaces)

    # -- between processes -----------------------------------------------------------------

    def local_entry(self, user_id: uuid.UUID) -> bytes:
        return orjson.dumps(
            {
                "node": self._node_id,
                "users": {
                    str(user_id): [
                        self._local_status(user_id),
                        [str(w) for w in self._workspaces.get(user_id, ())],
                    ]
                },
            }
        )

    async def publish_user(self, user_id: uuid.UUID) -> None:
        await self._backplane.publish(CHANNEL, self.local_entry(user_id))

    async def publish_snapshot(self) -> None:
        users = {
            str(user_id): [self._local_status(user_id), [str(w) for w in self._workspaces[user_id]]]
            for user_id in self._local
        }
        await self._backplane.publish(
            CHANNEL, orjson.dumps({"node": self._node_id, "users": users, "snapshot": True})
        )

    def _on_message(self, _: str, data: bytes) -> None:
        message = orjson.loads(data)
        node = message["node"]
        if node == self._node_id:
            return
        remote = self._remote.setdefault(node, _Remote(time.monotonic()))
        remote.seen = time.monotonic()
        touched: set[uuid.UUID] = set()
        if message.get("snapshot"):
            touched.update(remote.users)
            remote.users = {}
        for raw_user, (status, workspaces) in message["users"].items():
            user_id = uuid.UUID(raw_user)
            touched.add(user_id)
            if status == OFFLINE:
                remote.users.pop(user_id, None)
            else:
                remote.users[user_id] = (status, frozenset(uuid.UUID(w) for w in workspaces))
        for user_id in touched:
            self._recompute(user_id)

    def forget_nodes(self, alive: frozenset[str], stale_after: float) -> None:
        """Drop processes that left the cluster (or were not heard of for `stale_after`)."""
        now = time.monotonic()
        for node in list(self._remote):
            if node not in alive or now - self._remote[node].seen > stale_after:
                users = self._remote.pop(node).users
                for user_id in users:
                    self._recompute(user_id)

    def forget_user_workspace(self, user_id: uuid.UUID, workspace_id: uuid.UUID) -> None:
        if user_id in self._workspaces:
            self._workspaces[user_id] = self._workspaces[user_id] - {workspace_id}
