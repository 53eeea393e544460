"""The rooms a connection joins: the conversations and live workspaces its user belongs to."""

from __future__ import annotations

from tidings.db.base import new_id, utcnow
from tidings.db.database import Database
from tidings.identity.models import Membership, User, Workspace
from tidings.identity.workspaces import member_workspace_ids
from tidings.messaging.conversations import member_conversations
from tidings.messaging.models import Conversation, ConversationMember


async def test_a_user_joins_the_conversations_of_workspaces_it_still_belongs_to(
    db: Database,
) -> None:
    async with db.transaction() as session:
        alice = User(email="alice@example.com", display_name="Alice")
        bob = User(email="bob@example.com", display_name="Bob")
        kept, left, gone = (Workspace(name=name) for name in ("kept", "left", "gone"))
        session.add_all([alice, bob, kept, left, gone])
        await session.flush()
        gone.deleted_at = utcnow()
        session.add_all(
            [
                Membership(workspace_id=kept.id, user_id=alice.id, role="member"),
                Membership(workspace_id=gone.id, user_id=alice.id, role="member"),
                Membership(workspace_id=left.id, user_id=bob.id, role="member"),
            ]
        )
        mine = Conversation(workspace_id=kept.id, kind="public")
        not_joined = Conversation(workspace_id=kept.id, kind="public")
        # Alice left this workspace; her conversation membership outlived it.
        stale = Conversation(workspace_id=left.id, kind="public")
        session.add_all([mine, not_joined, stale])
        await session.flush()
        session.add_all(
            [
                ConversationMember(conversation_id=mine.id, user_id=alice.id),
                ConversationMember(conversation_id=stale.id, user_id=alice.id),
                ConversationMember(conversation_id=not_joined.id, user_id=bob.id),
            ]
        )
    async with db.read() as session:
        conversations = await member_conversations(session, alice.id)
        workspaces = await member_workspace_ids(session, alice.id)
        nobody = await member_conversations(session, new_id())
    assert conversations == {mine.id: kept.id}
    assert workspaces == frozenset({kept.id})
    assert nobody == {}
