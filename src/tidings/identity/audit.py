"""Recording auditable facts: an event whose payload carries an `audit` block."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from tidings.events.service import emit


class AuditAction(StrEnum):
    LOGIN_SUCCEEDED = "LOGIN_SUCCEEDED"
    LOGIN_FAILED = "LOGIN_FAILED"
    LOGOUT = "LOGOUT"
    USER_REGISTERED = "USER_REGISTERED"
    PASSWORD_CHANGED = "PASSWORD_CHANGED"  # noqa: S105 - an action name
    SESSION_REVOKED = "SESSION_REVOKED"
    TOKEN_REUSE_DETECTED = "TOKEN_REUSE_DETECTED"  # noqa: S105 - an action name
    PERMISSION_DENIED = "PERMISSION_DENIED"
    API_KEY_CREATED = "API_KEY_CREATED"
    API_KEY_REVOKED = "API_KEY_REVOKED"
    WORKSPACE_CREATED = "WORKSPACE_CREATED"
    WORKSPACE_UPDATED = "WORKSPACE_UPDATED"
    WORKSPACE_DELETED = "WORKSPACE_DELETED"
    MEMBER_INVITED = "MEMBER_INVITED"
    MEMBER_JOINED = "MEMBER_JOINED"
    MEMBER_REMOVED = "MEMBER_REMOVED"
    MEMBER_LEFT = "MEMBER_LEFT"
    MEMBER_ROLE_CHANGED = "MEMBER_ROLE_CHANGED"
    INVITATION_REVOKED = "INVITATION_REVOKED"


async def record(
    session: AsyncSession,
    event_type: str,
    action: AuditAction,
    *,
    actor_type: str,
    actor_id: str | None,
    workspace_id: uuid.UUID | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    ip: str | None = None,
    details: dict[str, Any] | None = None,
    stream_key: str | None = None,
) -> None:
    """Emit `event_type` with an audit block, in the caller's transaction."""
    await emit(
        session,
        event_type,
        stream_key=stream_key or (f"workspace:{workspace_id}" if workspace_id else "identity"),
        workspace_id=workspace_id,
        payload={
            "audit": {
                "action": action.value,
                "actor_type": actor_type,
                "actor_id": actor_id,
                "target_type": target_type,
                "target_id": target_id,
                "ip": ip,
                "details": details or {},
            }
        },
    )
