"""The realtime gateway of one `serve` process.

Data flow: a committed event → the outbox dispatcher (one per cluster) → `RealtimePublisher`
publishes the batch, framed once, on the backplane channel `rt` → every `serve` process's
gateway routes each item to the local subscribers of its room (`Hub.fanout`). Typing goes the
same way without the outbox (ephemeral); presence has its own channel (`presence.py`).

Per connection: authentication at connect (access token or one-time ticket), automatic rooms
(the user's conversations, their user stream, their workspaces for presence), commands
(send, read, typing, presence, subscribe, resume, ping), heartbeats both ways and a bounded
send buffer (see `connection.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Annotated, Any, Literal, Protocol, cast
from urllib.parse import parse_qs

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from sqlalchemy import bindparam, select
from websockets.http11 import Request

from tidings.db.base import utcnow
from tidings.db.database import Database
from tidings.events.dispatcher import DispatchedEvent
from tidings.events.models import Event, EventStream
from tidings.http.problems import Problem
from tidings.identity.cache import CHANNEL as AUTH_INVALIDATE_CHANNEL
from tidings.identity.component import Identity
from tidings.identity.policy import UserPrincipal
from tidings.identity.tokens import AccessClaims, InvalidToken
from tidings.identity.workspaces import member_workspace_ids
from tidings.infra import metrics
from tidings.infra.backplane import Backplane
from tidings.infra.logging import get_logger
from tidings.infra.ratelimit import Rate
from tidings.messaging import events as messaging_events
from tidings.messaging.component import Messaging
from tidings.messaging.conversations import member_conversations
from tidings.messaging.messages import Draft
from tidings.realtime import protocol
from tidings.realtime.hub import Hub, Subscriber
from tidings.realtime.presence import AWAY, OFFLINE, ONLINE, Presence
from tidings.realtime.tickets import InProcessTickets, RedisTickets, TicketStore
from tidings.settings import Settings
from tidings.system.cluster import ClusterMembership

CHANNEL = "rt"
MAX_PENDING = 10_000
STREAM_CHUNK = 500
_streams = EventStream.__table__
# Built once, on the table (see messaging's `member_conversations`): every connect reads it.
_STREAM_POSITIONS = select(_streams.c.stream_key, _streams.c.last_seq).where(
    _streams.c.stream_key.in_(bindparam("streams", expanding=True))
)
_MEMBERSHIP_EVENTS = {messaging_events.MEMBER_JOINED, messaging_events.MEMBER_LEFT}
_log = get_logger(__name__)


# -- commands a client sends -----------------------------------------------------------------


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ref: str | int | None = None


class Ping(_Command):
    type: Literal["ping"]


class Typing(_Command):
    type: Literal["typing"]
    conversation_id: uuid.UUID
    state: Literal["start", "stop"] = "start"


class SetPresence(_Command):
    type: Literal["presence"]
    status: Literal["online", "away"]


class Subscribe(_Command):
    type: Literal["subscribe", "unsubscribe"]
    conversation_id: uuid.UUID


class Resume(_Command):
    type: Literal["resume"]
    positions: dict[str, Annotated[int, Field(ge=0)]] = Field(max_length=10_000)


class Send(_Command):
    type: Literal["send"]
    conversation_id: uuid.UUID
    body: str = Field(min_length=1, max_length=10_000)
    client_id: str | None = Field(default=None, min_length=1, max_length=100)
    thread_root_id: uuid.UUID | None = None


class Read(_Command):
    type: Literal["read"]
    conversation_id: uuid.UUID
    seq: int = Field(ge=0)


Command = Annotated[
    Ping | Typing | SetPresence | Subscribe | Resume | Send | Read, Field(discriminator="type")
]
_commands: TypeAdapter[Command] = TypeAdapter(Command)


class RealtimeSubscriber(Subscriber, Protocol):
    """What the gateway needs of a WebSocket or SSE client beyond the hub's part."""

    id: str
    session_id: uuid.UUID | None
    opened: bool
    pending: list[tuple[str, int | None, bytes, bytes, bool]] | None

    def send(self, frame: bytes) -> None: ...

    def deliver_now(
        self, room: str, seq: int | None, frame: bytes, ws_frame: bytes, ephemeral: bool
    ) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


# -- the publishing side (every process that may lead the outbox) ---------------------------


class RealtimePublisher:
    """Outbox live consumer: one backplane message per dispatched batch."""

    name = "realtime"

    def __init__(self, backplane: Backplane) -> None:
        self._backplane = backplane

    async def handle(self, events: Sequence[DispatchedEvent]) -> None:
        items = [
            protocol.pack_item(_meta(event), protocol.event_frame(event))
            for event in events
            if event.stream_key.startswith(protocol.FORWARDED_STREAM_PREFIXES)
        ]
        if items:
            await self._backplane.publish(CHANNEL, b"".join(items))


def _meta(event: DispatchedEvent) -> dict[str, Any]:
    meta: dict[str, Any] = {"room": event.stream_key, "seq": event.stream_seq, "event": event.type}
    if event.type in _MEMBERSHIP_EVENTS:
        meta["users"] = event.payload.get("user_ids", [])
        if event.workspace_id is not None:
            meta["workspace"] = str(event.workspace_id)
    return meta


# -- the gateway ------------------------------------------------------------------------------


class Gateway:
    def __init__(
        self,
        settings: Settings,
        *,
        db: Database,
        backplane: Backplane,
        redis: aioredis.Redis | None,
        identity: Identity,
        messaging: Messaging,
        cluster: ClusterMembership,
        node_id: str,
    ) -> None:
        self._db = db
        self._backplane = backplane
        self._identity = identity
        self._messaging = messaging
        self._cluster = cluster
        self.node_id = node_id
        self.hub = Hub()
        self.presence = Presence(backplane, node_id=node_id, on_change=self._presence_changed)
        self.tickets: TicketStore = (
            RedisTickets(redis, prefix=f"{settings.redis_prefix}ticket:")
            if redis is not None
            else InProcessTickets()
        )
        self.max_message_bytes = settings.ws_max_message_bytes
        self.send_buffer_bytes = settings.ws_send_buffer_bytes
        self.socket_send_buffer = settings.ws_socket_send_buffer_bytes
        self.max_pending = MAX_PENDING
        self.heartbeat_seconds = settings.ws_heartbeat_seconds
        self.idle_timeout = settings.ws_idle_timeout_seconds
        self.typing_ttl = settings.typing_ttl_seconds
        self.resume_max_events = settings.resume_max_events
        self.resume_max_age = timedelta(seconds=settings.resume_max_age_seconds)
        self._rate = Rate.parse(settings.ws_rate_limit)
        self._presence_interval = max(1.0, settings.node_heartbeat_seconds * 2)
        self._node_stale_after = settings.node_heartbeat_seconds * 3
        self._typing: dict[tuple[uuid.UUID, uuid.UUID], tuple[float, float]] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        self._workspaces: dict[str, frozenset[uuid.UUID]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.slow_consumers = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self._backplane.subscribe(CHANNEL, self._on_items)
        await self._backplane.subscribe(AUTH_INVALIDATE_CHANNEL, self._on_auth_invalidate)
        await self.presence.start()
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="realtime-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        for subscriber in self._all():
            subscriber.close(protocol.CLOSE_RESTART, "server restarting")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _all(self) -> list[RealtimeSubscriber]:
        return [s for subs in self.hub.by_user.values() for s in subs]  # type: ignore[misc]

    # -- connecting ------------------------------------------------------------------------

    def start_handshake(self, connection: Any, request: Request) -> None:
        self._spawn(self._handshake(connection, request))

    async def _handshake(self, connection: Any, request: Request) -> None:
        path, _, query = request.path.partition("?")
        if path.rstrip("/") != protocol.PATH:
            connection.reject(404, "Not Found\n")
            return
        try:
            who = await self.authenticate(
                request.headers.get("Authorization"), parse_qs(query), connection.client_ip
            )
        except Exception:
            _log.exception("realtime_auth_failed")
            connection.reject(503, "Unavailable\n")
            return
        if who is None:
            connection.reject(401, "Unauthorized: send a ticket or an access token\n")
            return
        try:
            positions = parse_positions(next(iter(parse_qs(query).get("resume", [])), None))
        except ValueError:
            connection.reject(400, "Bad Request: resume is a JSON object of stream to seq\n")
            return
        connection.user_id, connection.session_id = who
        if not connection.accept(request):
            return
        await self.open(connection, positions=positions)

    async def authenticate(
        self, authorization: str | None, params: dict[str, list[str]], ip: str | None
    ) -> tuple[uuid.UUID, uuid.UUID | None] | None:
        """(user id, session id) from a ticket, a bearer header or `access_token`; else None."""
        ticket = next(iter(params.get("ticket", [])), None)
        if ticket:
            found = await self.tickets.redeem(ticket)
            if found is None:
                return None
            user_id, session_id = found
            if session_id is not None and not await self._session_live(user_id, session_id):
                return None
            return found
        token = next(iter(params.get("access_token", [])), None)
        if token is None and authorization:
            scheme, _, value = authorization.partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        if not token:
            return None
        try:
            claims = self._identity.tokens.verify(token)
        except InvalidToken:
            return None
        if not await self._identity.accounts.session_is_live(claims):
            return None
        return claims.user_id, claims.session_id

    async def _session_live(self, user_id: uuid.UUID, session_id: uuid.UUID) -> bool:
        claims = AccessClaims(user_id, session_id, "ticket", utcnow())
        return await self._identity.accounts.session_is_live(claims)

    async def open(self, subscriber: RealtimeSubscriber, positions: dict[str, int] | None) -> None:
        """Join the subscriber's rooms, send `hello`, then what arrived meanwhile."""
        subscriber.pending = []
        user_id = subscriber.user_id
        self.hub.add(subscriber)
        metrics.REALTIME_CONNECTIONS.inc()
        try:
            # One read for the rooms (a connect storm, every client of a restarted process, costs
            # a session per connection less). Their positions are read after joining: what
            # commits in between waits in `pending`, and `_release` drops what the floor holds.
            async with self._db.read() as session:
                conversations = await member_conversations(session, user_id)
                workspaces = await member_workspace_ids(session, user_id)
            if _gone(subscriber):
                self.hub.remove(subscriber)
                return
            for conversation_id in conversations:
                self.hub.join(subscriber, messaging_events.conversation_stream(conversation_id))
            self.hub.join(subscriber, messaging_events.user_stream(user_id))
            for workspace_id in workspaces:
                self.hub.join(subscriber, f"workspace:{workspace_id}")
            streams = sorted(r for r in subscriber.rooms if not r.startswith("workspace:"))
            current = await self._positions(streams)
            self._workspaces[subscriber.id] = workspaces
        except Exception:
            _log.exception("realtime_open_failed", user_id=str(user_id))
            subscriber.close(1011, "internal error")
            return
        if _gone(subscriber):  # closed while its rooms were looked up
            return
        if self.presence.set(user_id, subscriber.id, ONLINE, workspaces):
            self._spawn(self.presence.publish_user(user_id))
        subscriber.send(
            protocol.dumps(
                {
                    "type": "hello",
                    "v": protocol.VERSION,
                    "connection_id": subscriber.id,
                    "user_id": str(user_id),
                    "node": self.node_id,
                    "heartbeat_seconds": self.heartbeat_seconds,
                    "typing_ttl_ms": int(self.typing_ttl * 1000),
                    "resume": {
                        "max_events": self.resume_max_events,
                        "max_age_seconds": self.resume_max_age.total_seconds(),
                    },
                    "positions": {s: current.get(s, 0) for s in streams},
                    "presence": {
                        str(u): status for u, status in self.presence.online_in(workspaces).items()
                    },
                }
            )
        )
        if positions:
            await self._resume(subscriber, None, positions, floor=current)
        else:
            self._release(subscriber, current)

    def _release(self, subscriber: RealtimeSubscriber, floor: dict[str, int]) -> None:
        """Send what arrived while the subscriber was being prepared, minus what it has."""
        pending, subscriber.pending = subscriber.pending or [], None
        for room, seq, frame, ws_frame, ephemeral in pending:
            if seq is None or seq > floor.get(room, 0):
                subscriber.deliver_now(room, seq, frame, ws_frame, ephemeral)

    async def _positions(self, streams: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        async with self._db.read() as session:
            for start in range(0, len(streams), STREAM_CHUNK):
                chunk = streams[start : start + STREAM_CHUNK]
                rows = await session.execute(_STREAM_POSITIONS, {"streams": chunk})
                found.update({stream: seq for stream, seq in rows.all()})  # noqa: C416 - typed pairs
        return found

    def disconnected(self, subscriber: RealtimeSubscriber) -> None:
        metrics.REALTIME_CONNECTIONS.dec()
        self.hub.remove(subscriber)
        self._workspaces.pop(subscriber.id, None)
        self._buckets.pop(subscriber.id, None)
        if self.presence.set(subscriber.user_id, subscriber.id, OFFLINE):
            self._spawn(self.presence.publish_user(subscriber.user_id))

    def slow_consumer(self, subscriber: RealtimeSubscriber) -> None:
        self.slow_consumers += 1
        metrics.REALTIME_SLOW_CONSUMERS.inc()
        _log.warning("realtime_slow_consumer", connection=subscriber.id)

    # -- commands --------------------------------------------------------------------------

    def handle_message(self, subscriber: RealtimeSubscriber, data: bytes) -> None:
        if not self._take_token(subscriber.id):
            subscriber.send(
                protocol.error_frame(
                    _ref_of(data), 429, "rate_limited", "Too many messages; slow down."
                )
            )
            return
        try:
            command = _commands.validate_json(data)
        except ValidationError as exc:
            ref = _ref_of(data)
            errors = [
                {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                for e in exc.errors(include_url=False, include_input=False)
            ]
            subscriber.send(
                protocol.error_frame(
                    ref, 400, "invalid_command", "The command is not valid.", errors=errors
                )
            )
            return
        match command:
            case Ping():
                subscriber.send(protocol.dumps({"type": "pong", "ref": command.ref}))
            case Typing():
                self._on_typing(subscriber, command)
            case SetPresence():
                workspaces = self._workspaces.get(subscriber.id, frozenset())
                status = ONLINE if command.status == "online" else AWAY
                if self.presence.set(subscriber.user_id, subscriber.id, status, workspaces):
                    self._spawn(self.presence.publish_user(subscriber.user_id))
                self._ack(subscriber, command.ref, {"status": command.status})
            case Subscribe():
                self._spawn(
                    self._run(subscriber, command.ref, self._subscribe(subscriber, command))
                )
            case Resume():
                self._spawn(self._resume(subscriber, command.ref, command.positions))
            case Send():
                self._spawn(self._run(subscriber, command.ref, self._send(subscriber, command)))
            case Read():
                self._spawn(self._run(subscriber, command.ref, self._read(subscriber, command)))

    def _take_token(self, key: str) -> bool:
        # A token bucket per connection, kept here: a connection lives on one process.
        now = asyncio.get_running_loop().time()
        tokens, updated = self._buckets.get(key, (float(self._rate.capacity), now))
        tokens = min(self._rate.capacity, tokens + (now - updated) / self._rate.seconds_per_token)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1, now)
        return True

    def _ack(self, subscriber: RealtimeSubscriber, ref: Any, data: dict[str, Any]) -> None:
        subscriber.send(protocol.dumps({"type": "ack", "ref": ref, "data": data}))

    async def _run(
        self,
        subscriber: RealtimeSubscriber,
        ref: Any,
        work: Awaitable[dict[str, Any]],
    ) -> None:
        try:
            result = await work
        except Problem as problem:
            subscriber.send(
                protocol.error_frame(
                    ref, problem.status, problem.code, problem.detail or "", **problem.extensions
                )
            )
            return
        except Exception:
            _log.exception("realtime_command_failed", connection=subscriber.id)
            subscriber.send(protocol.error_frame(ref, 500, "internal_error", "Something failed."))
            return
        self._ack(subscriber, ref, result)

    def _principal(self, subscriber: RealtimeSubscriber) -> UserPrincipal:
        return UserPrincipal(subscriber.user_id, subscriber.session_id)

    async def _send(self, subscriber: RealtimeSubscriber, command: Send) -> dict[str, Any]:
        sent = await self._messaging.messages.send(
            self._principal(subscriber),
            command.conversation_id,
            Draft(command.body, command.client_id, command.thread_root_id),
        )
        self._stop_typing(command.conversation_id, subscriber.user_id)
        return {"message": sent.message, "created": sent.created}

    async def _read(self, subscriber: RealtimeSubscriber, command: Read) -> dict[str, Any]:
        out = await self._messaging.conversations.mark_read(
            self._principal(subscriber), command.conversation_id, command.seq
        )
        return {"conversation_id": str(out.id), "last_read_seq": out.last_read_seq}

    async def _subscribe(
        self, subscriber: RealtimeSubscriber, command: Subscribe
    ) -> dict[str, Any]:
        room = messaging_events.conversation_stream(command.conversation_id)
        if command.type == "unsubscribe":
            self.hub.leave(subscriber, room)
            return {"stream": room, "subscribed": False}
        # Reading is enough to watch (a public channel one has not joined, for instance).
        await self._messaging.conversations.readable(
            self._principal(subscriber), command.conversation_id
        )
        if subscriber.opened:
            self.hub.join(subscriber, room)
        position = (await self._positions([room])).get(room, 0)
        return {"stream": room, "subscribed": True, "seq": position}

    # -- resume ----------------------------------------------------------------------------

    async def _resume(
        self,
        subscriber: RealtimeSubscriber,
        ref: Any,
        positions: dict[str, int],
        floor: dict[str, int] | None = None,
    ) -> None:
        """Replay what the client missed per stream (G4), or say `resync_required`."""
        if subscriber.pending is None:
            subscriber.pending = []
        replayed: dict[str, int] = dict(floor or {})
        results: dict[str, Any] = {}
        try:
            allowed = {s: p for s, p in positions.items() if s in subscriber.rooms}
            for stream in positions.keys() - allowed.keys():
                results[stream] = self._resync(subscriber, stream, "not_subscribed")
            current = await self._positions(sorted(allowed))
            for stream, since in sorted(allowed.items()):
                last = current.get(stream, 0)
                if since == last:
                    results[stream] = {"recovered": True, "count": 0}
                    replayed[stream] = since
                elif since > last:
                    results[stream] = self._resync(subscriber, stream, "unknown_position")
                elif last - since > self.resume_max_events:
                    results[stream] = self._resync(subscriber, stream, "too_many")
                else:
                    results[stream] = await self._replay(subscriber, stream, since, replayed)
        except Exception:
            _log.exception("realtime_resume_failed", connection=subscriber.id)
            self._release(subscriber, replayed)
            subscriber.send(protocol.error_frame(ref, 500, "internal_error", "Resume failed."))
            return
        self._release(subscriber, replayed)
        subscriber.send(protocol.dumps({"type": "resumed", "ref": ref, "streams": results}))

    async def _replay(
        self,
        subscriber: RealtimeSubscriber,
        stream: str,
        since: int,
        replayed: dict[str, int],
    ) -> dict[str, Any]:
        async with self._db.read() as session:
            rows = (
                await session.execute(
                    select(
                        Event.id,
                        Event.position,
                        Event.type,
                        Event.workspace_id,
                        Event.stream_key,
                        Event.stream_seq,
                        Event.payload,
                        Event.occurred_at,
                    )
                    .where(Event.stream_key == stream, Event.stream_seq > since)
                    .order_by(Event.stream_seq)
                    .limit(self.resume_max_events + 1)
                )
            ).all()
        if not rows or rows[0].stream_seq != since + 1:
            return self._resync(subscriber, stream, "expired")
        if rows[0].occurred_at < utcnow() - self.resume_max_age:
            return self._resync(subscriber, stream, "too_old")
        for row in rows:
            subscriber.send(protocol.event_frame(DispatchedEvent(*row)))
        replayed[stream] = rows[-1].stream_seq
        return {"recovered": True, "count": len(rows)}

    def _resync(self, subscriber: RealtimeSubscriber, stream: str, reason: str) -> dict[str, Any]:
        subscriber.send(
            protocol.dumps({"type": "resync_required", "stream": stream, "reason": reason})
        )
        return {"recovered": False, "reason": reason}

    # -- typing ----------------------------------------------------------------------------

    def _on_typing(self, subscriber: RealtimeSubscriber, command: Typing) -> None:
        room = messaging_events.conversation_stream(command.conversation_id)
        if room not in subscriber.rooms:
            subscriber.send(
                protocol.error_frame(
                    command.ref, 404, "conversation_not_found", "No such conversation."
                )
            )
            return
        key = (command.conversation_id, subscriber.user_id)
        now = asyncio.get_running_loop().time()
        if command.state == "stop":
            self._stop_typing(*key)
            return
        expires, announced = self._typing.get(key, (0.0, 0.0))
        # Re-announce before receivers' TTL runs out; in between, a renewal only extends it.
        if now >= expires or now - announced >= self.typing_ttl * 0.6:
            announced = now
            self._broadcast_typing(command.conversation_id, subscriber.user_id, "start")
        self._typing[key] = (now + self.typing_ttl, announced)

    def _stop_typing(self, conversation_id: uuid.UUID, user_id: uuid.UUID) -> None:
        if self._typing.pop((conversation_id, user_id), None) is not None:
            self._broadcast_typing(conversation_id, user_id, "stop")

    def _broadcast_typing(self, conversation_id: uuid.UUID, user_id: uuid.UUID, state: str) -> None:
        frame = protocol.typing_frame(conversation_id, user_id, state, self.typing_ttl)
        meta = {
            "room": messaging_events.conversation_stream(conversation_id),
            "seq": None,
            "eph": True,
            "except": str(user_id),
        }
        self._spawn(self._backplane.publish(CHANNEL, protocol.pack_item(meta, frame)))

    # -- presence --------------------------------------------------------------------------

    def _presence_changed(
        self, user_id: uuid.UUID, status: str, workspaces: frozenset[uuid.UUID]
    ) -> None:
        frame = protocol.presence_frame(user_id, status)
        for workspace_id in workspaces:
            self.hub.fanout(f"workspace:{workspace_id}", None, frame, ephemeral=True)

    # -- from the backplane ----------------------------------------------------------------

    def _on_items(self, _: str, data: bytes) -> None:
        delivered = self.hub.delivered
        self._route(data)
        metrics.REALTIME_DELIVERIES.inc(self.hub.delivered - delivered)

    def _route(self, data: bytes) -> None:
        items = protocol.unpack_items(data)
        start = 0
        while start < len(items):
            # A run of plain events of one room (a burst committed together) goes to each
            # subscriber as one write: one syscall per subscriber per run, not per event.
            end = start
            while end < len(items) and _plain(items[end][0], items[start][0]["room"]):
                end += 1
            if end - start > 1:
                run = items[start:end]
                self.hub.fanout_run(run[0][0]["room"], [(m.get("seq"), f) for m, f in run])
                start = end
                continue
            self._route_one(*items[start])
            start += 1

    def _route_one(self, meta: dict[str, Any], frame: bytes) -> None:
        room = meta["room"]
        event = meta.get("event")
        if event == messaging_events.MEMBER_JOINED:
            self._membership(room, meta.get("users", ()), join=True)
            if meta.get("workspace"):
                self._joined_workspace(uuid.UUID(meta["workspace"]), meta.get("users", ()))
        self.hub.fanout(
            room,
            meta.get("seq"),
            frame,
            ephemeral=bool(meta.get("eph")),
            exclude_user=uuid.UUID(meta["except"]) if meta.get("except") else None,
        )
        if event == messaging_events.MEMBER_LEFT:
            self._membership(room, meta.get("users", ()), join=False)

    def _membership(self, room: str, users: Sequence[str], *, join: bool) -> None:
        for subscriber in self.hub.connections_of(uuid.UUID(u) for u in users):
            if join:
                self.hub.join(subscriber, room)
            else:
                self.hub.leave(subscriber, room)

    def _joined_workspace(self, workspace_id: uuid.UUID, users: Sequence[str]) -> None:
        """People already connected joined a conversation of a workspace their connections
        were not following (they created it, or accepted an invitation): follow its presence
        from now on, and announce theirs there, without a reconnect."""
        newcomers: set[uuid.UUID] = set()
        for member in self.hub.connections_of(uuid.UUID(u) for u in users):
            subscriber = cast("RealtimeSubscriber", member)  # the hub holds only the gateway's
            followed = self._workspaces.get(subscriber.id)
            if followed is None or workspace_id in followed:
                continue  # still opening (open() reads the workspaces itself), or known
            self._workspaces[subscriber.id] = followed | {workspace_id}
            self.hub.join(subscriber, f"workspace:{workspace_id}")
            newcomers.add(subscriber.user_id)
            # Who is already online there, as `hello` would have said.
            for user_id, status in self.presence.online_in({workspace_id}).items():
                if user_id != subscriber.user_id:
                    subscriber.send(protocol.presence_frame(user_id, status))
        for user_id in newcomers:
            if self.presence.join_workspace(user_id, workspace_id):
                self._spawn(self.presence.publish_user(user_id))

    def _on_auth_invalidate(self, _: str, data: bytes) -> None:
        key = data.decode()
        if not key.startswith("session:"):
            return
        session_id = uuid.UUID(key.removeprefix("session:"))
        for subscriber in self._all():
            if subscriber.session_id == session_id:
                subscriber.close(protocol.CLOSE_SESSION_ENDED, "session ended")

    # -- housekeeping ----------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + self.heartbeat_seconds
        next_presence = loop.time() + self._presence_interval
        while True:
            await asyncio.sleep(min(1.0, self.heartbeat_seconds / 2, self.typing_ttl / 5))
            try:
                now = loop.time()
                ping = now >= next_ping
                if ping:
                    next_ping = now + self.heartbeat_seconds
                self._sweep_connections(now, ping)
                for key, (expires, _) in list(self._typing.items()):
                    if now >= expires:
                        self._stop_typing(*key)
                if now >= next_presence:
                    next_presence = now + self._presence_interval
                    alive = frozenset(node.node_id for node in self._cluster.alive())
                    self.presence.forget_nodes(alive, self._node_stale_after)
                    await self.presence.publish_snapshot()
            except Exception:
                _log.exception("realtime_sweep_failed")

    def _sweep_connections(self, now: float, ping: bool) -> None:
        for subscriber in self._all():
            heartbeat: Callable[[], None] | None = getattr(subscriber, "ping", None)
            last_seen: float | None = getattr(subscriber, "last_seen", None)
            if last_seen is not None and now - last_seen > self.idle_timeout:
                subscriber.close(protocol.CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout")
            elif ping and heartbeat is not None:
                heartbeat()

    @property
    def stats(self) -> dict[str, int]:
        return {
            "connections": self.hub.connection_count,
            "rooms": len(self.hub.rooms),
            "delivered": self.hub.delivered,
            "dropped_ephemeral": self.hub.dropped,
            "slow_consumers_disconnected": self.slow_consumers,
        }


def parse_positions(raw: str | None) -> dict[str, int] | None:
    """`?resume=` of a connect URL: a JSON object of stream → last seq seen."""
    if not raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(value, dict) or not all(
        isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 for seq in value.values()
    ):
        raise ValueError("not an object of stream to seq")
    return {str(stream): seq for stream, seq in value.items()}


def _plain(meta: dict[str, Any], room: str) -> bool:
    return (
        meta["room"] == room
        and not meta.get("eph")
        and not meta.get("except")
        and meta.get("event") not in _MEMBERSHIP_EVENTS
    )


def _gone(subscriber: RealtimeSubscriber) -> bool:
    # A function, not an inline check: the state changes across awaits, which type narrowing
    # does not see.
    return not subscriber.opened


def _ref_of(data: bytes) -> Any:
    with contextlib.suppress(Exception):
        value = orjson.loads(data)
        if isinstance(value, dict):
            return value.get("ref")
    return None


__all__ = ["CHANNEL", "Gateway", "RealtimePublisher"]
