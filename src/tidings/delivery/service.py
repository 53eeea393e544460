"""The send API's rules: accept (durably, idempotently), read the log, cancel, take callbacks.

Accepting a send writes the message, its idempotency record, its `delivery.queued` event and
its job in one transaction; the job reaches a worker only after COMMIT (never enqueue before
the commit). Content is rendered at accept time, with the template version the caller chose,
so a later template edit never changes a queued message and a missing variable is a 400 now
rather than a failure later.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Table, and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.db.base import new_id, utcnow
from tidings.db.batching import GroupCommit
from tidings.db.database import Database, driver_of
from tidings.delivery import idempotency, log_store
from tidings.delivery.connectors.base import CallbackRejected, Channel, StatusUpdate
from tidings.delivery.connectors.registry import get_connector_type
from tidings.delivery.connectors_service import (
    Connectors,
    ConnectorStatus,
    NamedConnector,
    by_ref,
)
from tidings.delivery.log_store import ATTEMPT_FIELDS, MessageRow, Outcome
from tidings.delivery.models import Connector, DeliveryAttempt, DeliveryRoute, OutboundMessage
from tidings.delivery.statuses import FINAL_STATUSES, MessageStatus
from tidings.events import store as event_store
from tidings.events.service import NewEvent, emit_many
from tidings.http.cursors import decode_cursor, encode_cursor
from tidings.http.problems import Conflict, NotFound, Problem
from tidings.jobs import service as jobs

DELIVERY_JOB = "delivery.send"
MAX_BATCH = 1000

_MESSAGES: Table = OutboundMessage.__table__  # type: ignore[assignment]


class _MessageView(Protocol):
    """The fields of a message that its delivery events carry."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def workspace_id(self) -> uuid.UUID: ...
    @property
    def status(self) -> str: ...
    @property
    def recipient(self) -> str: ...
    @property
    def connector_id(self) -> uuid.UUID | None: ...
    @property
    def route_id(self) -> uuid.UUID | None: ...
    @property
    def message_metadata(self) -> dict[str, Any]: ...
    @property
    def attempts(self) -> int: ...


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One row of the delivery log, as a delivery job writes it (a Core insert, no ORM object)."""

    id: uuid.UUID
    message_id: uuid.UUID
    number: int
    connector_id: uuid.UUID | None
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    error_class: str | None
    provider_status: int | None
    provider_response: str | None
    latency_ms: float | None

    def values(self) -> dict[str, Any]:
        # Not dataclasses.asdict(): that deep-copies every value.
        return {name: getattr(self, name) for name in ATTEMPT_FIELDS}


@dataclass(frozen=True, slots=True)
class MessageView:
    """A message as an accept, a start or a finish wrote it, without an ORM object: building
    those cost more CPU than the statements on these paths."""

    id: uuid.UUID
    workspace_id: uuid.UUID
    status: str
    recipient: str
    connector_id: uuid.UUID | None
    route_id: uuid.UUID | None
    message_metadata: dict[str, Any]
    attempts: int
    send_at: datetime | None = None
    content: dict[str, Any] | None = None  # the parts per channel; a start returns them

    @classmethod
    def queued(cls, values: dict[str, Any]) -> MessageView:
        """From the values an accept inserts."""
        return cls(**{name: values[name] for name in _VIEW_FIELDS})

    @classmethod
    def of(cls, row: MessageRow, status: str) -> MessageView:
        """From a row the delivery log returned, with its new status (and, from a start, its
        content)."""
        return cls(
            id=row.id,
            workspace_id=row.workspace_id,
            status=status,
            recipient=row.recipient,
            connector_id=row.connector_id,
            route_id=row.route_id,
            message_metadata=row.message_metadata,
            attempts=row.attempts,
            content=row.content,
        )


_VIEW_FIELDS = tuple(MessageView.__dataclass_fields__)


@dataclass(frozen=True)
class RenderedTemplate:
    template_id: uuid.UUID
    version: int
    parts: dict[str, dict[str, Any]]  # channel -> rendered fields


class TemplateRenderer(Protocol):
    async def render_for_send(
        self,
        session: AsyncSession,
        workspace_id: uuid.UUID,
        template_ref: str,
        version: int | None,
        variables: Mapping[str, Any],
        channels: set[str],
    ) -> RenderedTemplate: ...


@dataclass(frozen=True)
class SendRequest:
    recipient: str
    connector: str | None = None
    route: str | None = None
    template: str | None = None
    template_version: int | None = None
    variables: Mapping[str, Any] = field(default_factory=dict)
    content: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    send_at: datetime | None = None


@dataclass(frozen=True)
class Sender:
    workspace_id: uuid.UUID
    actor: str  # user or API key id: scopes idempotency keys
    api_key_id: uuid.UUID | None


@dataclass(frozen=True)
class Accepted:
    messages: list[MessageView]
    replayed_status: int | None = None
    replayed_body: Any = None


@dataclass(frozen=True)
class MessageFilter:
    status: str | None = None
    connector_id: uuid.UUID | None = None
    recipient: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


def content_parts(content: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Raw content (subject, text, html, blocks) as the part of each channel it can fill."""
    subject, text, html, blocks = (
        content.get("subject"),
        content.get("text"),
        content.get("html"),
        content.get("blocks"),
    )
    parts: dict[str, dict[str, Any]] = {}
    if subject is not None and (text is not None or html is not None):
        parts[Channel.EMAIL] = {"subject": subject, "text": text, "html": html}
    if text is not None:
        parts[Channel.SMS] = {"text": text}
    if text is not None or blocks is not None:
        parts[Channel.CHAT] = {"text": text, "blocks": blocks}
    # An outgoing webhook receives the content as the caller gave it.
    parts[Channel.WEBHOOK] = {k: v for k, v in content.items() if v is not None}
    return parts


def channel_content(parts: Mapping[str, Any], channel: Channel) -> Mapping[str, Any] | None:
    if channel is Channel.WEBHOOK:
        # Raw content has its own webhook part; a template's parts all go, by channel.
        whole: Mapping[str, Any] = parts.get(Channel.WEBHOOK.value, parts)
        return whole
    part: Mapping[str, Any] | None = parts.get(channel.value)
    return part


class Deliveries:
    def __init__(
        self,
        db: Database,
        connectors: Connectors,
        templates: TemplateRenderer,
        *,
        max_attempts: int,
        idempotency_ttl_hours: float,
    ) -> None:
        self._db = db
        self._connectors = connectors
        self._templates = templates
        self._max_attempts = max_attempts
        self._idempotency_ttl_hours = idempotency_ttl_hours
        self._single_accepts = GroupCommit(self._accept_group, max_batch=64)
        # A retry waits on its start, a first run on its read (no linger for either; a first
        # run's mark is written while the provider is called). Nobody waits on an outcome, so
        # outcomes wait 10 ms for company.
        self._log = log_store.store_for(db.dialect)
        self._starts = GroupCommit(self._start_many)
        self._untried = GroupCommit(self._untried_many)  # one read for a crowd, as the starts
        self._finishes = GroupCommit(self._finish_many, linger_seconds=0.01)

    # -- accepting --------------------------------------------------------------------------

    async def accept(
        self,
        sender: Sender,
        requests: Sequence[SendRequest],
        *,
        idempotency_key: idempotency.IdempotencyKey | None = None,
        answer: Any = None,
    ) -> Accepted:
        """Write and queue `requests`, all or none. `answer(messages)` makes the stored reply.

        Single sends arriving together share one transaction (group commit); a batch is its
        own transaction."""
        call = _AcceptCall(sender, list(requests), idempotency_key, answer)
        for attempt in range(2):
            try:
                if len(call.requests) == 1:
                    outcome = await self._single_accepts.submit(call)
                    if isinstance(outcome, BaseException):
                        raise outcome
                    return outcome
                async with self._db.transaction() as session:
                    return await self._accept_in(session, call)
            except IntegrityError:
                # A concurrent request with the same Idempotency-Key committed first; the
                # retry finds its answer.
                if idempotency_key is None or attempt == 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _accept_group(self, calls: list[_AcceptCall]) -> list[Accepted | Exception]:
        if len(calls) > 1:
            try:
                async with self._db.transaction() as session:
                    return list(await self._accept_all_in(session, calls))
            except Exception:  # noqa: S110 - one call's error: each goes again on its own
                pass
        outcomes: list[Accepted | Exception] = []
        for call in calls:
            try:
                async with self._db.transaction() as session:
                    outcomes.append(await self._accept_in(session, call))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    async def _accept_in(self, session: AsyncSession, call: _AcceptCall) -> Accepted:
        [accepted] = await self._accept_all_in(session, [call])
        return accepted

    async def _accept_all_in(
        self, session: AsyncSession, calls: list[_AcceptCall]
    ) -> list[Accepted]:
        """Every call's messages, jobs and events in one INSERT each (a group of single sends
        costs the statements of one batch); a call whose Idempotency-Key was answered before
        gets that answer instead."""
        now = utcnow()
        targets: dict[uuid.UUID, _TargetCache] = {}
        accepted: dict[int, Accepted] = {}
        prepared: dict[int, list[dict[str, Any]]] = {}
        for position, call in enumerate(calls):
            if call.key is not None:
                stored = await idempotency.claim(session, call.key)
                if stored is not None:
                    accepted[position] = Accepted([], stored.status_code, stored.body)
                    continue
            workspace_id = call.sender.workspace_id
            cache = targets.setdefault(
                workspace_id, _TargetCache(session, workspace_id, self._connectors)
            )
            prepared[position] = await self._prepare_all(session, call, cache, now)
        rows = [values for call_rows in prepared.values() for values in call_rows]
        messages = iter(await self._insert(session, rows) if rows else [])
        for position, call_rows in prepared.items():
            mine = [next(messages) for _ in call_rows]
            call = calls[position]
            if call.key is not None and call.answer is not None:
                idempotency.remember(
                    session, call.key, 202, call.answer(mine), self._idempotency_ttl_hours
                )
            accepted[position] = Accepted(mine)
        return [accepted[position] for position in range(len(calls))]

    async def _prepare_all(
        self, session: AsyncSession, call: _AcceptCall, targets: _TargetCache, now: datetime
    ) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for index, request in enumerate(call.requests):
            try:
                rows.append(await self._prepare(session, call.sender, request, targets, now))
            except Problem as problem:
                if len(call.requests) > 1:
                    problem.extensions.setdefault("index", index)
                raise
        return rows

    async def _insert(self, session: AsyncSession, rows: list[dict[str, Any]]) -> list[MessageView]:
        now = utcnow()
        job_rows = [
            jobs.job_row(
                DELIVERY_JOB,
                {"message_id": str(values["id"])},
                run_at=values["send_at"],
                max_attempts=self._max_attempts,
                now=now,
            )
            for values in rows
        ]
        messages = [MessageView.queued(values) for values in rows]
        # If this process runs a worker with room, each job starts right after the COMMIT
        # with its message in hand (no claim, no read back before the provider is called).
        queued = await jobs.enqueue_many(session, job_rows, local=messages)
        for values, job_id in zip(rows, queued, strict=True):
            values["job_id"] = job_id
        # Written at the driver in this transaction, not through the ORM's bulk path (which
        # maps every row through the mapper: a batch is up to a thousand rows) nor SQLAlchemy
        # Core: these two statements cost more CPU there than the rest of an accept's writes.
        await self._log.insert_messages(await driver_of(session), rows)
        await event_store.emit_many_in(
            session, [self._event(m, "delivery.queued") for m in messages]
        )
        return messages

    async def _prepare(
        self,
        session: AsyncSession,
        sender: Sender,
        request: SendRequest,
        targets: _TargetCache,
        now: datetime,
    ) -> dict[str, Any]:
        if (request.connector is None) == (request.route is None):
            raise Problem("Give exactly one of `connector` and `route`.", code="target_required")
        if (request.template is None) == (request.content is None):
            raise Problem("Give exactly one of `template` and `content`.", code="content_required")
        route_id: uuid.UUID | None = None
        chain: Sequence[Connector | NamedConnector]
        if request.route is not None:
            route, chain = await targets.route(request.route)
            route_id = route.id
            connector_id = None
        else:
            connector = await targets.connector(request.connector or "")
            chain = [connector]
            connector_id = connector.id
        channels = {_channel_of(c) for c in chain} - {Channel.WEBHOOK}
        template_id: uuid.UUID | None = None
        template_version: int | None = None
        if request.template is not None:
            rendered = await self._templates.render_for_send(
                session,
                sender.workspace_id,
                request.template,
                request.template_version,
                request.variables,
                {c.value for c in channels},
            )
            parts = rendered.parts
            template_id, template_version = rendered.template_id, rendered.version
        else:
            parts = content_parts(request.content or {})
        missing = sorted(c.value for c in channels if c.value not in parts)
        if missing:
            raise Problem(
                f"The content has nothing to send on {', '.join(missing)}: "
                + (
                    "the template has no such part."
                    if request.template is not None
                    else "email needs `subject` and `text` or `html`; sms and chat need `text`."
                ),
                code="content_missing_for_channel",
                channels=missing,
            )
        send_at = request.send_at if request.send_at is not None and request.send_at > now else None
        return {
            "id": new_id(),
            "workspace_id": sender.workspace_id,
            "api_key_id": sender.api_key_id,
            "recipient": request.recipient,
            "route_id": route_id,
            "connector_id": connector_id,
            "template_id": template_id,
            "template_version": template_version,
            "content": parts,
            "message_metadata": dict(request.metadata),
            "status": MessageStatus.QUEUED,
            "send_at": send_at,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }

    @staticmethod
    def _event(message: _MessageView, type_: str, **extra: Any) -> NewEvent:
        return NewEvent(
            type_,
            f"outbound:{message.id}",
            {
                "message_id": str(message.id),
                "status": message.status,
                "recipient": message.recipient,
                "connector_id": str(message.connector_id) if message.connector_id else None,
                "route_id": str(message.route_id) if message.route_id else None,
                "metadata": message.message_metadata,
                **extra,
            },
            message.workspace_id,
        )

    # -- reading ----------------------------------------------------------------------------

    async def get(
        self, workspace_id: uuid.UUID, message_id: uuid.UUID
    ) -> tuple[OutboundMessage, list[DeliveryAttempt]]:
        async with self._db.read() as session:
            message = await session.scalar(
                select(OutboundMessage).where(
                    OutboundMessage.id == message_id, OutboundMessage.workspace_id == workspace_id
                )
            )
            if message is None:
                raise NotFound("No such message in this workspace.", code="message_not_found")
            attempts = (
                await session.scalars(
                    select(DeliveryAttempt)
                    .where(DeliveryAttempt.message_id == message_id)
                    .order_by(DeliveryAttempt.number, DeliveryAttempt.started_at)
                )
            ).all()
        return message, list(attempts)

    async def list_messages(
        self,
        workspace_id: uuid.UUID,
        filters: MessageFilter,
        *,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[OutboundMessage], str | None]:
        query = select(OutboundMessage).where(OutboundMessage.workspace_id == workspace_id)
        if filters.status is not None:
            query = query.where(OutboundMessage.status == filters.status)
        if filters.connector_id is not None:
            query = query.where(OutboundMessage.connector_id == filters.connector_id)
        if filters.recipient is not None:
            query = query.where(OutboundMessage.recipient == filters.recipient)
        if filters.created_after is not None:
            query = query.where(OutboundMessage.created_at >= filters.created_after)
        if filters.created_before is not None:
            query = query.where(OutboundMessage.created_at < filters.created_before)
        if cursor is not None:
            moment, row_id = decode_cursor(cursor)
            query = query.where(
                or_(
                    OutboundMessage.created_at < moment,
                    and_(OutboundMessage.created_at == moment, OutboundMessage.id < row_id),
                )
            )
        query = query.order_by(OutboundMessage.created_at.desc(), OutboundMessage.id.desc())
        async with self._db.read() as session:
            rows = list((await session.scalars(query.limit(limit + 1))).all())
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id)
        return rows, next_cursor

    # -- cancelling -------------------------------------------------------------------------

    async def cancel(self, workspace_id: uuid.UUID, message_id: uuid.UUID) -> OutboundMessage:
        async with self._db.transaction() as session:
            message = await session.scalar(
                select(OutboundMessage)
                .where(
                    OutboundMessage.id == message_id, OutboundMessage.workspace_id == workspace_id
                )
                .with_for_update()
            )
            if message is None:
                raise NotFound("No such message in this workspace.", code="message_not_found")
            if message.status != MessageStatus.QUEUED or message.attempts > 0:
                raise Conflict(
                    f"The message is {message.status}; only a queued send that has not been "
                    "tried yet can be cancelled.",
                    code="message_not_cancellable",
                    status_now=message.status,
                )
            # A worker that has claimed the job may be calling the provider right now: then it
            # is too late (the job is no longer queued), and the worker may rely on that.
            if message.job_id is not None and not await jobs.cancel(session, message.job_id):
                raise Conflict(
                    "The message is being sent; it can no longer be cancelled.",
                    code="message_not_cancellable",
                    status_now=MessageStatus.SENDING.value,
                )
            now = utcnow()
            message.status = MessageStatus.CANCELLED
            message.finished_at = now
            message.updated_at = now
            await emit_many(session, [self._event(message, "delivery.cancelled")])
        return message

    # -- provider status callbacks ----------------------------------------------------------

    async def take_callback(
        self, connector_id: uuid.UUID, *, url: str, headers: Mapping[str, str], body: bytes
    ) -> int:
        """Apply a provider's signed status report; returns how many messages it moved."""
        row = await self._connectors.load_for_delivery(connector_id)
        if row is None or row.deleted_at is not None:
            raise NotFound("No such connector.", code="connector_not_found")
        instance = await self._connectors.instance(row)
        try:
            updates = type(instance).verify_status_callback(
                instance.settings, instance.credentials, url=url, headers=headers, body=body
            )
        except CallbackRejected as exc:
            raise Problem(str(exc), status=401, code="callback_rejected") from None
        moved = 0
        async with self._db.transaction() as session:
            for status_update in updates:
                moved += await self._apply_status(session, row, status_update)
        return moved

    async def _apply_status(
        self, session: AsyncSession, connector: Connector, status_update: StatusUpdate
    ) -> int:
        target = {
            "delivered": MessageStatus.DELIVERED,
            "bounced": MessageStatus.BOUNCED,
            "failed": MessageStatus.FAILED,
        }.get(status_update.status)
        if target is None:
            return 0
        now = utcnow()
        # Reports can arrive out of order: "delivered" never overwrites a bounce or a failure.
        allowed_from = [MessageStatus.SENDING, MessageStatus.SENT]
        if target is not MessageStatus.DELIVERED:
            allowed_from.append(MessageStatus.DELIVERED)
        messages = (
            await session.scalars(
                update(OutboundMessage)
                .where(
                    OutboundMessage.connector_id == connector.id,
                    OutboundMessage.provider_message_id == status_update.provider_message_id,
                    OutboundMessage.status.in_(allowed_from),
                )
                .values(
                    status=target,
                    updated_at=now,
                    finished_at=now,
                    error=status_update.detail if target is not MessageStatus.DELIVERED else None,
                )
                .returning(OutboundMessage)
            )
        ).all()
        if messages:
            await emit_many(
                session,
                [
                    self._event(m, f"delivery.{target.value}", detail=status_update.detail)
                    for m in messages
                ],
            )
        return len(messages)

    # -- the delivery log, written by the job ----------------------------------------------

    async def start_attempt(self, message_id: uuid.UUID) -> MessageView | None:
        """Mark the message `sending` (one more attempt) and return it with its content, or None
        when it is sent, final or cancelled already (nothing to do: never send twice).

        Concurrent deliveries of this process share one transaction (group commit). One
        statement both checks and marks, so a delivery costs no separate read."""
        return await self._starts.submit(message_id)

    async def untried(self, message_id: uuid.UUID) -> MessageView | None:
        """The message as its first attempt sends it, if it is queued and was never tried; a
        read (no write, no commit), shared by concurrent first runs like the starts."""
        return await self._untried.submit(message_id)

    async def _untried_many(self, ids: list[uuid.UUID]) -> list[MessageView | None]:
        async with self._db.driver_connection() as conn:
            rows = await self._log.untried(conn, list(set(ids)))
        by_id = {row.id: MessageView.of(row, MessageStatus.QUEUED) for row in rows}
        return [by_id.pop(message_id, None) for message_id in ids]  # a duplicate job: the first

    async def _start_many(self, ids: list[uuid.UUID]) -> list[MessageView | None]:
        async with self._db.driver_transaction() as conn:
            rows = await self._log.start(conn, list(set(ids)), utcnow())
            started = [MessageView.of(row, MessageStatus.SENDING) for row in rows]
            if started:
                await event_store.emit_many(
                    conn,
                    self._db.dialect,
                    [self._event(m, "delivery.sending", attempt=m.attempts) for m in started],
                )
        if started:
            self._events_committed()
        by_id = {message.id: message for message in started}
        # The same message twice in one batch (a duplicate job) is sent by the first only.
        return [by_id.pop(message_id, None) for message_id in ids]

    async def finish_attempt(
        self,
        message: MessageView,
        attempts: Sequence[AttemptRecord],
        *,
        status: MessageStatus,
        connector_id: uuid.UUID | None = None,
        provider_message_id: str | None = None,
        error_class: str | None = None,
        error: str | None = None,
        retry_in: float | None = None,
    ) -> None:
        """Write the attempts and the message's new status (group commit, like the start)."""
        await self._finishes.submit(
            _Finish(
                message,
                list(attempts),
                status,
                connector_id,
                provider_message_id,
                error_class,
                error,
                retry_in,
            )
        )

    async def _finish_many(self, finishes: list[_Finish]) -> list[None]:
        """The attempt rows, then one statement that moves every message of the batch still
        `sending` to its new status."""
        now = utcnow()
        # One outcome per message: a second run of its job in the same batch changes nothing.
        firsts: dict[uuid.UUID, _Finish] = {}
        for finish in finishes:
            firsts.setdefault(finish.message.id, finish)
        async with self._db.driver_transaction() as conn:
            await self._log.add_attempts(
                conn, [a.values() for finish in finishes for a in finish.attempts]
            )
            changed = await self._log.finish(
                conn, [finish.outcome(now) for finish in firsts.values()], now
            )
            events: list[NewEvent] = []
            for finish in firsts.values():
                row = changed.get(finish.message.id)
                if row is None:
                    continue  # finished by another run of its job already
                updated = MessageView.of(row, finish.status)
                events.append(
                    self._event(updated, finish.event_type, **finish.event_extra(updated))
                )
            await event_store.emit_many(conn, self._db.dialect, events)
        if events:
            self._events_committed()
        return [None] * len(finishes)

    def _events_committed(self) -> None:
        wake = self._db.hooks.events_committed
        if wake is not None:
            wake()

    async def route_chain(self, route_id: uuid.UUID) -> list[uuid.UUID]:
        async with self._db.read() as session:
            route = await session.get(DeliveryRoute, route_id)
            return [uuid.UUID(i) for i in route.connector_ids] if route is not None else []

    async def mark_connector_broken(self, connector: Connector, reason: str) -> None:
        await self._connectors.set_status(
            connector.workspace_id, connector.id, ConnectorStatus.BROKEN, reason, actor="delivery"
        )


@dataclass(frozen=True)
class _AcceptCall:
    sender: Sender
    requests: list[SendRequest]
    key: idempotency.IdempotencyKey | None
    answer: Any


@dataclass(frozen=True)
class _Finish:
    message: MessageView
    attempts: list[AttemptRecord]
    status: MessageStatus
    connector_id: uuid.UUID | None
    provider_message_id: str | None
    error_class: str | None
    error: str | None
    retry_in: float | None

    def outcome(self, now: datetime) -> Outcome:
        """What the message becomes (None keeps the current connector, provider id and
        timestamps)."""
        sent = self.status is MessageStatus.SENT
        return Outcome(
            message_id=self.message.id,
            status=self.status.value,
            connector_id=self.connector_id,
            provider_message_id=self.provider_message_id if sent else None,
            sent_at=now if sent else None,
            finished_at=now if self.status in FINAL_STATUSES else None,
            error=None if sent else self.error,
            error_class=None if sent else self.error_class,
        )

    @property
    def event_type(self) -> str:
        if self.status is MessageStatus.QUEUED:
            return "delivery.retrying"
        return f"delivery.{self.status.value}"

    def event_extra(self, updated: _MessageView) -> dict[str, Any]:
        extra: dict[str, Any] = {"attempt": updated.attempts}
        if self.status is MessageStatus.SENT:
            extra["provider_message_id"] = self.provider_message_id
        else:
            extra.update(error_class=self.error_class, error=self.error)
        if self.retry_in is not None:
            extra["retry_in_seconds"] = round(self.retry_in, 3)
        return extra


def _channel_of(connector: Connector | NamedConnector) -> Channel:
    connector_type = get_connector_type(connector.type)
    if connector_type is None:
        raise Problem(
            f"Connector {connector.name!r} has type {connector.type!r}, which is not installed.",
            code="connector_type_unknown",
        )
    return connector_type.channel


class _TargetCache:
    """Connectors and routes named by the requests of one accept, looked up once each."""

    def __init__(
        self, session: AsyncSession, workspace_id: uuid.UUID, connectors: Connectors
    ) -> None:
        self._session = session
        self._workspace_id = workspace_id
        self._shared = connectors
        self._connectors: dict[str, NamedConnector] = {}
        self._routes: dict[str, tuple[DeliveryRoute, list[Connector]]] = {}

    async def connector(self, ref: str) -> NamedConnector:
        found = self._connectors.get(ref) or self._shared.named_for_send(self._workspace_id, ref)
        if found is None:
            row = await self._session.scalar(by_ref(Connector, self._workspace_id, ref))
            if row is None:
                raise NotFound(
                    f"No connector {ref!r} in this workspace.", code="connector_not_found"
                )
            found = self._shared.remember_named(self._workspace_id, ref, row)
        if found.status == ConnectorStatus.DISABLED:
            raise Conflict(f"Connector {ref!r} is disabled.", code="connector_disabled")
        self._connectors[ref] = found
        return found

    async def route(self, ref: str) -> tuple[DeliveryRoute, list[Connector]]:
        found = self._routes.get(ref)
        if found is None:
            route = await self._session.scalar(by_ref(DeliveryRoute, self._workspace_id, ref))
            if route is None:
                raise NotFound(f"No route {ref!r} in this workspace.", code="route_not_found")
            ids = [uuid.UUID(i) for i in route.connector_ids]
            rows = {
                c.id: c
                for c in (
                    await self._session.scalars(
                        select(Connector).where(
                            Connector.id.in_(ids), Connector.deleted_at.is_(None)
                        )
                    )
                ).all()
            }
            chain = [rows[i] for i in ids if i in rows]
            if not chain:
                raise Conflict(f"Route {ref!r} has no connectors left.", code="route_empty")
            found = (route, chain)
            self._routes[ref] = found
        return found


__all__ = [
    "DELIVERY_JOB",
    "MAX_BATCH",
    "Accepted",
    "Deliveries",
    "MessageFilter",
    "RenderedTemplate",
    "SendRequest",
    "Sender",
    "TemplateRenderer",
    "channel_content",
    "content_parts",
]
