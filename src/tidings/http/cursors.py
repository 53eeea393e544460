"""Opaque keyset cursors on (time, id): what list endpoints hand back as `next_cursor`."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime

import orjson

from tidings.http.problems import Problem


def encode_cursor(moment: datetime, row_id: uuid.UUID) -> str:
    raw = orjson.dumps([moment.isoformat(), str(row_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The position a cursor names; 400 `invalid_cursor` for anything else (tampered ones too)."""
    try:
        moment, row_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        position = datetime.fromisoformat(moment), uuid.UUID(row_id)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise Problem("The cursor is not valid.", code="invalid_cursor") from None
    if position[0].tzinfo is None:  # comparing with aware times would fail later, as a 500
        raise Problem("The cursor is not valid.", code="invalid_cursor")
    return position
