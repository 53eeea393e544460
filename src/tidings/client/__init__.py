"""The Tidings Python SDK: `TidingsClient` for the REST API, `RealtimeConnection` for the
WebSocket gateway. See docs/client.md."""

from tidings.client.errors import RealtimeClosed, TidingsError
from tidings.client.http import Id, TidingsClient, new_client_id
from tidings.client.models import (
    ErrorFrame,
    Event,
    Hello,
    PresenceFrame,
    ResyncRequired,
    ServerFrame,
    TypingFrame,
)
from tidings.client.realtime import RealtimeConnection

__all__ = [
    "ErrorFrame",
    "Event",
    "Hello",
    "Id",
    "PresenceFrame",
    "RealtimeClosed",
    "RealtimeConnection",
    "ResyncRequired",
    "ServerFrame",
    "TidingsClient",
    "TidingsError",
    "TypingFrame",
    "new_client_id",
]
