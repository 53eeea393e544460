"""A WebSocket connection, served straight from uvicorn's transport.

uvicorn parses the HTTP request; when it is a WebSocket upgrade it hands the transport to the
class given as `ws=`, this one. Instead of running an ASGI app per connection (a task, two
queues and a scope per socket), the connection speaks RFC 6455 with the `websockets` library's
sans-I/O protocol and hands complete messages to the gateway. Outgoing event frames are built
once per event by the hub and written to each transport as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from tidings.infra.logging import get_logger
from tidings.realtime import protocol

if TYPE_CHECKING:
    from tidings.realtime.gateway import Gateway

_log = get_logger(__name__)
# A slow client that stops reading is given this long to take its close frame.
CLOSE_GRACE_SECONDS = 5.0


class WebSocketConnection(asyncio.Protocol):
    """One client socket: handshake, frames in, frames out, back-pressure."""

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.gateway: Gateway = app_state["realtime"]
        self.server_state = server_state
        self.transport: asyncio.Transport = cast("asyncio.Transport", None)
        self.ws = ServerProtocol(
            subprotocols=[Subprotocol(protocol.SUBPROTOCOL)],
            select_subprotocol=_select_subprotocol,
            max_size=self.gateway.max_message_bytes,
            logger=_ws_logger,
        )
        self.id = uuid.uuid4().hex[:16]
        self.user_id: uuid.UUID = uuid.UUID(int=0)
        self.session_id: uuid.UUID | None = None
        self.rooms: set[str] = set()
        self.client_ip: str | None = None
        self.last_seen = 0.0
        self.opened = False
        self.closing = False
        # While the hello or a resume is being prepared, live deliveries wait here.
        self.pending: list[tuple[str, int | None, bytes, bytes, bool]] | None = None
        self.dropped = 0
        self._fragments: list[bytes] | None = None
        self._fragment_opcode = Opcode.TEXT

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)
        self.server_state.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.gateway.socket_send_buffer)
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else None
        self.last_seen = asyncio.get_running_loop().time()

    def data_received(self, data: bytes) -> None:
        self.last_seen = asyncio.get_running_loop().time()
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Request):
                self.gateway.start_handshake(self, event)
            elif isinstance(event, Frame):
                self._on_frame(event)
        self.flush()
        if self.ws.parser_exc is not None and not self.closing:
            self._abort_after_close()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self.flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        if self.opened:
            self.opened = False
            self.gateway.disconnected(self)

    def shutdown(self) -> None:
        """uvicorn is stopping: tell the client to come back (1012), then close."""
        if self.opened:
            self.close(protocol.CLOSE_RESTART, "server restarting")
        else:
            self.transport.close()

    # -- frames in -------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.TEXT or frame.opcode is Opcode.BINARY:
            if frame.fin:
                self._on_message(frame.opcode, bytes(frame.data))
            else:
                self._fragments = [bytes(frame.data)]
                self._fragment_opcode = frame.opcode
        elif frame.opcode is Opcode.CONT and self._fragments is not None:
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                data, self._fragments = b"".join(self._fragments), None
                self._on_message(self._fragment_opcode, data)
        # PING is answered and CLOSE is echoed by the protocol object; PONG only proves life.

    def _on_message(self, opcode: Opcode, data: bytes) -> None:
        if not self.opened or self.closing:
            return
        if opcode is Opcode.BINARY:
            self.send(protocol.error_frame(None, 400, "binary_not_supported", "Send JSON text."))
            return
        self.gateway.handle_message(self, data)

    # -- frames out ------------------------------------------------------------------------

    def flush(self) -> None:
        for chunk in self.ws.data_to_send():
            if chunk:
                self.transport.write(chunk)
            else:  # the protocol wants the TCP connection closed (after a close handshake)
                self.transport.close()

    def send(self, frame: bytes) -> None:
        """One frame to this client only (acks, errors, replies)."""
        if self.opened and not self.closing:
            self.transport.write(protocol.ws_text(frame))

    def deliver(
        self, room: str, seq: int | None, frame: bytes, ws_frame: bytes, ephemeral: bool
    ) -> None:
        if self.closing:
            return
        if self.pending is not None:
            if len(self.pending) >= self.gateway.max_pending:
                self.close(protocol.CLOSE_SLOW_CONSUMER, "too much arrived while opening")
                return
            self.pending.append((room, seq, frame, ws_frame, ephemeral))
            return
        self.write_frame(ws_frame, ephemeral)

    def deliver_run(
        self,
        room: str,
        items: list[tuple[int | None, bytes]],
        ws_frames: list[bytes],
        joined: bytes,
    ) -> None:
        if self.pending is None and not self.closing:
            self.write_frame(joined, False)
            return
        for (seq, frame), ws_frame in zip(items, ws_frames, strict=True):
            self.deliver(room, seq, frame, ws_frame, False)

    def deliver_now(
        self, room: str, seq: int | None, frame: bytes, ws_frame: bytes, ephemeral: bool
    ) -> None:
        self.write_frame(ws_frame, ephemeral)

    def write_frame(self, ws_frame: bytes, ephemeral: bool) -> None:
        buffered = self.transport.get_write_buffer_size()
        limit = self.gateway.send_buffer_bytes
        if ephemeral and buffered > limit // 2:
            self.dropped += 1  # typing and presence go first when a client falls behind
            self.gateway.hub.dropped += 1
            return
        if buffered + len(ws_frame) > limit:
            self.gateway.slow_consumer(self)
            self.close(protocol.CLOSE_SLOW_CONSUMER, "slow consumer")
            return
        self.transport.write(ws_frame)

    def accept(self, request: Request) -> bool:
        response = self.ws.accept(request)
        return self._respond(response)

    def reject(self, status: int, text: str) -> None:
        self._respond(self.ws.reject(status, text))
        self.transport.close()

    def _respond(self, response: Response) -> bool:
        self.ws.send_response(response)
        self.flush()
        if response.status_code != 101:
            self.transport.close()
            return False
        self.opened = True
        return True

    def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        if self.ws.state is State.OPEN:
            # Written straight to the transport: a slow client's protocol object may be far
            # behind, and the close frame must go out after what is already queued.
            with contextlib.suppress(InvalidState):
                self.ws.send_close(code, reason)
            self.flush()
        self._abort_after_close()
        if self.opened:
            self.opened = False
            self.gateway.disconnected(self)

    def _abort_after_close(self) -> None:
        self.closing = True
        loop = asyncio.get_running_loop()
        loop.call_later(CLOSE_GRACE_SECONDS, self.transport.abort)

    def ping(self) -> None:
        if self.ws.state is State.OPEN and not self.closing:
            self.ws.send_ping(b"")
            self.flush()

    @property
    def buffered_bytes(self) -> int:
        return self.transport.get_write_buffer_size()


def _select_subprotocol(
    _: ServerProtocol, subprotocols: Sequence[Subprotocol]
) -> Subprotocol | None:
    # Optional: a client that names no subprotocol gets version 1 all the same.
    return Subprotocol(protocol.SUBPROTOCOL) if protocol.SUBPROTOCOL in subprotocols else None


class _QuietLogger:
    """`websockets` logs every protocol step at debug level; the gateway logs what matters."""

    def debug(self, *args: Any, **kwargs: Any) -> None: ...

    def info(self, *args: Any, **kwargs: Any) -> None: ...

    def warning(self, *args: Any, **kwargs: Any) -> None: ...

    def error(self, *args: Any, **kwargs: Any) -> None: ...

    def exception(self, *args: Any, **kwargs: Any) -> None: ...

    def isEnabledFor(self, _: int) -> bool:  # noqa: N802 - logging.Logger's name
        return False


_ws_logger: Any = _QuietLogger()
