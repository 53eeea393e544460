"""A subscriber that stops reading: a raw TCP client that completes the WebSocket handshake and
then never reads, with a small receive buffer, so what the server sends backs up into the
server's own buffers. Afterwards it reads what reached it, to find the close frame (and its
code) the server sent when it cut the client off."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

RECEIVE_BUFFER = 4096


@dataclass
class Drained:
    close_code: int | None
    close_reason: str
    frames: int
    bytes: int
    ended_by: str  # close frame, eof, reset or timeout


class SlowConsumer:
    def __init__(self, url: str, token: str) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._path = parts.path or "/"
        self._token = token
        self._sock: socket.socket | None = None
        self._buffer = b""

    def connect(self, timeout: float = 10.0) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.settimeout(timeout)
        sock.connect((self._host, self._port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {self._path} HTTP/1.1\r\n"
            f"Host: {self._host}:{self._port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {self._token}\r\n\r\n"
        )
        sock.sendall(request.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(1)  # byte by byte: read nothing past the response
            if not chunk:
                raise ConnectionError("closed during the handshake")
            response += chunk
        status = response.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise ConnectionError(f"handshake refused: {status.decode(errors='replace')}")
        self._sock = sock

    def drain(self, timeout: float = 10.0) -> Drained:
        """Read everything that reached this client until the close frame, EOF or `timeout`."""
        assert self._sock is not None
        sock = self._sock
        sock.settimeout(0.5)
        deadline = time.monotonic() + timeout
        frames = 0
        total = 0
        ended_by = "timeout"
        code: int | None = None
        reason = ""
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(1 << 20)
            except TimeoutError:
                continue
            except (ConnectionResetError, OSError):
                ended_by = "reset"
                break
            if not chunk:
                ended_by = "eof"
                break
            total += len(chunk)
            self._buffer += chunk
            for opcode, payload in self._frames():
                frames += 1
                if opcode == 0x8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    reason = payload[2:].decode(errors="replace")
                    ended_by = "close frame"
            if ended_by == "close frame":
                break
        return Drained(code, reason, frames, total, ended_by)

    def _frames(self) -> list[tuple[int, bytes]]:
        found: list[tuple[int, bytes]] = []
        buf = self._buffer
        offset = 0
        while len(buf) - offset >= 2:
            opcode = buf[offset] & 0x0F
            length = buf[offset + 1] & 0x7F
            header = 2
            if length == 126:
                if len(buf) - offset < 4:
                    break
                length = struct.unpack_from("!H", buf, offset + 2)[0]
                header = 4
            elif length == 127:
                if len(buf) - offset < 10:
                    break
                length = struct.unpack_from("!Q", buf, offset + 2)[0]
                header = 10
            if len(buf) - offset < header + length:
                break
            found.append((opcode, buf[offset + header : offset + header + length]))
            offset += header + length
        self._buffer = buf[offset:]
        return found

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
