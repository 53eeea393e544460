"""Every table, imported in one place so the metadata is complete (tests, autogenerate)."""

# No tables: imported so that migration 0004's engine-specific index stays out of schema diffs.
import tidings.search.models  # noqa: F401
from tidings.audit.models import AuditEntry
from tidings.db.base import Base
from tidings.db.leases import Lease
from tidings.delivery.models import (
    Connector,
    CryptoKey,
    DeliveryAttempt,
    DeliveryRoute,
    IdempotencyRecord,
    OutboundMessage,
    Template,
    TemplateVersion,
)
from tidings.events.models import Event, EventStream, ProcessedEvent
from tidings.identity.models import (
    ApiKey,
    ExternalAccount,
    Invitation,
    Membership,
    RefreshToken,
    Session,
    User,
    Workspace,
)
from tidings.jobs.models import Job, PeriodicSchedule
from tidings.messaging.models import (
    Conversation,
    ConversationMember,
    Mention,
    Message,
    MessageEdit,
    Reaction,
    ThreadFollower,
)

__all__ = [
    "ApiKey",
    "AuditEntry",
    "Base",
    "Connector",
    "Conversation",
    "ConversationMember",
    "CryptoKey",
    "DeliveryAttempt",
    "DeliveryRoute",
    "Event",
    "EventStream",
    "ExternalAccount",
    "IdempotencyRecord",
    "Invitation",
    "Job",
    "Lease",
    "Membership",
    "Mention",
    "Message",
    "MessageEdit",
    "OutboundMessage",
    "PeriodicSchedule",
    "ProcessedEvent",
    "Reaction",
    "RefreshToken",
    "Session",
    "Template",
    "TemplateVersion",
    "ThreadFollower",
    "User",
    "Workspace",
]
