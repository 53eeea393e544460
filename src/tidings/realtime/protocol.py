"""The realtime wire protocol, version 1 (docs/realtime.md): JSON text frames both ways.

Frames the server builds are serialised once per event and, for WebSocket, framed once too:
a server frame is unmasked and uncompressed, so the same bytes go to every subscriber.
"""

from __future__ import annotations

import struct
import uuid
from typing import Any

import orjson
from websockets.frames import Frame, Opcode

from tidings.events.dispatcher import DispatchedEvent

VERSION = 1
SUBPROTOCOL = "tidings.v1"
PATH = "/api/v1/realtime"

# Close codes (RFC 6455 §7.4 and the 4000-4999 range for applications).
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009
CLOSE_RESTART = 1012
CLOSE_HEARTBEAT_TIMEOUT = 4000
CLOSE_SESSION_ENDED = 4001
CLOSE_SLOW_CONSUMER = 4002  # fell behind: reconnect and resume

# Streams a client may follow. Workspace and user streams carry audit data (IP addresses,
# sign-ins) and never leave the server.
FORWARDED_STREAM_PREFIXES = ("conversation:", "personal:")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def event_frame(event: DispatchedEvent) -> bytes:
    return orjson.dumps(
        {
            "type": "event",
            "stream": event.stream_key,
            "seq": event.stream_seq,
            "event": event.type,
            "id": str(event.id),
            "at": event.occurred_at.isoformat(),
            "data": event.payload,
        }
    )


def ws_text(payload: bytes) -> bytes:
    """`payload` as one unmasked WebSocket text frame, ready for any connection's transport."""
    return Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])


def ws_close(code: int, reason: str) -> bytes:
    return Frame(Opcode.CLOSE, struct.pack("!H", code) + reason.encode()[:120]).serialize(
        mask=False, extensions=[]
    )


def error_frame(ref: Any, status: int, code: str, detail: str, **extra: Any) -> bytes:
    return orjson.dumps(
        {
            "type": "error",
            "ref": ref,
            "problem": {"status": status, "code": code, "detail": detail, **extra},
        }
    )


def typing_frame(conversation_id: uuid.UUID, user_id: uuid.UUID, state: str, ttl: float) -> bytes:
    return orjson.dumps(
        {
            "type": "typing",
            "conversation_id": str(conversation_id),
            "user_id": str(user_id),
            "state": state,
            "ttl_ms": int(ttl * 1000) if state == "start" else 0,
        }
    )


def presence_frame(user_id: uuid.UUID, status: str) -> bytes:
    return orjson.dumps({"type": "presence", "user_id": str(user_id), "status": status})


# -- what travels between processes on the backplane ---------------------------------------
#
# One backplane message carries a batch of items; each item is
#   <u32 length> <meta JSON> 0x00 <frame JSON>
# where meta is {"room": str, "seq": int | null, "event": str | null, "eph": bool, "user": str?}.
# Receivers need only the meta to route; the frame bytes go to clients untouched.


def pack_item(meta: dict[str, Any], frame: bytes) -> bytes:
    body = orjson.dumps(meta) + b"\x00" + frame
    return struct.pack("!I", len(body)) + body


def unpack_items(data: bytes) -> list[tuple[dict[str, Any], bytes]]:
    items: list[tuple[dict[str, Any], bytes]] = []
    offset = 0
    view = memoryview(data)
    while offset < len(data):
        (length,) = struct.unpack_from("!I", data, offset)
        offset += 4
        body = bytes(view[offset : offset + length])
        offset += length
        meta, _, frame = body.partition(b"\x00")
        items.append((orjson.loads(meta), frame))
    return items
