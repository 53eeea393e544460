"""Messages: send (idempotent, sequenced), edit, delete, react, pin, threads and history."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.db.base import dialect_insert, new_id, utcnow
from tidings.db.database import Database
from tidings.events.service import NewEvent, emit, emit_many
from tidings.http.problems import Conflict, Forbidden, NotFound, Problem
from tidings.identity.policy import ApiKeyPrincipal, Principal, UserPrincipal
from tidings.infra import metrics
from tidings.infra.logging import get_logger
from tidings.messaging import events, store
from tidings.messaging.access import (
    ConversationAccess,
    ConversationAction,
    ConversationRef,
    SendAccess,
    authorize,
    check,
    conversation_not_found,
)
from tidings.messaging.kinds import SenderKind
from tidings.messaging.mentions import Mentions, parse_mentions
from tidings.messaging.models import (
    Conversation,
    ConversationMember,
    Mention,
    Message,
    MessageEdit,
    Reaction,
    ThreadFollower,
    WrittenMessage,
)
from tidings.messaging.schemas import (
    MAX_BODY_CHARS,
    MessageEditOut,
    MessageOut,
    MessagePage,
    ReactionOut,
    ThreadOut,
)

MAX_PAGE = 200
# Sends written in one transaction at most; more wait for the next commit.
SEND_BATCH_SIZE = 64
# Loop turns a writer waits at most for sends in flight to queue up (`_let_queue_settle`).
_SETTLE_TURNS = 8
MAX_EMOJI_CHARS = 64


@dataclass(frozen=True)
class Draft:
    body: str
    client_id: str | None = None
    thread_root_id: uuid.UUID | None = None

    @property
    def fingerprint(self) -> str:
        material = f"{self.thread_root_id or ''}\x00{self.body}"
        return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class Sender:
    kind: SenderKind
    id: uuid.UUID | None
    name: str


SYSTEM_SENDER_NAME = "Tidings"


@dataclass(frozen=True)
class Sent:
    # The message as JSON (`MessageOut`'s form, what its event carries): built once, answered
    # as it is by the HTTP route and the socket's acknowledgement.
    message: dict[str, Any]
    created: bool  # False when a retried send (same client_id) found its message


@dataclass(frozen=True)
class _Written:
    """A message this batch wrote, with the JSON (`MessageOut`'s form) its event carries."""

    message: WrittenMessage
    out_json: dict[str, Any]


@dataclass(frozen=True)
class _Ready:
    """A send that passed every check: what `_insert` writes."""

    access: SendAccess
    draft: Draft
    sender: Sender
    root: Message | None


@dataclass(frozen=True)
class _PendingSend:
    principal: Principal
    conversation_id: uuid.UUID
    draft: Draft
    future: asyncio.Future[_Written | _Replay]


# What became of one send: its message, the message a retry found, or why it was refused.
Outcome = Union["_Written", "_Replay", Exception]
_log = get_logger(__name__)


class _Replay(Exception):  # noqa: N818 - control flow: roll back and answer with the original
    def __init__(self, message: Message | WrittenMessage) -> None:
        self.message = message


def message_not_found() -> NotFound:
    return NotFound("No such message.", code="message_not_found")


def _check_body(body: str) -> str:
    if not body.strip():
        raise Problem("A message needs some text.", code="empty_message")
    if len(body) > MAX_BODY_CHARS:
        raise Problem(f"A message is at most {MAX_BODY_CHARS} characters.", code="message_too_long")
    return body


def _check_emoji(emoji: str) -> str:
    if not 1 <= len(emoji) <= MAX_EMOJI_CHARS or any(c.isspace() for c in emoji):
        raise Problem("An emoji is 1 to 64 characters without spaces.", code="invalid_emoji")
    return emoji


def _authoring(principal: Principal) -> ConversationAction:
    """Changing one's own message: a person must still read the conversation; an app (which
    may be send-only) must still be allowed to post in it."""
    return (
        ConversationAction.POST
        if isinstance(principal, ApiKeyPrincipal)
        else ConversationAction.READ
    )


def _sender(principal: Principal) -> tuple[SenderKind, uuid.UUID]:
    if isinstance(principal, ApiKeyPrincipal):
        return SenderKind.APP, principal.key_id
    return SenderKind.USER, principal.user_id


class Messages:
    def __init__(self, db: Database, *, send_batch_size: int = SEND_BATCH_SIZE) -> None:
        self._db = db
        self._batch_size = send_batch_size
        self._queue: list[_PendingSend] = []
        self._writer: asyncio.Task[None] | None = None

    # -- send ------------------------------------------------------------------------------

    async def send(self, principal: Principal, conversation_id: uuid.UUID, draft: Draft) -> Sent:
        """Send a message; concurrent sends share transactions (group commit), each with its
        own savepoint, so one failing send never affects another."""
        _check_body(draft.body)
        future: asyncio.Future[_Written | _Replay] = asyncio.get_running_loop().create_future()
        self._queue.append(_PendingSend(principal, conversation_id, draft, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_queued(), name="message-writer")
        result = await future
        if isinstance(result, _Replay):
            if result.message.fingerprint != draft.fingerprint:
                raise Conflict(
                    "This client_id was used for a different message.", code="client_id_reused"
                )
            async with self._db.read() as session:
                reactions = await self._reactions(session, [result.message.id])
            out = events.message_out(result.message, reactions.get(result.message.id))
            return Sent(events.as_payload(out), False)
        return Sent(result.out_json, True)

    async def _write_queued(self) -> None:
        # Runs while sends are queued: whatever queued up during one commit goes in the next,
        # so a lone send waits for nobody (a loop turn) and a crowd shares each fsync.
        try:
            while self._queue:
                await self._let_queue_settle()
                batch, self._queue = (
                    self._queue[: self._batch_size],
                    self._queue[self._batch_size :],
                )
                await self._write_batch(batch)
        finally:
            self._writer = None

    async def _let_queue_settle(self) -> None:
        # Requests already parsed are a few loop turns from queueing their send (the body,
        # the caller's check): let them, while the queue still grows and is not full. No timer,
        # so a lone send waits a loop turn at most; under load batches grow (HTTP ingest:
        # 23 sends per transaction on average without this).
        for _ in range(_SETTLE_TURNS):
            queued = len(self._queue)
            if queued >= self._batch_size:
                return
            await asyncio.sleep(0)
            if len(self._queue) == queued:
                return

    async def _write_batch(self, batch: list[_PendingSend]) -> None:
        # Conversation rows are locked in one order by every batch: no deadlocks between
        # processes. The sort is stable: one conversation's sends keep their arrival order.
        batch.sort(key=lambda pending: pending.conversation_id.bytes)
        outcomes: list[Outcome]
        try:
            async with self._db.transaction() as session:
                outcomes = await self._write_bulk(session, batch)
        except Exception:
            # Something failed mid-way (a client_id raced in from another process, say): the
            # whole batch rolled back; write it again send by send, each in a savepoint.
            _log.info("message_batch_retried_one_by_one", size=len(batch), exc_info=True)
            try:
                async with self._db.transaction() as session:
                    outcomes = [await self._write_isolated(session, p) for p in batch]
            except BaseException as failure:  # the commit (or the database) failed
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(failure)
                if not isinstance(failure, Exception):
                    raise
                return
        metrics.MESSAGE_SEND_BATCH.observe(len(batch))
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.future.done():  # the sender went away (request cancelled)
                continue
            if isinstance(outcome, _Replay | _Written):
                pending.future.set_result(outcome)
            else:
                pending.future.set_exception(outcome)

    async def _write_isolated(self, session: AsyncSession, pending: _PendingSend) -> Outcome:
        try:
            async with session.begin_nested():
                [outcome] = await self._write_bulk(session, [pending])
                return outcome
        except Exception as failure:  # rolled back to its savepoint: only this send fails
            return failure

    async def _write_bulk(self, session: AsyncSession, batch: list[_PendingSend]) -> list[Outcome]:
        """A batch of sends in a handful of statements: one access check per sender and
        conversation, one sequence allocation per conversation, one INSERT for the messages and
        one for their events. Refusals are decided before anything is written, so they take no
        sequence and need no savepoint."""
        outcomes: list[Outcome | None] = [None] * len(batch)
        # Each sender's facts for each conversation, read together. On PostgreSQL the
        # conversations' rows are locked first (in id order, as everywhere), so the client_id
        # check below sees what a concurrent sender committed.
        pairs: dict[tuple[str, str, uuid.UUID], Principal] = {}
        for pending in batch:
            key = (pending.principal.kind, pending.principal.actor_id, pending.conversation_id)
            pairs.setdefault(key, pending.principal)
        loaded = await store.load_send_accesses(
            session, [(principal, key[2]) for key, principal in pairs.items()]
        )
        accesses: dict[tuple[str, str, uuid.UUID], SendAccess | Problem] = {}
        for (key, principal), facts in zip(pairs.items(), loaded, strict=True):
            try:
                if facts is None:
                    raise conversation_not_found()
                check(principal, facts, ConversationAction.POST)
                accesses[key] = facts
            except Problem as problem:
                accesses[key] = problem
        roots: dict[int, Message] = {}
        candidates: list[int] = []
        for index, pending in enumerate(batch):
            key = (pending.principal.kind, pending.principal.actor_id, pending.conversation_id)
            access = accesses[key]
            if isinstance(access, Problem):
                outcomes[index] = access
            elif access.conversation.archived:
                outcomes[index] = Conflict(
                    "The conversation is archived.", code="conversation_archived"
                )
            elif pending.draft.thread_root_id is not None:
                try:
                    roots[index] = await self._valid_root(
                        session, pending.conversation_id, pending.draft.thread_root_id
                    )
                    candidates.append(index)
                except Problem as problem:
                    outcomes[index] = problem
            else:
                candidates.append(index)

        # client_ids sent before (replays) and twice within this batch.
        keyed = [i for i in candidates if batch[i].draft.client_id is not None]
        used: dict[tuple[uuid.UUID, uuid.UUID | None, str | None], Message] = {}
        if keyed:
            found = await session.scalars(
                select(Message).where(
                    Message.conversation_id.in_({batch[i].conversation_id for i in keyed}),
                    Message.client_id.in_({batch[i].draft.client_id for i in keyed}),
                )
            )
            used = {(m.conversation_id, m.sender_id, m.client_id): m for m in found}
        first: dict[tuple[uuid.UUID, uuid.UUID | None, str | None], int] = {}
        repeats: dict[int, int] = {}
        fresh: list[int] = []
        for index in candidates:
            pending = batch[index]
            client_key = (
                pending.conversation_id,
                _sender(pending.principal)[1],
                pending.draft.client_id,
            )
            if pending.draft.client_id is not None:
                if client_key in used:
                    outcomes[index] = _Replay(used[client_key])
                    continue
                if client_key in first:
                    repeats[index] = first[client_key]
                    continue
                first[client_key] = index
            fresh.append(index)

        ready: list[_Ready] = []
        for index in fresh:
            pending = batch[index]
            key = (pending.principal.kind, pending.principal.actor_id, pending.conversation_id)
            access = accesses[key]
            assert isinstance(access, SendAccess)  # noqa: S101 - refusals left above
            kind, sender_id = _sender(pending.principal)
            sender = Sender(kind, sender_id, access.caller_name)
            ready.append(_Ready(access, pending.draft, sender, roots.get(index)))
        for index, written in zip(fresh, await self._insert(session, ready), strict=True):
            outcomes[index] = written
        for index, original in repeats.items():
            first_send = outcomes[original]
            outcomes[index] = (
                _Replay(first_send.message) if isinstance(first_send, _Written) else first_send
            )
        assert all(outcome is not None for outcome in outcomes)  # noqa: S101 - each decided
        return [outcome for outcome in outcomes if outcome is not None]

    async def _insert(self, session: AsyncSession, ready: list[_Ready]) -> list[_Written]:
        """Write decided sends: one sequence allocation per conversation (its row is locked),
        one INSERT for the messages, one for their events."""
        now = utcnow()
        # Sequences: one UPDATE … RETURNING per conversation, in sorted order (G2).
        counts: dict[uuid.UUID, int] = defaultdict(int)
        for item in ready:
            counts[item.access.conversation.id] += 1
        next_seq: dict[uuid.UUID, int] = {}
        for conversation_id in sorted(counts, key=lambda c: c.bytes):
            last = await store.advance_sequence(
                session, conversation_id, counts[conversation_id], now
            )
            next_seq[conversation_id] = last - counts[conversation_id] + 1

        written: list[_Written] = []
        rows: list[dict[str, Any]] = []  # the INSERT's values (not read back from the objects)
        mentioned: list[tuple[WrittenMessage, Mentions]] = []
        read_up_to: dict[tuple[uuid.UUID, uuid.UUID], int] = {}
        new_events: list[NewEvent] = []
        for item in ready:
            conversation, sender, root = item.access.conversation, item.sender, item.root
            seq = next_seq[conversation.id]
            next_seq[conversation.id] = seq + 1
            mentions = parse_mentions(item.draft.body)
            values: dict[str, Any] = {
                "id": new_id(),
                "conversation_id": conversation.id,
                "workspace_id": conversation.workspace_id,
                "seq": seq,
                "sender_kind": sender.kind.value,
                "sender_id": sender.id,
                "sender_name": sender.name,
                "body": item.draft.body,
                "client_id": item.draft.client_id,
                "fingerprint": item.draft.fingerprint if item.draft.client_id else None,
                "mentions": mentions.as_dict(),
                "thread_root_id": root.id if root else None,
                "reply_count": 0,
                "last_reply_at": None,
                "created_at": now,
                "edited_at": None,
                "deleted_at": None,
                "pinned_at": None,
                "pinned_by": None,
            }
            rows.append(values)
            message = WrittenMessage(**values)
            if mentions.users or mentions.broadcast:
                mentioned.append((message, mentions))
            out_json = events.as_payload(events.message_out(message))
            written.append(_Written(message, out_json))
            payload: dict[str, Any] = {"message": out_json}
            if root is not None:
                # The conversation row is locked now; the root's row comes after it, as in edits.
                root.reply_count += 1
                root.last_reply_at = now
                payload["thread"] = {
                    "root_id": str(root.id),
                    "reply_count": root.reply_count,
                    "last_reply_at": now.isoformat(),
                }
            elif sender.kind is SenderKind.USER and item.access.is_member and sender.id:
                read_up_to[(conversation.id, sender.id)] = seq
            new_events.append(
                NewEvent(
                    events.MESSAGE_CREATED,
                    events.conversation_stream(conversation.id),
                    payload,
                    conversation.workspace_id,
                )
            )
        if not written:
            return written
        await store.insert_messages(session, rows)
        for message, mentions in mentioned:
            await self._record_mentions(session, message, mentions)
        for item, message in zip(ready, (w.message for w in written), strict=True):
            root = item.root
            if root is None:
                continue
            if message.sender_kind == SenderKind.USER.value and message.sender_id is not None:
                await self._follow(session, root.id, message.sender_id, participant=True)
            if root.sender_kind == SenderKind.USER.value and root.sender_id is not None:
                await self._follow(
                    session, root.id, root.sender_id, participant=True, only_new=True
                )
        await store.read_up_to(session, read_up_to)
        await emit_many(session, new_events)
        return written

    async def _valid_root(
        self, session: AsyncSession, conversation_id: uuid.UUID, root_id: uuid.UUID
    ) -> Message:
        root = await session.get(Message, root_id)
        if root is None or root.conversation_id != conversation_id or root.deleted_at is not None:
            raise NotFound("No such thread in this conversation.", code="thread_not_found")
        if root.thread_root_id is not None:
            raise Problem("Reply to the thread's first message.", code="nested_thread")
        return root

    async def post_system(self, conversation_id: uuid.UUID, body: str) -> None:
        """A message from Tidings itself (welcome messages, notices)."""
        async with self._db.transaction() as session:
            conversation = await session.get(Conversation, conversation_id)
            if conversation is None:
                raise conversation_not_found()
            access = SendAccess(ConversationRef.of(conversation), None, False, SYSTEM_SENDER_NAME)
            sender = Sender(SenderKind.SYSTEM, None, SYSTEM_SENDER_NAME)
            await self._insert(session, [_Ready(access, Draft(body), sender, None)])

    async def _record_mentions(
        self, session: AsyncSession, message: Message | WrittenMessage, mentions: Mentions
    ) -> None:
        if not mentions.users and not mentions.broadcast:
            return
        query = select(ConversationMember.user_id).where(
            ConversationMember.conversation_id == message.conversation_id
        )
        if not mentions.broadcast:
            query = query.where(ConversationMember.user_id.in_(mentions.users))
        targets = set(await session.scalars(query)) - {message.sender_id}
        if targets:
            await session.execute(
                insert(Mention),
                [
                    {
                        "message_id": message.id,
                        "user_id": user_id,
                        "conversation_id": message.conversation_id,
                        "seq": message.seq,
                    }
                    for user_id in targets
                ],
            )

    async def _follow(
        self,
        session: AsyncSession,
        root_id: uuid.UUID,
        user_id: uuid.UUID,
        *,
        participant: bool = False,
        following: bool = True,
        only_new: bool = False,
    ) -> None:
        statement = dialect_insert(session)(ThreadFollower).values(
            root_id=root_id, user_id=user_id, following=following, participant=participant
        )
        if only_new:
            statement = statement.on_conflict_do_nothing()
        else:
            values: dict[str, Any] = {"following": following}
            if participant:
                values["participant"] = True
            statement = statement.on_conflict_do_update(
                index_elements=[ThreadFollower.root_id, ThreadFollower.user_id], set_=values
            )
        await session.execute(statement)

    # -- change ----------------------------------------------------------------------------

    async def _load(
        self,
        session: AsyncSession,
        principal: Principal,
        conversation_id: uuid.UUID,
        message_id: uuid.UUID,
        action: ConversationAction,
        *,
        lock: bool = False,
    ) -> tuple[ConversationAccess, Message]:
        """`lock`: for changes to the message (see `load_access`)."""
        access = await authorize(session, principal, conversation_id, action, lock=lock)
        message = await session.get(Message, message_id)
        if message is None or message.conversation_id != conversation_id:
            raise message_not_found()
        return access, message

    @staticmethod
    def _writable(access: ConversationAccess, message: Message) -> None:
        if access.conversation.archived_at is not None:
            raise Conflict("The conversation is archived.", code="conversation_archived")
        if message.deleted_at is not None:
            raise Conflict("The message was deleted.", code="message_deleted")

    async def edit(
        self,
        principal: Principal,
        conversation_id: uuid.UUID,
        message_id: uuid.UUID,
        body: str,
    ) -> MessageOut:
        _check_body(body)
        async with self._db.transaction() as session:
            access, message = await self._load(
                session,
                principal,
                conversation_id,
                message_id,
                _authoring(principal),
                lock=True,
            )
            if _sender(principal) != (SenderKind(message.sender_kind), message.sender_id):
                raise Forbidden("Only its sender can edit a message.", code="not_the_sender")
            self._writable(access, message)
            if body == message.body:
                return await self._out(session, message)
            session.add(
                MessageEdit(
                    message_id=message.id,
                    previous_body=message.body,
                    edited_by=_sender(principal)[1],
                )
            )
            mentions = parse_mentions(body)
            message.body, message.edited_at = body, utcnow()
            message.mentions = mentions.as_dict()
            await session.execute(delete(Mention).where(Mention.message_id == message.id))
            await session.flush()
            await self._record_mentions(session, message, mentions)
            out = await self._out(session, message)
            await emit(
                session,
                events.MESSAGE_EDITED,
                stream_key=events.conversation_stream(conversation_id),
                workspace_id=message.workspace_id,
                payload={"message": events.as_payload(out)},
            )
            return out

    async def delete(
        self, principal: Principal, conversation_id: uuid.UUID, message_id: uuid.UUID
    ) -> None:
        async with self._db.transaction() as session:
            access, message = await self._load(
                session,
                principal,
                conversation_id,
                message_id,
                _authoring(principal),
                lock=True,
            )
            if _sender(principal) != (SenderKind(message.sender_kind), message.sender_id):
                check(principal, access, ConversationAction.MODERATE)
            if message.deleted_at is not None:
                return
            # The tombstone keeps its place (sequence, thread) but none of its content.
            message.deleted_at = utcnow()
            message.body = ""
            message.mentions = {}
            message.pinned_at = message.pinned_by = None
            for table in (Reaction, Mention, MessageEdit):
                await session.execute(delete(table).where(table.message_id == message.id))
            await session.flush()
            await emit(
                session,
                events.MESSAGE_DELETED,
                stream_key=events.conversation_stream(conversation_id),
                workspace_id=message.workspace_id,
                payload={"message": events.as_payload(events.message_out(message))},
            )

    async def react(
        self,
        principal: UserPrincipal,
        conversation_id: uuid.UUID,
        message_id: uuid.UUID,
        emoji: str,
        *,
        add: bool,
    ) -> list[ReactionOut]:
        _check_emoji(emoji)
        async with self._db.transaction() as session:
            access, message = await self._load(
                session, principal, conversation_id, message_id, ConversationAction.POST
            )
            self._writable(access, message)
            if add:
                result = await session.execute(
                    dialect_insert(session)(Reaction)
                    .values(message_id=message_id, user_id=principal.user_id, emoji=emoji)
                    .on_conflict_do_nothing()
                )
            else:
                result = await session.execute(
                    delete(Reaction).where(
                        Reaction.message_id == message_id,
                        Reaction.user_id == principal.user_id,
                        Reaction.emoji == emoji,
                    )
                )
            reactions = (await self._reactions(session, [message_id])).get(message_id, [])
            if result.rowcount:  # type: ignore[attr-defined]
                await emit(
                    session,
                    events.REACTION_ADDED if add else events.REACTION_REMOVED,
                    stream_key=events.conversation_stream(conversation_id),
                    workspace_id=message.workspace_id,
                    payload={
                        "message_id": str(message_id),
                        "emoji": emoji,
                        "user_id": str(principal.user_id),
                        "reactions": [r.model_dump(mode="json") for r in reactions],
                    },
                )
            return reactions

    async def set_pinned(
        self,
        principal: Principal,
        conversation_id: uuid.UUID,
        message_id: uuid.UUID,
        pinned: bool,
    ) -> MessageOut:
        async with self._db.transaction() as session:
            access, message = await self._load(
                session,
                principal,
                conversation_id,
                message_id,
                ConversationAction.POST,
                lock=True,
            )
            self._writable(access, message)
            if (message.pinned_at is not None) != pinned:
                message.pinned_at = utcnow() if pinned else None
                message.pinned_by = _sender(principal)[1] if pinned else None
                await session.flush()
                out = await self._out(session, message)
                await emit(
                    session,
                    events.MESSAGE_PINNED if pinned else events.MESSAGE_UNPINNED,
                    stream_key=events.conversation_stream(conversation_id),
                    workspace_id=message.workspace_id,
                    payload={"message": events.as_payload(out), "by": principal.actor_id},
                )
                return out
            return await self._out(session, message)

    async def set_following(
        self,
        user: UserPrincipal,
        conversation_id: uuid.UUID,
        root_id: uuid.UUID,
        following: bool,
    ) -> None:
        async with self._db.transaction() as session:
            _, root = await self._load(
                session, user, conversation_id, root_id, ConversationAction.READ
            )
            if root.thread_root_id is not None:
                raise Problem("Follow the thread's first message.", code="nested_thread")
            current = await session.get(ThreadFollower, (root_id, user.user_id))
            if current is not None and current.following == following:
                return  # nothing changes: no event, like every other setter
            await self._follow(session, root_id, user.user_id, following=following)
            await emit(
                session,
                events.THREAD_FOLLOW_UPDATED,
                stream_key=events.user_stream(user.user_id),
                workspace_id=root.workspace_id,
                payload={
                    "conversation_id": str(conversation_id),
                    "root_id": str(root_id),
                    "following": following,
                },
            )

    # -- read ------------------------------------------------------------------------------

    async def get(
        self, principal: Principal, conversation_id: uuid.UUID, message_id: uuid.UUID
    ) -> MessageOut:
        async with self._db.read() as session:
            _, message = await self._load(
                session, principal, conversation_id, message_id, ConversationAction.READ_MESSAGES
            )
            return await self._out(session, message)

    async def edits(
        self, principal: Principal, conversation_id: uuid.UUID, message_id: uuid.UUID
    ) -> list[MessageEditOut]:
        async with self._db.read() as session:
            await self._load(
                session, principal, conversation_id, message_id, ConversationAction.READ_MESSAGES
            )
            rows = await session.scalars(
                select(MessageEdit)
                .where(MessageEdit.message_id == message_id)
                .order_by(MessageEdit.edited_at)
            )
            return [
                MessageEditOut(
                    previous_body=e.previous_body, edited_by=e.edited_by, edited_at=e.edited_at
                )
                for e in rows
            ]

    async def history(
        self,
        principal: Principal,
        conversation_id: uuid.UUID,
        *,
        before: int | None = None,
        after: int | None = None,
        around: int | None = None,
        limit: int = 50,
    ) -> MessagePage:
        """Top-level messages by sequence: the latest, or before/after/around a position."""
        if sum(x is not None for x in (before, after, around)) > 1:
            raise Problem("Give at most one of before, after, around.", code="invalid_cursor")
        limit = max(1, min(limit, MAX_PAGE))
        async with self._db.read() as session:
            await authorize(session, principal, conversation_id, ConversationAction.READ_MESSAGES)
            top = select(Message).where(
                Message.conversation_id == conversation_id, Message.thread_root_id.is_(None)
            )
            older: list[Message] = []
            newer: list[Message] = []
            more_before = more_after = False
            if after is not None:
                newer = list(
                    await session.scalars(
                        top.where(Message.seq > after).order_by(Message.seq).limit(limit + 1)
                    )
                )
                more_after = len(newer) > limit
                newer = newer[:limit]
                more_before = bool(
                    await session.scalar(select(top.where(Message.seq <= after).exists()))
                )
            else:
                pivot = around if around is not None else before
                older_limit = limit // 2 if around is not None else limit
                query = top.order_by(Message.seq.desc()).limit(older_limit + 1)
                if pivot is not None:
                    query = query.where(Message.seq < pivot)
                older = list(await session.scalars(query))
                more_before = len(older) > older_limit
                older = older[:older_limit][::-1]
                if around is not None:
                    newer_limit = limit - older_limit
                    newer = list(
                        await session.scalars(
                            top.where(Message.seq >= around)
                            .order_by(Message.seq)
                            .limit(newer_limit + 1)
                        )
                    )
                    more_after = len(newer) > newer_limit
                    newer = newer[:newer_limit]
                elif before is not None:
                    more_after = bool(
                        await session.scalar(select(top.where(Message.seq >= before).exists()))
                    )
            page = older + newer
            outs = await self._outs(session, page)
            return MessagePage(
                messages=outs, has_more_before=more_before, has_more_after=more_after
            )

    async def thread(
        self,
        principal: Principal,
        conversation_id: uuid.UUID,
        root_id: uuid.UUID,
        *,
        after: int | None = None,
        limit: int = 100,
    ) -> ThreadOut:
        limit = max(1, min(limit, MAX_PAGE))
        async with self._db.read() as session:
            _, root = await self._load(
                session, principal, conversation_id, root_id, ConversationAction.READ_MESSAGES
            )
            if root.thread_root_id is not None:
                raise Problem(
                    "That message is a reply; open its thread's root.", code="nested_thread"
                )
            query = select(Message).where(Message.thread_root_id == root_id)
            if after is not None:
                query = query.where(Message.seq > after)
            replies = list(await session.scalars(query.order_by(Message.seq).limit(limit + 1)))
            followers = (
                await session.execute(
                    select(
                        ThreadFollower.user_id, ThreadFollower.following, ThreadFollower.participant
                    ).where(ThreadFollower.root_id == root_id)
                )
            ).all()
            me = principal.user_id if isinstance(principal, UserPrincipal) else None
            outs = await self._outs(session, [root, *replies[:limit]])
            return ThreadOut(
                root=outs[0],
                replies=outs[1:],
                has_more=len(replies) > limit,
                participant_ids=sorted(u for u, _, participant in followers if participant),
                following=any(u == me and following for u, following, _ in followers),
            )

    async def pins(self, principal: Principal, conversation_id: uuid.UUID) -> list[MessageOut]:
        async with self._db.read() as session:
            await authorize(session, principal, conversation_id, ConversationAction.READ_MESSAGES)
            pinned = list(
                await session.scalars(
                    select(Message)
                    .where(
                        Message.conversation_id == conversation_id, Message.pinned_at.is_not(None)
                    )
                    .order_by(Message.pinned_at.desc())
                )
            )
            return await self._outs(session, pinned)

    async def _out(self, session: AsyncSession, message: Message) -> MessageOut:
        return (await self._outs(session, [message]))[0]

    async def _outs(self, session: AsyncSession, messages: Sequence[Message]) -> list[MessageOut]:
        reactions = await self._reactions(session, [m.id for m in messages])
        return [events.message_out(m, reactions.get(m.id)) for m in messages]

    async def _reactions(
        self, session: AsyncSession, message_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, list[ReactionOut]]:
        if not message_ids:
            return {}
        rows = await session.execute(
            select(Reaction.message_id, Reaction.emoji, Reaction.user_id)
            .where(Reaction.message_id.in_(message_ids))
            .order_by(Reaction.created_at, Reaction.emoji)
        )
        grouped: dict[uuid.UUID, dict[str, list[uuid.UUID]]] = defaultdict(dict)
        for message_id, emoji, user_id in rows.all():
            grouped[message_id].setdefault(emoji, []).append(user_id)
        return {
            message_id: [
                ReactionOut(emoji=emoji, count=len(users), user_ids=users)
                for emoji, users in by_emoji.items()
            ]
            for message_id, by_emoji in grouped.items()
        }


__all__ = ["Draft", "Messages", "Sent"]
