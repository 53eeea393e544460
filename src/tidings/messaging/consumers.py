"""Outbox consumers of the messaging domain: it follows workspace membership."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from tidings.events.dispatcher import DispatchedEvent
from tidings.messaging.conversations import Conversations

_MEMBERSHIP_TYPES = frozenset({"member.joined", "member.left", "member.removed"})


class WorkspaceMembershipConsumer:
    """Joins new workspace members to the default conversations (`#general`) and takes people
    who leave a workspace out of its conversations. Transactional: exactly once per event."""

    name = "messaging.workspace_membership"

    def __init__(self, conversations: Conversations) -> None:
        self._conversations = conversations

    def wants(self, event: DispatchedEvent) -> bool:
        return event.type in _MEMBERSHIP_TYPES and "audit" in event.payload

    async def handle(self, session: AsyncSession, events: Sequence[DispatchedEvent]) -> None:
        for event in events:
            audit = event.payload.get("audit")
            if audit is None or event.workspace_id is None or audit.get("target_type") != "user":
                continue
            user_id = uuid.UUID(audit["target_id"])
            actor = str(audit.get("actor_id") or "system")
            if event.type == "member.joined":
                await self._conversations.join_defaults(session, event.workspace_id, user_id, actor)
            elif event.type in {"member.left", "member.removed"}:
                await self._conversations.leave_workspace(
                    session, event.workspace_id, user_id, actor
                )
