"""`RealtimeConnection`: the WebSocket gateway, with reconnection and resume.

Guarantee to the consumer: every event of a stream is handed out once, in `seq` order, across
reconnections — or, where the server can no longer replay what was missed, a `ResyncRequired`
frame for that stream comes first (refetch its state over REST), then the stream continues.

How: the connection keeps the last `seq` handed out per stream (from `hello` positions and the
events themselves). An event at or below it is a duplicate and dropped; one beyond the next is
held until the gap is filled. After a drop it reconnects with jittered exponential backoff,
takes a fresh ticket, re-subscribes what it subscribed to, and sends `resume` with its
positions; the server replays what was missed (or answers `resync_required`). A gap on a live
connection (the backplane is at-most-once) is repaired the same way after `gap_timeout`.

Commands (send, read, subscribe, presence) wait for their reply by `ref`; one that was in
flight when the connection dropped is sent again on the next one. Every command is idempotent
on the server (`send` through its `client_id`), so a repeat cannot double anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import httpx
import orjson
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.typing import Subprotocol

from tidings.client.errors import RealtimeClosed, TidingsError
from tidings.client.models import (
    Ack,
    AnyFrame,
    ErrorFrame,
    Event,
    Hello,
    MessageOut,
    Pong,
    PresenceFrame,
    Resumed,
    ResyncRequired,
    ServerFrame,
    TypingFrame,
    frame_adapter,
)

if TYPE_CHECKING:
    from tidings.client.http import Id, TidingsClient

SUBPROTOCOL = "tidings.v1"
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_RESTART = 1012
CLOSE_SESSION_ENDED = 4001
# Closes that mean "your credentials or behaviour": reconnect only after a successful refresh.
AUTH_CLOSES = frozenset({CLOSE_POLICY, CLOSE_SESSION_ENDED})
MAX_RESUME_STREAMS = 10_000  # the server's limit per `resume` command
HELLO_TIMEOUT = 10.0
RATE_LIMIT_PAUSE = 1.0
MEMBER_LEFT = "conversation.member_left"

_log = logging.getLogger("tidings.client.realtime")


class StreamTracker:
    """Positions per stream: each (stream, seq) goes out once, in order, gaps held back."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self._held: dict[str, dict[int, Event]] = {}

    def start(self, stream: str, position: int) -> None:
        """Follow `stream` from `position` (the last seq already accounted for)."""
        self.last[stream] = position
        self._drop_through(stream, position)

    def knows(self, stream: str) -> bool:
        return stream in self.last

    def forget(self, stream: str) -> None:
        self.last.pop(stream, None)
        self._held.pop(stream, None)

    def accept(self, event: Event) -> list[Event]:
        """The events to hand out now that `event` arrived (none, it, or it and held ones)."""
        stream, seq = event.stream, event.seq
        last = self.last.get(stream)
        if last is None:  # a stream new to us (just joined or subscribed): it starts here
            self.last[stream] = seq
            return [event]
        if seq <= last:
            return []  # seen already
        if seq > last + 1:
            self._held.setdefault(stream, {})[seq] = event
            return []
        self.last[stream] = seq
        return [event, *self._release(stream)]

    def resync(self, stream: str, reason: str, position: int | None) -> list[Event]:
        """The server cannot replay `stream`: continue from where this connection began
        receiving it (`position`), skipping any remaining gap. Returns events released."""
        if reason == "not_subscribed":
            self.forget(stream)
            return []
        last = self.last.get(stream)
        if position is None:
            position = last or 0
        elif reason != "unknown_position" and last is not None:
            position = max(last, position)
        self.last[stream] = position
        self._drop_through(stream, position)
        held = self._held.get(stream)
        if held:
            self.last[stream] = min(held) - 1
        return self._release(stream)

    def gaps(self) -> dict[str, int]:
        """Streams waiting for missing events, with the last seq handed out."""
        return {stream: self.last[stream] for stream, held in self._held.items() if held}

    def _release(self, stream: str) -> list[Event]:
        held = self._held.get(stream)
        out: list[Event] = []
        while held:
            following = held.pop(self.last[stream] + 1, None)
            if following is None:
                break
            out.append(following)
            self.last[stream] = following.seq
        if not held:
            self._held.pop(stream, None)
        return out

    def _drop_through(self, stream: str, position: int) -> None:
        held = self._held.get(stream)
        if held:
            for seq in [s for s in held if s <= position]:
                del held[seq]
            if not held:
                del self._held[stream]


class _ConnectionLostError(Exception):
    """An internal command's connection ended before its reply."""


@dataclass
class _Pending:
    payload: dict[str, Any]
    future: asyncio.Future[AnyFrame]
    internal: bool = False  # restore/repair commands: never re-sent on another connection
    generation: int = -1  # the connection it was last sent on
    sent_at: float = field(default=0.0)


class _End:
    pass


_END = _End()


class RealtimeConnection:
    """A WebSocket connection to the gateway; create it with `TidingsClient.realtime()`.

    ```
    async with client.realtime() as conn:
        await conn.send_message(conversation_id, "hello")
        async for frame in conn:        # Hello, Event, ResyncRequired, TypingFrame, ...
            ...
    ```
    Iteration ends when the application closes the connection, and raises `RealtimeClosed`
    when the server ended it for good (after every frame received before was handed out).
    """

    def __init__(
        self,
        client: TidingsClient,
        *,
        reconnect: bool = True,
        initial_delay: float = 0.5,
        max_delay: float = 30.0,
        max_attempts: int | None = None,
        command_timeout: float = 30.0,
        gap_timeout: float = 1.0,
    ) -> None:
        self._client = client
        self._reconnect_enabled = reconnect
        self._initial_delay = max(0.0, initial_delay)
        self._max_delay = max(self._initial_delay, max_delay)
        self._max_attempts = max_attempts
        self._command_timeout = command_timeout
        self._gap_timeout = gap_timeout
        self._tracker = StreamTracker()
        # Where the current connection began receiving each stream (hello, subscribe acks).
        self._positions: dict[str, int] = {}
        self._subscriptions: set[uuid.UUID] = set()
        self._queue: asyncio.Queue[ServerFrame | _End] = asyncio.Queue()
        self._pending: dict[str, _Pending] = {}
        self._refs = itertools.count(1)
        self._ws: ClientConnection | None = None
        self._generation = 0
        self._ready = False
        self._closing = False  # the application closes it
        self._closed: RealtimeClosed | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._repairing = False
        #: The latest `hello` (one per connection, reconnections included).
        self.hello: Hello | None = None
        #: How many times the connection was re-established after a drop.
        self.reconnects = 0
        #: The server's answer to the latest `resume`, per stream (`recovered`, `count`/`reason`).
        self.last_resume: dict[str, dict[str, Any]] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> RealtimeConnection:
        ws, hello = await self._open()
        self._attach(ws, hello, first=True)
        self._runner = asyncio.create_task(self._run(ws), name="tidings-realtime")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; waiting commands fail with `RealtimeClosed`, iteration ends."""
        if self._closing:
            return
        self._closing = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)
        tasks = [t for t in (self._runner, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._ws is not None and self._ws is not ws:  # opened while we were closing
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 5)
        self._finish(RealtimeClosed(CLOSE_NORMAL, "closed by the application"))

    @property
    def connected(self) -> bool:
        """True while a connection is open and restored (commands go out at once)."""
        return self._ready and self._closed is None

    @property
    def user_id(self) -> uuid.UUID | None:
        return self.hello.user_id if self.hello else None

    @property
    def positions(self) -> dict[str, int]:
        """The last seq handed out per stream."""
        return dict(self._tracker.last)

    # -- receiving ---------------------------------------------------------------------------

    def __aiter__(self) -> RealtimeConnection:
        return self

    async def __anext__(self) -> ServerFrame:
        item = await self._queue.get()
        if isinstance(item, _End):
            self._queue.put_nowait(item)  # every later call ends too
            if self._closed is not None and not self._closing:
                raise self._closed
            raise StopAsyncIteration
        return item

    async def next_frame(self, timeout: float | None = None) -> ServerFrame:  # noqa: ASYNC109 - convenience
        """The next frame, waiting at most `timeout` seconds (TimeoutError)."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    # -- commands ----------------------------------------------------------------------------

    async def send_message(
        self,
        conversation_id: Id,
        body: str,
        *,
        client_id: str | None = None,
        thread_root_id: Id | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - per command
    ) -> MessageOut:
        """Send a message and return it once the server acknowledged it (raises `TidingsError`
        on an error reply). Survives reconnections: it is sent again with the same client_id."""
        payload: dict[str, Any] = {
            "type": "send",
            "conversation_id": str(conversation_id),
            "body": body,
            "client_id": client_id or uuid.uuid4().hex,
        }
        if thread_root_id is not None:
            payload["thread_root_id"] = str(thread_root_id)
        ack = await self._ack(payload, timeout)
        return MessageOut.model_validate(ack.data["message"])

    async def mark_read(
        self,
        conversation_id: Id,
        seq: int,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - per command
    ) -> int:
        """Move your read position to message `seq`; returns the position now stored."""
        ack = await self._ack(
            {"type": "read", "conversation_id": str(conversation_id), "seq": seq}, timeout
        )
        return int(ack.data["last_read_seq"])

    async def subscribe(
        self,
        conversation_id: Id,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - per command
    ) -> int:
        """Follow a conversation you can read but are not a member of (a public channel);
        kept across reconnections. Returns the stream's current seq."""
        cid = uuid.UUID(str(conversation_id))
        ack = await self._ack({"type": "subscribe", "conversation_id": str(cid)}, timeout)
        stream = str(ack.data.get("stream") or f"conversation:{cid}")
        position = int(ack.data.get("seq", 0))
        self._subscriptions.add(cid)
        self._positions[stream] = position
        if not self._tracker.knows(stream):
            self._tracker.start(stream, position)
        return position

    async def unsubscribe(
        self,
        conversation_id: Id,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - per command
    ) -> None:
        cid = uuid.UUID(str(conversation_id))
        self._subscriptions.discard(cid)
        await self._ack({"type": "unsubscribe", "conversation_id": str(cid)}, timeout)
        self._tracker.forget(f"conversation:{cid}")

    async def set_presence(
        self,
        status: Literal["online", "away"],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - per command
    ) -> None:
        await self._ack({"type": "presence", "status": status}, timeout)

    async def typing(self, conversation_id: Id, state: Literal["start", "stop"] = "start") -> None:
        """Say you are typing (repeat every few seconds while you are) or stopped.
        Ephemeral: dropped while disconnected; a refusal arrives as an `ErrorFrame`."""
        ws = self._ws
        if not self._ready or ws is None:
            return
        with contextlib.suppress(ConnectionClosed):
            await ws.send(
                orjson.dumps(
                    {"type": "typing", "conversation_id": str(conversation_id), "state": state}
                ).decode()
            )

    async def ping(self, *, timeout: float | None = None) -> float:  # noqa: ASYNC109 - per command
        """Round trip to the gateway, in seconds."""
        started = time.monotonic()
        await self._command({"type": "ping"}, timeout)
        return time.monotonic() - started

    async def _ack(self, payload: dict[str, Any], timeout: float | None) -> Ack:  # noqa: ASYNC109 - per command
        frame = await self._command(payload, timeout)
        if not isinstance(frame, Ack):  # pragma: no cover - the server answers commands so
            raise TidingsError(0, "unexpected_reply", f"Expected an ack, got {frame.type}.")
        return frame

    async def _command(
        self,
        payload: dict[str, Any],
        timeout: float | None,  # noqa: ASYNC109 - per command
        *,
        internal: bool = False,
    ) -> AnyFrame:
        if self._closed is not None:
            raise self._closed
        ref = f"c{next(self._refs)}"
        future: asyncio.Future[AnyFrame] = asyncio.get_running_loop().create_future()
        pending = _Pending({**payload, "ref": ref}, future, internal=internal)
        self._pending[ref] = pending
        try:
            ws = self._ws
            if ws is not None and (self._ready or internal):
                await self._transmit(ws, pending)
            return await asyncio.wait_for(
                future, self._command_timeout if timeout is None else timeout
            )
        finally:
            self._pending.pop(ref, None)

    async def _transmit(self, ws: ClientConnection, pending: _Pending) -> None:
        pending.generation = self._generation
        pending.sent_at = time.monotonic()
        with contextlib.suppress(ConnectionClosed):  # sent again on the next connection
            await ws.send(orjson.dumps(pending.payload).decode())

    # -- connecting --------------------------------------------------------------------------

    async def _open(self) -> tuple[ClientConnection, Hello]:
        ticket = await self._client.realtime_ticket()
        ws = await connect(
            f"{self._client.websocket_url}?ticket={ticket.ticket}",
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            compression=None,
            max_size=2**24,
        )
        try:
            raw = await asyncio.wait_for(ws.recv(), HELLO_TIMEOUT)
            hello = Hello.model_validate_json(raw)
        except BaseException:
            await ws.close()
            raise
        return ws, hello

    def _attach(self, ws: ClientConnection, hello: Hello, *, first: bool) -> None:
        self._generation += 1
        self._ws = ws
        self.hello = hello
        self._positions = dict(hello.positions)
        self._emit(hello)
        for stream, position in hello.positions.items():
            if first:
                self._tracker.start(stream, position)
            elif not self._tracker.knows(stream):
                # Began while we were away (a conversation joined meanwhile): nothing to resume
                # from, so the application loads it, then gets its events from here on.
                self._tracker.start(stream, position)
                self._emit(
                    ResyncRequired(type="resync_required", stream=stream, reason="new_stream")
                )

    async def _run(self, ws: ClientConnection) -> None:
        restore = False
        try:
            while True:
                code, reason = await self._serve(ws, restore=restore)
                restore = True
                if self._closing:
                    return
                _log.info("tidings realtime connection closed: %s %s", code, reason)
                if not self._reconnect_enabled:
                    raise RealtimeClosed(code, reason)
                if code in AUTH_CLOSES:
                    if not self._client.can_refresh:
                        raise RealtimeClosed(code, reason)
                    try:
                        await self._client.refresh()
                    except TidingsError as exc:
                        raise RealtimeClosed(code, reason, exc) from exc
                    except httpx.TransportError:
                        pass  # the server is unreachable: the ticket request decides later
                ws = await self._reconnect(code, reason)
                self.reconnects += 1
        except RealtimeClosed as closed:
            self._finish(closed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug; never leave the consumer waiting forever
            _log.exception("tidings realtime connection failed")
            self._finish(RealtimeClosed(1011, repr(exc), exc))

    async def _reconnect(self, code: int, reason: str) -> ClientConnection:
        attempt = 0
        wait_at_least = 0.0
        while True:
            if self._max_attempts is not None and attempt >= self._max_attempts:
                raise RealtimeClosed(code, f"{reason} (gave up after {attempt} attempts)")
            ceiling = min(self._max_delay, self._initial_delay * 2**attempt)
            delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter
            await asyncio.sleep(max(delay, wait_at_least))
            attempt += 1
            wait_at_least = 0.0
            try:
                ws, hello = await self._open()
            except TidingsError as exc:
                if exc.status in {401, 403}:  # no longer allowed in (after a refresh attempt)
                    raise RealtimeClosed(code, reason, exc) from exc
                wait_at_least = exc.retry_after or 0.0
                continue
            except (
                OSError,
                TimeoutError,
                WebSocketException,
                httpx.TransportError,
                ValidationError,
            ):
                continue
            self._attach(ws, hello, first=False)
            return ws

    async def _serve(self, ws: ClientConnection, *, restore: bool) -> tuple[int, str]:
        """Run one connection until it closes: restore it, then read frames."""
        reader = asyncio.create_task(self._pump(ws))
        try:
            if restore:
                await self._restore()
            if not reader.done():
                self._ready = True
                for pending in list(self._pending.values()):
                    if not pending.internal and pending.generation != self._generation:
                        await self._transmit(ws, pending)
                self._check_gaps()
            return await reader
        except _ConnectionLostError:
            return await reader
        except TimeoutError:  # the server stopped answering: start over on a new connection
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)
            return await reader
        finally:
            self._ready = False
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    async def _restore(self) -> None:
        """Re-subscribe, then ask for what was missed on every stream we follow."""
        for cid in list(self._subscriptions):
            stream = f"conversation:{cid}"
            if stream in self._positions:
                continue  # a member now: followed anyway
            try:
                ack = await self._command(
                    {"type": "subscribe", "conversation_id": str(cid)}, None, internal=True
                )
            except TidingsError:
                self._subscriptions.discard(cid)  # `resume` reports it as not_subscribed
                continue
            if isinstance(ack, Ack):
                self._positions[stream] = int(ack.data.get("seq", 0))
        await self._resume(dict(self._tracker.last))

    async def _resume(self, positions: Mapping[str, int]) -> None:
        items = sorted(positions.items())
        for start in range(0, len(items), MAX_RESUME_STREAMS):
            chunk = dict(items[start : start + MAX_RESUME_STREAMS])
            try:
                await self._command({"type": "resume", "positions": chunk}, None, internal=True)
            except TidingsError as exc:  # the server failed to replay; gaps get repaired later
                _log.warning("tidings realtime resume failed: %s", exc)

    async def _pump(self, ws: ClientConnection) -> tuple[int, str]:
        try:
            while True:
                self._on_raw(await ws.recv())
        except ConnectionClosed:
            pass
        finally:
            for pending in list(self._pending.values()):
                if pending.internal and not pending.future.done():
                    pending.future.set_exception(_ConnectionLostError())
        return ws.close_code or 1006, ws.close_reason or ""

    # -- frames in ---------------------------------------------------------------------------

    def _on_raw(self, raw: str | bytes) -> None:
        try:
            frame = frame_adapter.validate_json(raw)
        except ValidationError:
            _log.debug("tidings realtime: ignored an unknown frame")
            return
        match frame:
            case Event():
                self._on_event(frame)
            case ResyncRequired():
                self._emit(frame)
                position = self._positions.get(frame.stream)
                for event in self._tracker.resync(frame.stream, frame.reason, position):
                    self._emit(event)
                if frame.reason == "not_subscribed":
                    self._unfollow(frame.stream)
            case Resumed():
                self.last_resume = dict(frame.streams)
                self._resolve(frame.ref, frame)
            case Ack() | Pong():
                self._resolve(frame.ref, frame)
            case ErrorFrame():
                pending = self._pending.get(str(frame.ref)) if frame.ref is not None else None
                if frame.code == "rate_limited" and (pending is None or not pending.internal):
                    # Refused for going too fast, not for what it asked: send it again after a
                    # pause (every command is idempotent). Without a ref, all waiting ones.
                    self._spawn(self._resend_after(RATE_LIMIT_PAUSE, time.monotonic()))
                    self._emit(frame)
                    return
                if pending is not None and not pending.future.done():
                    pending.future.set_exception(TidingsError.from_problem(frame.problem))
                    return
                self._emit(frame)
            case TypingFrame() | PresenceFrame():
                self._emit(frame)
            case Hello():  # pragma: no cover - only ever the first frame
                pass

    def _on_event(self, event: Event) -> None:
        for ready in self._tracker.accept(event):
            self._emit(ready)
            if ready.event == MEMBER_LEFT and self._is_me(ready.data.get("user_ids")):
                self._tracker.forget(ready.stream)
                self._unfollow(ready.stream)
        self._check_gaps()

    def _is_me(self, user_ids: Any) -> bool:
        return self.hello is not None and str(self.hello.user_id) in (user_ids or ())

    def _unfollow(self, stream: str) -> None:
        prefix, _, rest = stream.partition(":")
        if prefix == "conversation":
            with contextlib.suppress(ValueError):
                self._subscriptions.discard(uuid.UUID(rest))

    def _resolve(self, ref: str | int | None, frame: AnyFrame) -> None:
        pending = self._pending.get(str(ref)) if ref is not None else None
        if pending is not None and not pending.future.done():
            pending.future.set_result(frame)

    def _emit(self, frame: ServerFrame) -> None:
        if self._closed is None:
            self._queue.put_nowait(frame)

    # -- repairs -----------------------------------------------------------------------------

    def _check_gaps(self) -> None:
        if self._ready and not self._repairing and self._tracker.gaps():
            self._repairing = True
            self._spawn(self._repair_gaps())

    async def _repair_gaps(self) -> None:
        """A gap on a live connection (an event lost between processes): ask for it again."""
        try:
            await asyncio.sleep(self._gap_timeout)
            gaps = self._tracker.gaps()
            if gaps and self._ready:
                with contextlib.suppress(_ConnectionLostError, TimeoutError, TidingsError):
                    await self._command({"type": "resume", "positions": gaps}, None, internal=True)
        finally:
            self._repairing = False
        self._check_gaps()

    async def _resend_after(self, pause: float, refused_at: float) -> None:
        await asyncio.sleep(pause)
        ws = self._ws
        if not self._ready or ws is None:
            return  # the next connection sends them anyway
        for pending in list(self._pending.values()):
            if (
                not pending.internal
                and not pending.future.done()
                and pending.generation == self._generation
                and pending.sent_at <= refused_at
            ):
                await self._transmit(ws, pending)

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _finish(self, closed: RealtimeClosed) -> None:
        if self._closed is not None:
            return
        self._ready = False
        self._queue.put_nowait(_END)
        self._closed = closed
        for pending in list(self._pending.values()):
            if not pending.future.done():
                pending.future.set_exception(closed)


__all__ = ["RealtimeConnection", "StreamTracker"]
