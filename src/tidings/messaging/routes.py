"""HTTP routes of conversations and messages: parse, authenticate, call the service, answer."""

from __future__ import annotations

import uuid
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response, status

from tidings.identity.deps import PrincipalDep, UserDep, authenticate
from tidings.identity.policy import Principal
from tidings.messaging.component import Messaging
from tidings.messaging.kinds import ConversationKind
from tidings.messaging.messages import Draft
from tidings.messaging.schemas import (
    ConversationCreateIn,
    ConversationOut,
    ConversationUpdateIn,
    MemberOut,
    MembersIn,
    MessageEditIn,
    MessageEditOut,
    MessageIn,
    MessageOut,
    MessagePage,
    MuteIn,
    ReactionOut,
    ReadIn,
    ThreadOut,
)


async def get_messaging(request: Request) -> Messaging:
    messaging: Messaging = request.app.state.runtime.messaging
    return messaging


MessagingDep = Annotated[Messaging, Depends(get_messaging)]

in_workspace = APIRouter(prefix="/api/v1/workspaces/{workspace_id}", tags=["conversations"])
conversations = APIRouter(prefix="/api/v1/conversations", tags=["conversations"])
messages = APIRouter(prefix="/api/v1/conversations/{conversation_id}/messages", tags=["messages"])


@in_workspace.post(
    "/conversations",
    status_code=status.HTTP_201_CREATED,
    summary="Create a channel or open a direct message (an existing DM answers 200)",
)
async def create_conversation(
    workspace_id: uuid.UUID,
    body: ConversationCreateIn,
    principal: PrincipalDep,
    messaging: MessagingDep,
    response: Response,
) -> ConversationOut:
    conversation, created = await messaging.conversations.create(
        principal,
        workspace_id,
        kind=ConversationKind(body.kind),
        name=body.name,
        topic=body.topic,
        member_ids=body.member_ids,
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return conversation


@in_workspace.get(
    "/conversations",
    summary="The caller's conversations with unread counts; ?browse=true lists public channels",
)
async def list_conversations(
    workspace_id: uuid.UUID,
    principal: PrincipalDep,
    messaging: MessagingDep,
    browse: bool = False,
) -> list[ConversationOut]:
    return await messaging.conversations.list_for(principal, workspace_id, browse=browse)


@conversations.get("/{conversation_id}", summary="One conversation")
async def get_conversation(
    conversation_id: uuid.UUID, principal: PrincipalDep, messaging: MessagingDep
) -> ConversationOut:
    return await messaging.conversations.get(principal, conversation_id)


@conversations.patch("/{conversation_id}", summary="Rename a channel or set its topic")
async def update_conversation(
    conversation_id: uuid.UUID,
    body: ConversationUpdateIn,
    principal: PrincipalDep,
    messaging: MessagingDep,
) -> ConversationOut:
    return await messaging.conversations.update(
        principal, conversation_id, name=body.name, topic=body.topic
    )


@conversations.post("/{conversation_id}/archive", summary="Archive: read-only from now")
async def archive(
    conversation_id: uuid.UUID, principal: PrincipalDep, messaging: MessagingDep
) -> ConversationOut:
    return await messaging.conversations.set_archived(principal, conversation_id, True)


@conversations.post("/{conversation_id}/unarchive", summary="Unarchive")
async def unarchive(
    conversation_id: uuid.UUID, principal: PrincipalDep, messaging: MessagingDep
) -> ConversationOut:
    return await messaging.conversations.set_archived(principal, conversation_id, False)


@conversations.get("/{conversation_id}/members", summary="Members of a conversation")
async def list_members(
    conversation_id: uuid.UUID, principal: PrincipalDep, messaging: MessagingDep
) -> list[MemberOut]:
    return await messaging.conversations.members(principal, conversation_id)


@conversations.post("/{conversation_id}/members", summary="Add people; answers who was added")
async def add_members(
    conversation_id: uuid.UUID, body: MembersIn, principal: PrincipalDep, messaging: MessagingDep
) -> dict[str, list[uuid.UUID]]:
    added = await messaging.conversations.add_members(principal, conversation_id, body.user_ids)
    return {"added": added}


@conversations.delete(
    "/{conversation_id}/members/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove someone (or yourself: leave)",
)
async def remove_member(
    conversation_id: uuid.UUID, user_id: uuid.UUID, principal: PrincipalDep, messaging: MessagingDep
) -> None:
    await messaging.conversations.remove_member(principal, conversation_id, user_id)


@conversations.post("/{conversation_id}/join", summary="Join a public channel")
async def join(
    conversation_id: uuid.UUID, user: UserDep, messaging: MessagingDep
) -> ConversationOut:
    return await messaging.conversations.join(user, conversation_id)


@conversations.post(
    "/{conversation_id}/leave", status_code=status.HTTP_204_NO_CONTENT, summary="Leave"
)
async def leave(conversation_id: uuid.UUID, user: UserDep, messaging: MessagingDep) -> None:
    await messaging.conversations.remove_member(user, conversation_id, user.user_id)


@conversations.put("/{conversation_id}/mute", summary="Mute or unmute for yourself")
async def mute(
    conversation_id: uuid.UUID, body: MuteIn, user: UserDep, messaging: MessagingDep
) -> ConversationOut:
    return await messaging.conversations.set_muted(user, conversation_id, body.muted)


@conversations.post("/{conversation_id}/read", summary="Move your read position forward")
async def mark_read(
    conversation_id: uuid.UUID, body: ReadIn, user: UserDep, messaging: MessagingDep
) -> ConversationOut:
    return await messaging.conversations.mark_read(user, conversation_id, body.seq)


@conversations.get("/{conversation_id}/pins", summary="Pinned messages")
async def pins(
    conversation_id: uuid.UUID, principal: PrincipalDep, messaging: MessagingDep
) -> list[MessageOut]:
    return await messaging.messages.pins(principal, conversation_id)


# -- messages -------------------------------------------------------------------------------


@messages.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=MessageOut,
    summary="Send a message (a repeated client_id answers 200 with the first one)",
)
async def send_message(
    conversation_id: uuid.UUID,
    body: MessageIn,
    principal: PrincipalDep,
    messaging: MessagingDep,
) -> Response:
    return await _send(messaging, principal, conversation_id, body)


async def send_message_hot(request: Request, body: MessageIn) -> Response:
    """`send_message` for a body that validates, as a hot route (tidings.http.hot): the
    busiest route of all skips FastAPI's dependency solving."""
    principal = await authenticate(request)
    conversation_id: uuid.UUID = request.path_params["conversation_id"]
    return await _send(request.app.state.runtime.messaging, principal, conversation_id, body)


async def _send(
    messaging: Messaging, principal: Principal, conversation_id: uuid.UUID, body: MessageIn
) -> Response:
    sent = await messaging.messages.send(
        principal,
        conversation_id,
        Draft(body=body.body, client_id=body.client_id, thread_root_id=body.thread_root_id),
    )
    # The JSON the message's event carries, as it is: the busiest route skips validating and
    # serialising its answer a second time.
    return Response(
        orjson.dumps(sent.message),
        status_code=status.HTTP_201_CREATED if sent.created else status.HTTP_200_OK,
        media_type="application/json",
    )


@messages.get("", summary="History: the latest, or before / after / around a sequence")
async def history(
    conversation_id: uuid.UUID,
    principal: PrincipalDep,
    messaging: MessagingDep,
    before: Annotated[int | None, Query(ge=1)] = None,
    after: Annotated[int | None, Query(ge=0)] = None,
    around: Annotated[int | None, Query(ge=1)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> MessagePage:
    return await messaging.messages.history(
        principal, conversation_id, before=before, after=after, around=around, limit=limit
    )


@messages.get("/{message_id}", summary="One message")
async def get_message(
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    principal: PrincipalDep,
    messaging: MessagingDep,
) -> MessageOut:
    return await messaging.messages.get(principal, conversation_id, message_id)


@messages.patch("/{message_id}", summary="Edit your message (the previous text is kept)")
async def edit_message(
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    body: MessageEditIn,
    principal: PrincipalDep,
    messaging: MessagingDep,
) -> MessageOut:
    return await messaging.messages.edit(principal, conversation_id, message_id, body.body)


@messages.delete(
    "/{message_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete (leaves a tombstone)"
)
async def delete_message(
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    principal: PrincipalDep,
    messaging: MessagingDep,
) -> None:
    await messaging.messages.delete(principal, conversation_id, message_id)


@messages.get("/{message_id}/edits", summary="Edit history, oldest first")
async def message_edits(
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    principal: PrincipalDep,
    messaging: MessagingDep,
) -> list[MessageEditOut]:
    return await messaging.messages.edits(principal, conversation_id, message_id)


@messages.get("/{message_id}/thread", summary="A thread: its root and replies")
async def thread(
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    principal: PrincipalDep,
    messaging: MessagingDep,
    after: Annotated[int | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
) -> ThreadOut:
    return await messaging.messages.thread(
        principal, conversation_id, message_id, after=after, limit=limit
    )


@messages.put(
    "/{message_id}/follow", status_code=status.HTTP_204_NO_CONTENT, summary="Follow a thread"
)
async def follow(
    conversation_id: uuid.UUID, message_id: uuid.UUID, user: UserDep, messaging: MessagingDep
) -> None:
    await messaging.messages.set_following(user, conversation_id, message_id, True)


@messages.delete(
    "/{message_id}/follow", status_code=status.HTTP_204_NO_CONTENT, summary="Unfollow a thread"
)
async def unfollow(
    conversation_id: uuid.UUID, message_id: uuid.UUID, user: UserDep, messaging: MessagingDep
) -> None:
    await messaging.messages.set_following(user, conversation_id, message_id, False)


@messages.put("/{message_id}/reactions/{emoji}", summary="Add your reaction")
async def add_reaction(
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    emoji: str,
    user: UserDep,
    messaging: MessagingDep,
) -> list[ReactionOut]:
    return await messaging.messages.react(user, conversation_id, message_id, emoji, add=True)


@messages.delete("/{message_id}/reactions/{emoji}", summary="Remove your reaction")
async def remove_reaction(
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    emoji: str,
    user: UserDep,
    messaging: MessagingDep,
) -> list[ReactionOut]:
    return await messaging.messages.react(user, conversation_id, message_id, emoji, add=False)


@messages.put("/{message_id}/pin", summary="Pin")
async def pin(
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    principal: PrincipalDep,
    messaging: MessagingDep,
) -> MessageOut:
    return await messaging.messages.set_pinned(principal, conversation_id, message_id, True)


@messages.delete("/{message_id}/pin", summary="Unpin")
async def unpin(
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    principal: PrincipalDep,
    messaging: MessagingDep,
) -> MessageOut:
    return await messaging.messages.set_pinned(principal, conversation_id, message_id, False)


routers = [in_workspace, conversations, messages]
