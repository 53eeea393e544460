"""The Tidings Python SDK: `TidingsClient` for the REST API, `RealtimeConnection` for the
WebSocket gateway, `SendClient` / `SyncSendClient` for the send API. See docs/client.md."""

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
from tidings.client.send import RetryPolicy, SendClient, SyncSendClient, new_idempotency_key
from tidings.client.send_models import (
    FINAL_STATUSES,
    SETTLED_STATUSES,
    Accepted,
    Attempt,
    OutboundMessage,
    OutboundPage,
)

__all__ = [
    "FINAL_STATUSES",
    "SETTLED_STATUSES",
    "Accepted",
    "Attempt",
    "ErrorFrame",
    "Event",
    "Hello",
    "Id",
    "OutboundMessage",
    "OutboundPage",
    "PresenceFrame",
    "RealtimeClosed",
    "RealtimeConnection",
    "ResyncRequired",
    "RetryPolicy",
    "SendClient",
    "ServerFrame",
    "SyncSendClient",
    "TidingsClient",
    "TidingsError",
    "TypingFrame",
    "new_client_id",
    "new_idempotency_key",
]
