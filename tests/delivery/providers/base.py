"""A real HTTP/1.1 server on 127.0.0.1 for standing in for a provider, in the test's event loop.

It is a small asyncio server speaking HTTP through h11 (the parser httpx's own stack uses) rather
than an ASGI app, because tests need what a framework hides: answering late, or dropping the
connection without any answer. Each provider subclasses `ProviderServer` and implements
`handle` with that provider's real behaviour (authentication, field checks, its error bodies);
a test scripts the next answers with `script(...)`, which take precedence over `handle`, and
reads what arrived in `received`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import h11


@dataclass(frozen=True)
class Received:
    """One request as it arrived on the wire."""

    method: str
    target: str
    headers: dict[str, str]  # lower-cased names; a repeated header's values joined by ", "
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode(), keep_blank_values=True)

    def form_value(self, name: str) -> str | None:
        values = self.form().get(name)
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    def basic_auth(self) -> tuple[str, str] | None:
        scheme, _, value = self.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return None
        return user, password

    def bearer(self) -> str | None:
        scheme, _, value = self.headers.get("authorization", "").partition(" ")
        return value if scheme.lower() == "bearer" else None


@dataclass(frozen=True)
class Reply:
    """What the server answers: a status, headers and body; late, or not at all (`drop`)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0  # seconds before answering
    drop: bool = False  # close the connection without answering
    chunked: bool = False  # no Content-Length: the body's size is known only once read

    @classmethod
    def json(cls, data: Any, status: int = 200, *, headers: dict[str, str] | None = None) -> Reply:
        return cls(status, json.dumps(data).encode(), headers=tuple((headers or {}).items()))

    @classmethod
    def text(cls, text: str, status: int = 200, *, headers: dict[str, str] | None = None) -> Reply:
        return cls(
            status,
            text.encode(),
            content_type="text/plain; charset=utf-8",
            headers=tuple((headers or {}).items()),
        )

    @classmethod
    def slow(cls, seconds: float, then: Reply | None = None) -> Reply:
        """Answer `then` (a plain 200 by default) only after `seconds`."""
        base = then or cls.json({})
        return cls(base.status, base.body, base.content_type, base.headers, delay=seconds)

    @classmethod
    def dropped(cls) -> Reply:
        """Read the request, then close the connection without a byte of answer."""
        return cls(drop=True)


@dataclass
class ProviderServer:
    """Subclass and implement `handle`; use as `async with Server() as server:`."""

    received: list[Received] = field(default_factory=list)
    _script: deque[Reply] = field(default_factory=deque)
    _server: asyncio.Server | None = None
    _connections: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with these, in order, before `handle` takes over again."""
        self._script.extend(replies)

    def handle(self, request: Received) -> Reply:
        raise NotImplementedError

    def last(self) -> Received:
        assert self.received, "the server received no request"
        return self.received[-1]

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        # A connection accepted just before the close is a bare socket held by a pending
        # asyncio task (`_accept_connection2`) that makes its transport; wait for those, so
        # every connection is in `_writers` (registered the moment its transport exists).
        accepting = [
            task
            for task in asyncio.all_tasks()
            if getattr(task.get_coro(), "__qualname__", "").endswith("_accept_connection2")
        ]
        await asyncio.gather(*accepting, return_exceptions=True)
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # A handler cancelled before it ever ran never reached its `finally`: close its
        # connection here, so no transport outlives the server (it would warn "unclosed" in
        # some later test, when the garbage collector finds it).
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await asyncio.sleep(0)  # the transports' sockets close on the next loop turn
        await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Registers each connection synchronously, as asyncio makes its transport."""
        self._writers.add(writer)
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(h11.SERVER)
        try:
            while True:
                event = await _next_event(connection, reader)
                if not isinstance(event, h11.Request):
                    return
                body = bytearray()
                while True:
                    part = await _next_event(connection, reader)
                    if isinstance(part, h11.Data):
                        body += part.data
                    elif isinstance(part, h11.EndOfMessage):
                        break
                    else:
                        return
                headers: dict[str, str] = {}
                for name, value in event.headers:
                    key = name.decode().lower()
                    headers[key] = (
                        f"{headers[key]}, {value.decode()}" if key in headers else value.decode()
                    )
                request = Received(
                    event.method.decode(), event.target.decode(), headers, bytes(body)
                )
                self.received.append(request)
                reply = self._script.popleft() if self._script else self.handle(request)
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                if reply.drop:
                    writer.transport.abort()
                    return
                framing = (
                    ("Transfer-Encoding", "chunked")
                    if reply.chunked
                    else ("Content-Length", str(len(reply.body)))
                )
                response_headers = [("Content-Type", reply.content_type), framing, *reply.headers]
                writer.write(
                    connection.send(
                        h11.Response(
                            status_code=reply.status,
                            headers=response_headers,
                            reason=_reason(reply.status),
                        )
                    )
                    or b""
                )
                writer.write(connection.send(h11.Data(data=reply.body)) or b"")
                writer.write(connection.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                if connection.our_state is h11.MUST_CLOSE:
                    return
                connection.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            # Only once its socket is closed: a close still flushing a reply when the server
            # stops is aborted by `__aexit__`.
            self._writers.discard(writer)


async def _next_event(connection: h11.Connection, reader: asyncio.StreamReader) -> Any:
    while True:
        event = connection.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await reader.read(65536)
        connection.receive_data(data)  # b"" tells h11 the peer closed


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""
