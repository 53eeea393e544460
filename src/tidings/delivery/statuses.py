"""Where an outbound message stands: queued → sending → sent → delivered | bounced, or failed."""

from __future__ import annotations

from enum import StrEnum


class MessageStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset(
    {MessageStatus.DELIVERED, MessageStatus.BOUNCED, MessageStatus.FAILED, MessageStatus.CANCELLED}
)
# `sent` is final for providers that never report delivery; clients waiting on a message stop
# at any of these.
SETTLED_STATUSES = FINAL_STATUSES | {MessageStatus.SENT}


class AttemptOutcome(StrEnum):
    SENT = "sent"
    FAILED = "failed"  # permanent for this message
    RETRY = "retry"  # retriable: the message is tried again later or on the next connector
    SKIPPED = "skipped"  # circuit open, connector broken or disabled
