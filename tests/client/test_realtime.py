"""The SDK's realtime connection against the real gateway, on both profiles: live chat,
commands and their replies, and reconnection — a server-side drop, resume with exactly-once
delivery in order, resync beyond the replay window, and the closes that must not reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest

from tests.client.conftest import LiveServer, live_server
from tests.client.team import GatedTransport, SdkFactory, person, team
from tests.realtime.conftest import REALTIME_TIMINGS
from tests.support.helpers import eventually
from tidings.client import (
    ErrorFrame,
    Event,
    Hello,
    PresenceFrame,
    RealtimeClosed,
    RealtimeConnection,
    ResyncRequired,
    ServerFrame,
    TidingsClient,
    TidingsError,
    TypingFrame,
)
from tidings.settings import Settings

F = TypeVar("F", bound=ServerFrame)


class Collector:
    """Consumes a connection the way an application does, keeping every frame."""

    def __init__(self, conn: RealtimeConnection) -> None:
        self.conn = conn
        self.frames: list[ServerFrame] = []
        self.ended: BaseException | None = None
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        try:
            async for frame in self.conn:
                self.frames.append(frame)
                self._changed.set()
        except RealtimeClosed as closed:
            self.ended = closed
        self._changed.set()

    async def wait_for(
        self,
        kind: type[F],
        where: Callable[[F], bool] = lambda _: True,
        timeout: float = 10.0,  # noqa: ASYNC109 - a deadline over several frames
    ) -> F:
        async with asyncio.timeout(timeout):
            while True:
                for frame in self.frames:
                    if isinstance(frame, kind) and where(frame):
                        return frame
                if self._task.done():
                    raise AssertionError(f"the connection ended: {self.ended!r}")
                self._changed.clear()
                await self._changed.wait()

    def of(self, kind: type[F]) -> list[F]:
        return [f for f in self.frames if isinstance(f, kind)]

    def events(self, stream: str) -> list[Event]:
        return [f for f in self.of(Event) if f.stream == stream]

    def messages(self, stream: str) -> list[str]:
        return [
            e.message.body
            for e in self.events(stream)
            if e.event == "message.created" and e.message is not None
        ]

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def consuming(
    client: TidingsClient, **options: Any
) -> AsyncIterator[tuple[RealtimeConnection, Collector]]:
    async with client.realtime(**options) as conn:
        collector = Collector(conn)
        try:
            yield conn, collector
        finally:
            await collector.stop()


def has_body(body: str) -> Callable[[Event], bool]:
    return lambda e: (
        e.message is not None and e.event == "message.created" and e.message.body == body
    )


def drop(live: LiveServer, user_id: uuid.UUID, code: int, reason: str = "test") -> int:
    """Close every gateway connection of a user from the server side."""
    connections = list(live.runtime.realtime.hub.by_user.get(user_id, ()))
    for connection in connections:
        connection.close(code, reason)
    return len(connections)


def assert_consecutive(events: list[Event]) -> None:
    seqs = [e.seq for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


async def test_two_clients_chat_live(live: LiveServer, sdk: SdkFactory) -> None:
    t = await team(sdk)
    stream = f"conversation:{t.general.id}"
    async with consuming(t.ada.client) as (ada, ada_seen), consuming(t.bob.client) as (bob, seen):
        hello = await seen.wait_for(Hello)
        assert hello.user_id == t.bob.user.id
        assert stream in hello.positions
        assert bob.user_id == t.bob.user.id

        sent = await ada.send_message(t.general.id, "hello Bob")
        assert sent.body == "hello Bob"
        received = await seen.wait_for(Event, has_body("hello Bob"))
        assert received.stream == stream
        assert received.conversation_id == t.general.id
        assert received.message is not None
        assert received.message.id == sent.id
        assert received.seq > hello.positions[stream]

        # Over REST, the other way.
        hi = await t.bob.client.send_message(t.general.id, "hi Ada")
        await ada_seen.wait_for(Event, has_body("hi Ada"))

        # The same client_id is the same message: acknowledged again, no second event.
        repeat = await ada.send_message(t.general.id, "hello Bob", client_id=sent.client_id)
        assert repeat.id == sent.id

        await bob.typing(t.general.id)
        typing = await ada_seen.wait_for(TypingFrame)
        assert (typing.user_id, typing.state) == (t.bob.user.id, "start")
        await bob.set_presence("away")
        away = await ada_seen.wait_for(
            PresenceFrame, lambda p: p.user_id == t.bob.user.id and p.status == "away"
        )
        assert away.status == "away"
        assert await ada.mark_read(t.general.id, hi.seq) == hi.seq
        assert (await t.ada.client.conversation(t.general.id)).last_read_seq == hi.seq
        assert await bob.ping() >= 0

        # Following a public channel one has not joined.
        news = await t.ada.client.create_conversation(t.workspace.id, "public", name="news")
        position = await bob.subscribe(news.id)
        await ada.send_message(news.id, "extra, extra")
        extra = await seen.wait_for(Event, has_body("extra, extra"))
        assert extra.stream == f"conversation:{news.id}"
        assert extra.seq > position

        # An error reply raises from the command that caused it.
        with pytest.raises(TidingsError) as refused:
            await bob.send_message(uuid.uuid4(), "nowhere")
        assert (refused.value.status, refused.value.code) == (404, "conversation_not_found")

        assert seen.messages(stream) == ["hello Bob", "hi Ada"]
        assert_consecutive(seen.events(stream))


async def test_a_dropped_connection_resumes_with_every_event_once_in_order(
    live: LiveServer, sdk: SdkFactory
) -> None:
    t = await team(sdk)
    stream = f"conversation:{t.general.id}"
    offline = GatedTransport()
    client = sdk(access_token=t.bob.client.access_token, transport=offline)
    async with consuming(client, initial_delay=0.05, max_delay=0.2) as (bob, seen):
        await t.ada.client.send_message(t.general.id, "before")
        await seen.wait_for(Event, has_body("before"))

        offline.gate.clear()  # Bob cannot come back until Ada has sent these
        assert drop(live, t.bob.user.id, 1012, "server restarting") == 1
        missed = [await t.ada.client.send_message(t.general.id, f"missed {i}") for i in range(5)]
        # A command given while the connection is down goes out on the next one.
        while_away = asyncio.create_task(bob.send_message(t.general.id, "sent while away"))

        async def trying() -> bool:
            return offline.held > 0

        await eventually(trying)
        offline.gate.set()
        await seen.wait_for(Hello, lambda h: h is not seen.frames[0])
        assert (await asyncio.wait_for(while_away, 10)).body == "sent while away"

        async def restored() -> bool:
            return bob.connected

        await eventually(restored)
        for i in range(3):
            await t.ada.client.send_message(t.general.id, f"after {i}")
        await seen.wait_for(Event, has_body("after 2"))

        assert bob.reconnects == 1
        assert bob.last_resume[stream] == {"recovered": True, "count": 5}
        assert seen.of(ResyncRequired) == []
        bodies = seen.messages(stream)
        assert sorted(bodies) == sorted(
            [
                "before",
                *(m.body for m in missed),
                "sent while away",
                "after 0",
                "after 1",
                "after 2",
            ]
        )
        ada_order = [b for b in bodies if b != "sent while away"]
        assert ada_order == ["before", *(m.body for m in missed), "after 0", "after 1", "after 2"]
        assert_consecutive(seen.events(stream))


async def test_a_gap_on_a_live_connection_is_repaired(live: LiveServer, sdk: SdkFactory) -> None:
    """Events lost between processes (the backplane is at-most-once) are asked for again."""
    t = await team(sdk)
    stream = f"conversation:{t.general.id}"
    async with (
        consuming(t.ada.client) as (_, ada_seen),
        consuming(t.bob.client, gap_timeout=0.2) as (bob, seen),
    ):
        await t.ada.client.send_message(t.general.id, "before")
        await seen.wait_for(Event, has_body("before"))
        hub = live.runtime.realtime.hub
        [connection] = hub.by_user[t.bob.user.id]
        hub.leave(connection, stream)  # what a lost backplane message looks like to Bob
        lost = [await t.ada.client.send_message(t.general.id, f"lost {i}") for i in range(2)]
        # A send's answer comes at its COMMIT; the fan-out follows (through Redis when scaled).
        # Ada, in the same room, got the last one: the fan-out Bob missed is over.
        await ada_seen.wait_for(Event, has_body("lost 1"))
        hub.join(connection, stream)
        await t.ada.client.send_message(t.general.id, "after")
        await seen.wait_for(Event, has_body("after"))
        assert seen.messages(stream) == ["before", *(m.body for m in lost), "after"]
        assert_consecutive(seen.events(stream))
        assert bob.last_resume[stream] == {"recovered": True, "count": 3}
        assert bob.reconnects == 0


async def test_a_gap_beyond_the_replay_window_surfaces_resync_required(
    settings_values: dict[str, Any],
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, **{**settings_values, **REALTIME_TIMINGS, "resume_max_events": 3}
    )
    async with live_server(settings) as live:
        clients: list[TidingsClient] = []

        def sdk(**options: Any) -> TidingsClient:
            clients.append(TidingsClient(live.base_url, **options))
            return clients[-1]

        try:
            t = await team(sdk)
            stream = f"conversation:{t.general.id}"
            offline = GatedTransport()
            client = sdk(access_token=t.bob.client.access_token, transport=offline)
            async with consuming(client, initial_delay=0.05, max_delay=0.2) as (bob, seen):
                before = await t.ada.client.send_message(t.general.id, "before")
                await seen.wait_for(Event, has_body("before"))
                offline.gate.clear()
                drop(live, t.bob.user.id, 1012)
                missed = [
                    await t.ada.client.send_message(t.general.id, f"missed {i}") for i in range(5)
                ]
                offline.gate.set()
                resync = await seen.wait_for(ResyncRequired)
                assert (resync.stream, resync.reason) == (stream, "too_many")
                assert bob.last_resume[stream] == {"recovered": False, "reason": "too_many"}
                await t.ada.client.send_message(t.general.id, "after")
                after = await seen.wait_for(Event, has_body("after"))
                # The stream goes on after the resync frame; the missed events never arrive.
                assert seen.frames.index(after) > seen.frames.index(resync)
                assert seen.messages(stream) == ["before", "after"]
                # The application refetches what it missed.
                page = await t.bob.client.history(t.general.id, after=before.seq)
                assert [m.body for m in page.messages] == [
                    *(m.body for m in missed),
                    "after",
                ]
        finally:
            for client in clients:
                await client.aclose()


async def test_commands_refused_by_the_rate_limit_are_sent_again(
    settings_values: dict[str, Any],
) -> None:
    """The gateway's rate-limit error names no command; the client repeats what is waiting
    (idempotent, so nothing is doubled)."""
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, **{**settings_values, **REALTIME_TIMINGS, "ws_rate_limit": "5/second"}
    )
    async with live_server(settings) as live:
        clients: list[TidingsClient] = []

        def sdk(**options: Any) -> TidingsClient:
            clients.append(TidingsClient(live.base_url, **options))
            return clients[-1]

        try:
            ada = await person(sdk, "ada")
            workspace = await ada.client.create_workspace("Acme")
            [general] = [c for c in await ada.client.conversations(workspace.id) if c.is_default]
            stream = f"conversation:{general.id}"
            async with consuming(ada.client) as (conn, seen):
                await seen.wait_for(Hello)
                sent = await asyncio.gather(
                    *(conn.send_message(general.id, f"burst {i}") for i in range(10))
                )
                assert [m.body for m in sent] == [f"burst {i}" for i in range(10)]
                assert len({m.id for m in sent}) == 10
                await seen.wait_for(Event, has_body("burst 9"))
                assert [e.code for e in seen.of(ErrorFrame)] == ["rate_limited"] * 5
                assert sorted(seen.messages(stream)) == sorted(f"burst {i}" for i in range(10))
                page = await ada.client.history(general.id)
                assert len([m for m in page.messages if m.body.startswith("burst")]) == 10
        finally:
            for client in clients:
                await client.aclose()


async def test_a_session_ended_elsewhere_closes_for_good(live: LiveServer, sdk: SdkFactory) -> None:
    ada = await person(sdk, "ada")
    async with consuming(ada.client, initial_delay=0.1) as (conn, seen):
        await seen.wait_for(Hello)
        # The same session signs out from another device: the server closes with 4001; the
        # refresh token died with the session, so there is no reconnecting.
        await sdk(access_token=ada.client.access_token).logout()
        await asyncio.wait_for(seen._task, 10)
        assert isinstance(seen.ended, RealtimeClosed)
        assert seen.ended.close_code == 4001
        assert isinstance(seen.ended.cause, TidingsError)
        assert seen.ended.cause.code == "invalid_refresh_token"
        assert conn.reconnects == 0
        with pytest.raises(RealtimeClosed):
            await conn.send_message(uuid.uuid4(), "too late")


async def test_a_policy_close_reconnects_only_with_a_refresh_token(
    live: LiveServer, sdk: SdkFactory
) -> None:
    ada = await person(sdk, "ada")
    first_refresh_token = ada.client.refresh_token
    async with consuming(ada.client, initial_delay=0.1) as (conn, seen):
        await seen.wait_for(Hello)
        drop(live, ada.user.id, 1008, "policy violation")
        await seen.wait_for(Hello, lambda h: h is not seen.frames[0])
        assert conn.reconnects == 1
        assert ada.client.refresh_token != first_refresh_token  # it refreshed first

    # Without a refresh token, a 1008 is final.
    bob = await person(sdk, "bob")
    bare = sdk(access_token=bob.client.access_token)
    async with consuming(bare, initial_delay=0.1) as (conn, seen):
        await seen.wait_for(Hello)
        drop(live, bob.user.id, 1008, "policy violation")
        await asyncio.wait_for(seen._task, 10)
        assert isinstance(seen.ended, RealtimeClosed)
        assert (seen.ended.close_code, seen.ended.reason) == (1008, "policy violation")
        assert conn.reconnects == 0


async def test_closing_ends_iteration_and_fails_waiting_commands(
    live: LiveServer, sdk: SdkFactory
) -> None:
    ada = await person(sdk, "ada")
    conn = ada.client.realtime()
    async with conn:
        assert isinstance(await conn.next_frame(5), Hello)
        assert conn.connected
    assert [frame async for frame in conn] == []
    with pytest.raises(RealtimeClosed):
        await conn.ping()
    # API keys cannot open the gateway; the ticket request says why.
    workspace = await ada.client.create_workspace("Acme")
    key = await ada.client.create_api_key(workspace.id, "bot", ["messages:read"])
    with pytest.raises(TidingsError) as refused:
        async with sdk(api_key=key.key).realtime():
            pass
    assert refused.value.code == "user_required"
