"""Connectors and routes of a workspace: configure, seal credentials, test, build instances.

Credentials are validated by the connector type's model, sealed with the keyring (the record's
identity bound as associated data) and never leave this module in clear: API answers carry
only masked values. Instances are cached per connector version, so a delivery does not open
the sealed credentials again for every message.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, SecretStr, ValidationError
from sqlalchemy import Select, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.db.base import new_id, utcnow
from tidings.db.database import Database
from tidings.delivery.connectors.base import (
    ConnectorContext,
    ConnectorCredentials,
    ConnectorSettings,
    ConnectorType,
    TestResult,
)
from tidings.delivery.connectors.registry import connector_types, get_connector_type
from tidings.delivery.models import Connector, DeliveryRoute
from tidings.events.service import emit
from tidings.http.problems import Conflict, NotFound, Problem
from tidings.infra.crypto import CONNECTOR_CREDENTIALS, Keyring, SealedSecret, mask
from tidings.infra.logging import get_logger

_log = get_logger(__name__)
MAX_ROUTE_LENGTH = 10
ROW_CACHE_SECONDS = 1.0
_MAX_NAMED = 10_000


class ConnectorStatus:
    ACTIVE = "active"
    BROKEN = "broken"
    DISABLED = "disabled"


def credentials_aad(connector_id: uuid.UUID) -> str:
    return CONNECTOR_CREDENTIALS.aad(connector_id)


_Named = TypeVar("_Named", Connector, DeliveryRoute)


def by_ref(model: type[_Named], workspace_id: uuid.UUID, ref: str) -> Select[_Named]:
    """The row of `model` that `ref` names in the workspace: `ref` is its id (a UUID) or its
    name. A deleted connector is not found (routes are deleted for good)."""
    query = select(model).where(model.workspace_id == workspace_id)
    if model is Connector:
        query = query.where(Connector.deleted_at.is_(None))
    try:
        return query.where(model.id == uuid.UUID(ref))
    except ValueError:
        return query.where(model.name == ref)


@dataclass(frozen=True, slots=True)
class NamedConnector:
    """What a send needs of the connector it names. A copy, not the ORM row: a row outlives
    neither its session's rollback (it is expired) nor a change made elsewhere."""

    id: uuid.UUID
    name: str
    type: str
    status: str


@dataclass(frozen=True)
class ConnectorView:
    """A connector as the API shows it: settings in full, credentials masked."""

    row: Connector
    masked_credentials: dict[str, str | None]


def _validation_problem(prefix: str, exc: ValidationError) -> Problem:
    errors = [
        {
            "field": ".".join([prefix, *(str(part) for part in error["loc"])]),
            "message": error["msg"],
            "type": error["type"],
        }
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    return Problem(
        "The request is not valid; see `errors`.", code="validation_failed", errors=errors
    )


def _mask_credentials(credentials: BaseModel) -> dict[str, str | None]:
    masked: dict[str, str | None] = {}
    for name in type(credentials).model_fields:
        value = getattr(credentials, name)
        if value is None:
            masked[name] = None
        elif isinstance(value, SecretStr):
            masked[name] = mask(value.get_secret_value())
        else:
            masked[name] = mask(str(value))
    return masked


def _credentials_json(credentials: BaseModel) -> bytes:
    plain = {
        name: (value.get_secret_value() if isinstance(value, SecretStr) else value)
        for name, value in ((n, getattr(credentials, n)) for n in type(credentials).model_fields)
    }
    return orjson.dumps(plain)


class Connectors:
    def __init__(self, db: Database, keyring: Keyring, context: ConnectorContext) -> None:
        self._db = db
        self._keyring = keyring
        self._context = context
        # (connector id, updated_at) -> instance; an update changes updated_at, so a stale
        # instance is never used, and old entries are dropped on the next build.
        self._instances: dict[uuid.UUID, tuple[datetime, ConnectorType]] = {}
        self._rows: dict[uuid.UUID, tuple[float, Connector | None]] = {}
        # The read of a row in flight, shared by every delivery that needs it meanwhile: when
        # the cached row expires under load, one read replaces it, not one per delivery.
        self._row_reads: dict[uuid.UUID, asyncio.Future[Connector | None]] = {}
        # (workspace, id or name) -> the live connector a send named, for ROW_CACHE_SECONDS:
        # an accept would otherwise read it in every transaction.
        self._by_ref: dict[tuple[uuid.UUID, str], tuple[float, NamedConnector]] = {}

    @property
    def context(self) -> ConnectorContext:
        return self._context

    # -- configuring ------------------------------------------------------------------------

    @staticmethod
    def _type_of(type_name: str) -> type[ConnectorType]:
        connector_type = get_connector_type(type_name)
        if connector_type is None:
            raise Problem(
                f"Unknown connector type {type_name!r}.",
                code="connector_type_unknown",
                known=sorted(connector_types()),
            )
        return connector_type

    @staticmethod
    def _parse_settings(
        connector_type: type[ConnectorType], settings: Mapping[str, Any]
    ) -> ConnectorSettings:
        try:
            return connector_type.Settings.model_validate(dict(settings))
        except ValidationError as exc:
            raise _validation_problem("settings", exc) from None

    @staticmethod
    def _parse_credentials(
        connector_type: type[ConnectorType], credentials: Mapping[str, Any]
    ) -> ConnectorCredentials:
        try:
            return connector_type.Credentials.model_validate(dict(credentials))
        except ValidationError as exc:
            raise _validation_problem("credentials", exc) from None

    async def _seal(
        self, connector_id: uuid.UUID, credentials: ConnectorCredentials
    ) -> SealedSecret:
        return await self._keyring.seal(
            _credentials_json(credentials), aad=credentials_aad(connector_id)
        )

    async def create(
        self,
        workspace_id: uuid.UUID,
        *,
        type_name: str,
        name: str,
        settings: Mapping[str, Any],
        credentials: Mapping[str, Any],
        max_concurrency: int | None,
        rate_per_second: float | None,
        actor: str,
    ) -> ConnectorView:
        connector_type = self._type_of(type_name)
        parsed_settings = self._parse_settings(connector_type, settings)
        parsed_credentials = self._parse_credentials(connector_type, credentials)
        connector_id = new_id()
        sealed = await self._seal(connector_id, parsed_credentials)
        now = utcnow()
        row = Connector(
            id=connector_id,
            workspace_id=workspace_id,
            type=type_name,
            name=name,
            settings=parsed_settings.model_dump(mode="json"),
            credentials_key_id=sealed.key_id,
            credentials_wrapped_key=sealed.wrapped_key,
            credentials_ciphertext=sealed.ciphertext,
            credentials_masked=_mask_credentials(parsed_credentials),
            status=ConnectorStatus.ACTIVE,
            max_concurrency=max_concurrency,
            rate_per_second=rate_per_second,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self._db.transaction() as session:
                session.add(row)
                await session.flush()
                await self._emit(session, row, "connector.created", actor)
        except IntegrityError:
            raise Conflict(
                f"A connector named {name!r} exists in this workspace.",
                code="connector_name_taken",
            ) from None
        return ConnectorView(row, await self._masked_of(row))

    async def update(
        self,
        workspace_id: uuid.UUID,
        connector_ref: str,
        *,
        name: str | None,
        settings: Mapping[str, Any] | None,
        credentials: Mapping[str, Any] | None,
        max_concurrency: int | None,
        rate_per_second: float | None,
        fields_set: set[str],
        actor: str,
    ) -> ConnectorView:
        try:
            async with self._db.transaction() as session:
                row = await self._get_row(session, workspace_id, connector_ref, lock=True)
                connector_type = self._type_of(row.type)
                if name is not None:
                    row.name = name
                if settings is not None:
                    merged = {**row.settings, **settings}
                    row.settings = self._parse_settings(connector_type, merged).model_dump(
                        mode="json"
                    )
                if credentials is not None:
                    parsed = self._parse_credentials(connector_type, credentials)
                    sealed = await self._seal(row.id, parsed)
                    row.credentials_key_id = sealed.key_id
                    row.credentials_wrapped_key = sealed.wrapped_key
                    row.credentials_ciphertext = sealed.ciphertext
                    row.credentials_masked = _mask_credentials(parsed)
                    # New credentials may be what a broken connector needed.
                    if row.status == ConnectorStatus.BROKEN:
                        row.status, row.status_reason = ConnectorStatus.ACTIVE, None
                if "max_concurrency" in fields_set:
                    row.max_concurrency = max_concurrency
                if "rate_per_second" in fields_set:
                    row.rate_per_second = rate_per_second
                row.updated_at = utcnow()
                await session.flush()
                await self._emit(session, row, "connector.updated", actor)
        except IntegrityError:
            raise Conflict(
                f"A connector named {name!r} exists in this workspace.",
                code="connector_name_taken",
            ) from None
        self._forget(row.id)
        return ConnectorView(row, await self._masked_of(row))

    async def set_status(
        self,
        workspace_id: uuid.UUID,
        connector_id: uuid.UUID,
        status: str,
        reason: str | None,
        *,
        actor: str,
    ) -> bool:
        """Move a connector to `status`; False when it was already there."""
        async with self._db.transaction() as session:
            result = await session.execute(
                update(Connector)
                .where(
                    Connector.id == connector_id,
                    Connector.workspace_id == workspace_id,
                    Connector.status != status,
                )
                .values(status=status, status_reason=reason, updated_at=utcnow())
                .returning(Connector.name, Connector.type)
            )
            changed = result.one_or_none()
            if changed is None:
                return False
            await emit(
                session,
                f"connector.{status}",
                stream_key=f"connector:{connector_id}",
                workspace_id=workspace_id,
                payload={
                    "connector_id": str(connector_id),
                    "name": changed.name,
                    "type": changed.type,
                    "reason": reason,
                    "actor": actor,
                },
            )
        self._forget(connector_id)
        if status == ConnectorStatus.BROKEN:
            _log.warning("connector_broken", connector_id=str(connector_id), reason=reason)
        return True

    async def delete(self, workspace_id: uuid.UUID, connector_ref: str, *, actor: str) -> None:
        async with self._db.transaction() as session:
            row = await self._get_row(session, workspace_id, connector_ref, lock=True)
            now = utcnow()
            row.deleted_at = now
            # Frees the name for a new connector; the old row stays for the delivery log.
            row.name = f"{row.name[:40]}~deleted~{row.id.hex[:8]}"
            row.status = ConnectorStatus.DISABLED
            row.updated_at = now
            await self._emit(session, row, "connector.deleted", actor)
        self._forget(row.id)

    def _forget(self, connector_id: uuid.UUID) -> None:
        self._instances.pop(connector_id, None)
        self._rows.pop(connector_id, None)
        for key in [key for key, (_, row) in self._by_ref.items() if row.id == connector_id]:
            del self._by_ref[key]
        # A read that started before this change may return the old row: let it finish for
        # its waiters, but not be the one later callers join or the one the cache keeps.
        self._row_reads.pop(connector_id, None)

    async def _emit(self, session: AsyncSession, row: Connector, type_: str, actor: str) -> None:
        await emit(
            session,
            type_,
            stream_key=f"connector:{row.id}",
            workspace_id=row.workspace_id,
            payload={
                "connector_id": str(row.id),
                "name": row.name,
                "type": row.type,
                "status": row.status,
                "actor": actor,
            },
        )

    # -- reading ----------------------------------------------------------------------------

    async def _get_row(
        self,
        session: AsyncSession,
        workspace_id: uuid.UUID,
        connector_ref: str,
        *,
        lock: bool = False,
    ) -> Connector:
        query = by_ref(Connector, workspace_id, connector_ref)
        if lock:
            query = query.with_for_update()
        row = await session.scalar(query)
        if row is None:
            raise NotFound("No such connector in this workspace.", code="connector_not_found")
        return row

    async def get(self, workspace_id: uuid.UUID, connector_ref: str) -> ConnectorView:
        async with self._db.read() as session:
            row = await self._get_row(session, workspace_id, connector_ref)
        return ConnectorView(row, await self._masked_of(row))

    async def list_connectors(self, workspace_id: uuid.UUID) -> list[ConnectorView]:
        async with self._db.read() as session:
            rows = (
                await session.scalars(
                    select(Connector)
                    .where(Connector.workspace_id == workspace_id, Connector.deleted_at.is_(None))
                    .order_by(Connector.name)
                )
            ).all()
        return [ConnectorView(row, await self._masked_of(row)) for row in rows]

    async def resolve_ids(
        self, session: AsyncSession, workspace_id: uuid.UUID, refs: Sequence[str]
    ) -> list[Connector]:
        """The connectors `refs` (ids or names) name in this workspace, in order."""
        return [await self._get_row(session, workspace_id, ref) for ref in refs]

    async def _masked_of(self, row: Connector) -> dict[str, str | None]:
        """The masked credentials; opened and masked only for a row written before masks were
        stored (revision 0006)."""
        if row.credentials_masked is not None:
            return row.credentials_masked
        return _mask_credentials(await self._credentials_of(row))

    async def _credentials_of(self, row: Connector) -> ConnectorCredentials:
        connector_type = self._type_of(row.type)
        if row.credentials_ciphertext is None or row.credentials_key_id is None:
            return connector_type.Credentials()
        assert row.credentials_wrapped_key is not None  # noqa: S101 - sealed together
        plain = await self._keyring.open(
            SealedSecret(
                row.credentials_key_id, row.credentials_wrapped_key, row.credentials_ciphertext
            ),
            aad=credentials_aad(row.id),
        )
        return connector_type.Credentials.model_validate(orjson.loads(plain))

    # -- using ------------------------------------------------------------------------------

    async def instance(self, row: Connector) -> ConnectorType:
        cached = self._instances.get(row.id)
        if cached is not None and cached[0] == row.updated_at:
            return cached[1]
        connector_type = self._type_of(row.type)
        settings = connector_type.Settings.model_validate(row.settings)
        built = connector_type(settings, await self._credentials_of(row), self._context)
        self._instances[row.id] = (row.updated_at, built)
        return built

    async def test(self, workspace_id: uuid.UUID, connector_ref: str, *, actor: str) -> TestResult:
        async with self._db.read() as session:
            row = await self._get_row(session, workspace_id, connector_ref)
        connector = await self.instance(row)
        result = await connector.test()
        if result.ok and row.status == ConnectorStatus.BROKEN:
            await self.set_status(
                workspace_id,
                row.id,
                ConnectorStatus.ACTIVE,
                "test connection succeeded",
                actor=actor,
            )
        return result

    def named_for_send(self, workspace_id: uuid.UUID, ref: str) -> NamedConnector | None:
        """The connector a send named, as read less than ROW_CACHE_SECONDS ago (changes made
        in this process are seen at once; in another one, within that time)."""
        entry = self._by_ref.get((workspace_id, ref))
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    def remember_named(self, workspace_id: uuid.UUID, ref: str, row: Connector) -> NamedConnector:
        named = NamedConnector(row.id, row.name, row.type, row.status)
        if len(self._by_ref) >= _MAX_NAMED:  # many workspaces: start over rather than grow
            self._by_ref.clear()
        self._by_ref[(workspace_id, ref)] = (time.monotonic() + ROW_CACHE_SECONDS, named)
        return named

    async def load_for_delivery(self, connector_id: uuid.UUID) -> Connector | None:
        """The connector row, read at most once a second per process (a busy worker would
        otherwise read it for every message); changes made here are seen at once."""
        cached = self._rows.get(connector_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        read = self._row_reads.get(connector_id)
        if read is None:
            read = asyncio.ensure_future(self._read_row(connector_id))
            self._row_reads[connector_id] = read
        # shield: one waiter cancelled (its job's timeout) must not cancel the others' read.
        return await asyncio.shield(read)

    async def _read_row(self, connector_id: uuid.UUID) -> Connector | None:
        me = asyncio.current_task()
        try:
            async with self._db.read() as session:
                row: Connector | None = await session.get(Connector, connector_id)
            if self._row_reads.get(connector_id) is me:  # not forgotten meanwhile
                self._rows[connector_id] = (time.monotonic() + ROW_CACHE_SECONDS, row)
            return row
        finally:
            if self._row_reads.get(connector_id) is me:
                del self._row_reads[connector_id]

    # -- routes -----------------------------------------------------------------------------

    async def create_route(
        self, workspace_id: uuid.UUID, name: str, connector_refs: Sequence[str], *, actor: str
    ) -> tuple[DeliveryRoute, list[Connector]]:
        self._check_chain(connector_refs)
        try:
            async with self._db.transaction() as session:
                chain = await self.resolve_ids(session, workspace_id, connector_refs)
                now = utcnow()
                route = DeliveryRoute(
                    id=new_id(),
                    workspace_id=workspace_id,
                    name=name,
                    connector_ids=[str(c.id) for c in chain],
                    created_at=now,
                    updated_at=now,
                )
                session.add(route)
                await session.flush()
                await self._emit_route(session, route, "route.created", actor)
        except IntegrityError:
            raise Conflict(
                f"A route named {name!r} exists in this workspace.", code="route_name_taken"
            ) from None
        return route, chain

    async def update_route(
        self,
        workspace_id: uuid.UUID,
        route_ref: str,
        *,
        name: str | None,
        connector_refs: Sequence[str] | None,
        actor: str,
    ) -> tuple[DeliveryRoute, list[Connector]]:
        try:
            async with self._db.transaction() as session:
                route = await self._get_route(session, workspace_id, route_ref, lock=True)
                if name is not None:
                    route.name = name
                if connector_refs is not None:
                    self._check_chain(connector_refs)
                    chain = await self.resolve_ids(session, workspace_id, connector_refs)
                    route.connector_ids = [str(c.id) for c in chain]
                route.updated_at = utcnow()
                await session.flush()
                chain = await self._chain_rows(session, route)
                await self._emit_route(session, route, "route.updated", actor)
        except IntegrityError:
            raise Conflict(
                f"A route named {name!r} exists in this workspace.", code="route_name_taken"
            ) from None
        return route, chain

    async def delete_route(self, workspace_id: uuid.UUID, route_ref: str, *, actor: str) -> None:
        async with self._db.transaction() as session:
            route = await self._get_route(session, workspace_id, route_ref, lock=True)
            await self._emit_route(session, route, "route.deleted", actor)
            await session.delete(route)

    async def get_route(
        self, workspace_id: uuid.UUID, route_ref: str
    ) -> tuple[DeliveryRoute, list[Connector]]:
        async with self._db.read() as session:
            route = await self._get_route(session, workspace_id, route_ref)
            return route, await self._chain_rows(session, route)

    async def list_routes(
        self, workspace_id: uuid.UUID
    ) -> list[tuple[DeliveryRoute, list[Connector]]]:
        async with self._db.read() as session:
            routes = (
                await session.scalars(
                    select(DeliveryRoute)
                    .where(DeliveryRoute.workspace_id == workspace_id)
                    .order_by(DeliveryRoute.name)
                )
            ).all()
            return [(route, await self._chain_rows(session, route)) for route in routes]

    async def _get_route(
        self, session: AsyncSession, workspace_id: uuid.UUID, route_ref: str, *, lock: bool = False
    ) -> DeliveryRoute:
        query = by_ref(DeliveryRoute, workspace_id, route_ref)
        if lock:
            query = query.with_for_update()
        route = await session.scalar(query)
        if route is None:
            raise NotFound("No such route in this workspace.", code="route_not_found")
        return route

    @staticmethod
    async def _chain_rows(session: AsyncSession, route: DeliveryRoute) -> list[Connector]:
        ids = [uuid.UUID(i) for i in route.connector_ids]
        rows = {
            row.id: row
            for row in (await session.scalars(select(Connector).where(Connector.id.in_(ids)))).all()
        }
        return [rows[i] for i in ids if i in rows and rows[i].deleted_at is None]

    @staticmethod
    def _check_chain(connector_refs: Sequence[str]) -> None:
        if not connector_refs or len(connector_refs) > MAX_ROUTE_LENGTH:
            raise Problem(
                f"A route lists 1 to {MAX_ROUTE_LENGTH} connectors.", code="route_invalid"
            )
        if len(set(connector_refs)) != len(connector_refs):
            raise Problem("A route lists each connector once.", code="route_invalid")

    async def _emit_route(
        self, session: AsyncSession, route: DeliveryRoute, type_: str, actor: str
    ) -> None:
        await emit(
            session,
            type_,
            stream_key=f"route:{route.id}",
            workspace_id=route.workspace_id,
            payload={
                "route_id": str(route.id),
                "name": route.name,
                "connector_ids": route.connector_ids,
                "actor": actor,
            },
        )
