"""Secrets at rest: AES-256-GCM envelope encryption under a rotating keyring.

Three levels of keys:

- the **root key** (`TIDINGS_MASTER_KEY`, or the one generated into the data dir when embedded)
  never encrypts a record: it only wraps the keyring keys;
- the **keyring keys** (table `crypto_keys`, each wrapped by the root key, one of them primary)
  wrap data keys;
- a **data key** (32 random bytes, one per sealed value) encrypts the secret itself.

A sealed value is stored as three columns: the keyring key id, the data key wrapped by that
keyring key, and the ciphertext. Every AES-GCM blob is ``version (1 byte) || nonce (12 random
bytes) || ciphertext || tag (16 bytes)``; the version byte is authenticated too. Associated data
binds each blob to where it belongs, so a blob copied elsewhere does not open:

- a keyring key: ``tidings-keyring:<key id>``;
- a data key: ``tidings-data-key:<key id>:<record>`` (the record is e.g.
  ``connectors:credentials:<connector id>``, see `record_aad`);
- the secret: ``tidings-data:<record>``.

Rotation adds a keyring key and makes it primary in one transaction, then re-wraps every
record's data key with it, a batch per transaction (the ciphertext and the data key are not
touched, so readers and writers carry on). Older keys are then marked retired but kept: a
process that had not yet seen the rotation may still have sealed with one. See
docs/security.md.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (
    Boolean,
    LargeBinary,
    String,
    column,
    func,
    insert,
    select,
    table,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.expression import TableClause
from sqlalchemy.types import TypeEngine, Uuid

from tidings.db.base import UTCDateTime, utcnow
from tidings.db.database import Database, after_commit
from tidings.infra.logging import get_logger

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
FORMAT_V1 = b"\x01"
MASK = "••••"
# Values shorter than this are masked entirely; longer ones show their last 4 characters.
MASK_MIN_LENGTH = 12

_KEYRING_AAD = b"tidings-keyring:"
_DATA_KEY_AAD = b"tidings-data-key:"
_DATA_AAD = b"tidings-data:"
# pg_advisory_xact_lock id serialising keyring changes across processes (SQLite's writes are
# already serialised: BEGIN IMMEDIATE).
_PG_KEYRING_LOCK = 0x7469_6469_6E67_4B52  # "tidingKR"
_log = get_logger(__name__)

crypto_keys = table(
    "crypto_keys",
    column("id", String(40)),
    column("wrapped_key", LargeBinary()),
    column("is_primary", Boolean()),
    column("created_at", UTCDateTime()),
    column("retired_at", UTCDateTime()),
)


class SecretUnavailable(Exception):  # noqa: N818 - the name says what the caller faces
    """A sealed value cannot be opened (or sealed). The message never carries secret material."""


@dataclass(frozen=True, slots=True)
class SealedSecret:
    """What is stored for one secret: the three `<name>_key_id/_wrapped_key/_ciphertext` columns."""

    key_id: str
    wrapped_key: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)


def record_aad(table_name: str, column_name: str, record_id: object) -> str:
    """The identity a sealed value is bound to, e.g. ``connectors:credentials:<uuid>``."""
    return f"{table_name}:{column_name}:{record_id}"


def mask(value: str | None) -> str:
    """A secret for display: ``••••abcd`` (last 4 characters) or only ``••••`` when short."""
    if not value:
        return ""
    if len(value) < MASK_MIN_LENGTH:
        return MASK
    return MASK + value[-4:]


def _encrypt(aead: AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return FORMAT_V1 + nonce + aead.encrypt(nonce, plaintext, FORMAT_V1 + aad)


def _decrypt(aead: AESGCM, blob: bytes, aad: bytes) -> bytes:
    """Raises InvalidTag for anything that is not an intact blob made with this key and aad."""
    if len(blob) < 1 + NONCE_BYTES + TAG_BYTES or blob[:1] != FORMAT_V1:
        raise InvalidTag
    nonce = blob[1 : 1 + NONCE_BYTES]
    return aead.decrypt(nonce, blob[1 + NONCE_BYTES :], FORMAT_V1 + aad)


def _keyring_aad(key_id: str) -> bytes:
    return _KEYRING_AAD + key_id.encode()


def _data_key_aad(key_id: str, aad: str) -> bytes:
    return _DATA_KEY_AAD + key_id.encode() + b":" + aad.encode()


def _new_key_id() -> str:
    return f"k_{utcnow():%Y%m%d}_{secrets.token_hex(4)}"


def _root_aead(root_key: bytes) -> AESGCM:
    if len(root_key) != KEY_BYTES:
        raise ValueError("the root key must be 32 bytes")
    return AESGCM(root_key)


async def _lock_keyring(session: AsyncSession) -> None:
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_KEYRING_LOCK})


class Keyring:
    """Seals and opens secrets; caches the keyring keys unwrapped, per process.

    A key id it does not know makes it read `crypto_keys` again (that is how a process learns of
    a rotation made elsewhere); the primary is re-read at most every `refresh_seconds` before a
    seal. Call `ensure_primary()` once at start-up: `seal` creates the first keyring key itself
    if there is none, which takes a write transaction — on SQLite that would wait forever if the
    caller were itself inside `db.transaction()`.
    """

    def __init__(self, db: Database, root_key: bytes, *, refresh_seconds: float = 60.0) -> None:
        self.db = db
        self._root = _root_aead(root_key)
        self._refresh_seconds = refresh_seconds
        self._keys: dict[str, AESGCM] = {}
        self._unopenable: set[str] = set()
        self._primary: str | None = None
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()

    @property
    def primary_key_id(self) -> str | None:
        """The primary as this process last saw it (None before the first load)."""
        return self._primary

    # -- sealing ---------------------------------------------------------------------------

    async def seal(self, plaintext: bytes, *, aad: str) -> SealedSecret:
        """Encrypt under a fresh data key, wrapped by the primary keyring key."""
        key_id, keyring_key = await self._current_primary()
        data_key = AESGCM.generate_key(bit_length=256)
        ciphertext = _encrypt(AESGCM(data_key), plaintext, _DATA_AAD + aad.encode())
        wrapped = _encrypt(keyring_key, data_key, _data_key_aad(key_id, aad))
        return SealedSecret(key_id=key_id, wrapped_key=wrapped, ciphertext=ciphertext)

    async def open(self, sealed: SealedSecret, *, aad: str) -> bytes:
        """The plaintext; `SecretUnavailable` if the value was altered, moved or its key is gone."""
        data_key = await self._unwrap_data_key(sealed, aad)
        try:
            return _decrypt(AESGCM(data_key), sealed.ciphertext, _DATA_AAD + aad.encode())
        except InvalidTag:
            _log.warning("secret_unavailable", key_id=sealed.key_id, record=aad, reason="data")
            raise SecretUnavailable(f"cannot open the sealed value of {aad}") from None

    async def rewrap(self, sealed: SealedSecret, *, aad: str) -> SealedSecret:
        """The same data key and ciphertext, the data key wrapped by the primary keyring key."""
        key_id, keyring_key = await self._current_primary()
        if sealed.key_id == key_id:
            return sealed
        data_key = await self._unwrap_data_key(sealed, aad)
        wrapped = _encrypt(keyring_key, data_key, _data_key_aad(key_id, aad))
        return SealedSecret(key_id=key_id, wrapped_key=wrapped, ciphertext=sealed.ciphertext)

    async def _unwrap_data_key(self, sealed: SealedSecret, aad: str) -> bytes:
        keyring_key = await self._key(sealed.key_id, record=aad)
        try:
            data_key = _decrypt(keyring_key, sealed.wrapped_key, _data_key_aad(sealed.key_id, aad))
        except InvalidTag:
            data_key = b""
        if len(data_key) != KEY_BYTES:
            _log.warning("secret_unavailable", key_id=sealed.key_id, record=aad, reason="data_key")
            raise SecretUnavailable(f"cannot open the sealed value of {aad}")
        return data_key

    # -- keys ------------------------------------------------------------------------------

    async def ensure_primary(self) -> str:
        """Load the keyring, creating its first key if there is none (safe across processes).

        Raises `SecretUnavailable` if the root key does not open the primary keyring key (a
        wrong `TIDINGS_MASTER_KEY`).
        """
        await self.reload()
        if self._primary is None:
            async with self.db.transaction() as session:
                await _lock_keyring(session)
                existing = await session.scalar(
                    select(crypto_keys.c.id).where(crypto_keys.c.is_primary.is_(True)).limit(1)
                )
                if existing is None:
                    await self.rotate(session)
            await self.reload()
        if self._primary is None:  # pragma: no cover - only if the row vanished meanwhile
            raise SecretUnavailable("the keyring has no primary key")
        if self._primary in self._unopenable:
            raise SecretUnavailable(
                f"the root key does not open keyring key {self._primary} "
                "(is TIDINGS_MASTER_KEY the one the keyring was made with?)"
            )
        return self._primary

    async def rotate(self, session: AsyncSession) -> str:
        """Add a keyring key and make it primary, in the caller's transaction; returns its id.

        Refuses (SecretUnavailable) if the root key does not open every existing keyring key:
        rotating under a wrong root key would strand every record.
        """
        await _lock_keyring(session)
        rows = (await session.execute(select(crypto_keys.c.id, crypto_keys.c.wrapped_key))).all()
        for key_id, wrapped in rows:
            try:
                _decrypt(self._root, wrapped, _keyring_aad(key_id))
            except InvalidTag:
                raise SecretUnavailable(
                    f"the root key does not open keyring key {key_id}; not rotating "
                    "(is TIDINGS_MASTER_KEY the one the keyring was made with?)"
                ) from None
        key_id = _new_key_id()
        raw = AESGCM.generate_key(bit_length=256)
        await session.execute(
            update(crypto_keys).where(crypto_keys.c.is_primary.is_(True)).values(is_primary=False)
        )
        await session.execute(
            insert(crypto_keys).values(
                id=key_id,
                wrapped_key=_encrypt(self._root, raw, _keyring_aad(key_id)),
                is_primary=True,
                created_at=utcnow(),
                retired_at=None,
            )
        )
        aead = AESGCM(raw)

        def installed() -> None:
            self._keys[key_id] = aead
            self._primary = key_id
            _log.info("keyring_key_added", key_id=key_id)

        after_commit(session, installed)
        return key_id

    async def reload(self) -> None:
        """Read `crypto_keys` again: new keys, and which one is primary now."""
        async with self._lock:
            await self._reload_locked()

    async def _reload_locked(self) -> None:
        async with self.db.read() as session:
            rows = (
                await session.execute(
                    select(
                        crypto_keys.c.id,
                        crypto_keys.c.wrapped_key,
                        crypto_keys.c.is_primary,
                        crypto_keys.c.created_at,
                    ).order_by(crypto_keys.c.created_at)
                )
            ).all()
        primary: str | None = None
        for key_id, wrapped, is_primary, _created in rows:
            if key_id not in self._keys and key_id not in self._unopenable:
                try:
                    raw = _decrypt(self._root, wrapped, _keyring_aad(key_id))
                except InvalidTag:
                    self._unopenable.add(key_id)
                    _log.error("keyring_key_unopenable", key_id=key_id)
                else:
                    self._keys[key_id] = AESGCM(raw)
            if is_primary:
                primary = key_id  # the newest, should there ever be two
        self._primary = primary
        self._loaded_at = time.monotonic()

    async def _current_primary(self) -> tuple[str, AESGCM]:
        if self._is_stale():
            async with self._lock:
                if self._is_stale():
                    await self._reload_locked()
        if self._primary is None:
            await self.ensure_primary()
        key_id = self._primary
        assert key_id is not None  # noqa: S101 - ensure_primary guarantees it
        keyring_key = self._keys.get(key_id)
        if keyring_key is None:
            raise SecretUnavailable(
                f"the root key does not open keyring key {key_id}; cannot seal "
                "(is TIDINGS_MASTER_KEY the one the keyring was made with?)"
            )
        return key_id, keyring_key

    def _is_stale(self) -> bool:
        return (
            self._loaded_at is None
            or self._primary is None
            or time.monotonic() - self._loaded_at > self._refresh_seconds
        )

    async def _key(self, key_id: str, *, record: str) -> AESGCM:
        keyring_key = self._keys.get(key_id)
        if keyring_key is None:
            async with self._lock:
                if key_id not in self._keys and key_id not in self._unopenable:
                    await self._reload_locked()
            keyring_key = self._keys.get(key_id)
        if keyring_key is None:
            reason = "unopenable_key" if key_id in self._unopenable else "unknown_key"
            _log.warning("secret_unavailable", key_id=key_id, record=record, reason=reason)
            raise SecretUnavailable(f"cannot open the sealed value of {record}: {reason} {key_id}")
        return keyring_key


# -- where sealed values live, for rotation ------------------------------------------------


@dataclass(frozen=True)
class SealedColumn:
    """A sealed value stored as `<column>_key_id`, `<column>_wrapped_key`, `<column>_ciphertext`."""

    table_name: str
    column_name: str
    id_column: str = "id"
    id_type: TypeEngine[Any] = field(default_factory=Uuid)

    def aad(self, record_id: object) -> str:
        return record_aad(self.table_name, self.column_name, record_id)

    @property
    def table(self) -> TableClause:
        prefix = self.column_name
        return table(
            self.table_name,
            column(self.id_column, self.id_type),
            column(f"{prefix}_key_id", String(40)),
            column(f"{prefix}_wrapped_key", LargeBinary()),
            column(f"{prefix}_ciphertext", LargeBinary()),
        )


CONNECTOR_CREDENTIALS = SealedColumn("connectors", "credentials")
# Every place a sealed value is stored: rotation re-wraps them all. Add new ones here.
SEALED_COLUMNS: list[SealedColumn] = [CONNECTOR_CREDENTIALS]


def register_sealed_column(sealed_column: SealedColumn) -> None:
    known = {(c.table_name, c.column_name) for c in SEALED_COLUMNS}
    if (sealed_column.table_name, sealed_column.column_name) not in known:
        SEALED_COLUMNS.append(sealed_column)


@dataclass
class RewrapReport:
    primary: str
    rewrapped: int = 0
    # Changed by someone else between our read and our write (already sealed afresh): left alone.
    changed_meanwhile: int = 0
    # Records that could not be opened (tampered, or their keyring key is gone): their identities.
    failed: list[str] = field(default_factory=list)
    # Records still on a non-primary key at the end (sealed by a process that had not yet seen
    # the rotation); a later `rewrap` moves them.
    remaining: int = 0
    retired: list[str] = field(default_factory=list)
    elapsed_ms: float = 0.0


@dataclass
class RotationReport:
    new_key_id: str
    rewrap: RewrapReport
    elapsed_ms: float


@dataclass
class KeyInfo:
    id: str
    is_primary: bool
    created_at: datetime
    retired_at: datetime | None
    records: int


async def rotate_keys(
    keyring: Keyring, *, batch_size: int = 200, columns: Sequence[SealedColumn] | None = None
) -> RotationReport:
    """Add a primary keyring key, re-wrap every record to it, retire the older keys."""
    started = time.perf_counter()
    async with keyring.db.transaction() as session:
        new_key_id = await keyring.rotate(session)
    report = await rewrap_all(keyring, batch_size=batch_size, columns=columns)
    elapsed = (time.perf_counter() - started) * 1000
    _log.info(
        "keyring_rotated",
        key_id=new_key_id,
        rewrapped=report.rewrapped,
        failed=len(report.failed),
        remaining=report.remaining,
        elapsed_ms=round(elapsed, 1),
    )
    return RotationReport(new_key_id=new_key_id, rewrap=report, elapsed_ms=elapsed)


async def rewrap_all(
    keyring: Keyring,
    *,
    batch_size: int = 200,
    columns: Sequence[SealedColumn] | None = None,
    max_passes: int = 3,
) -> RewrapReport:
    """Move every record's data key to the primary keyring key; idempotent, resumable.

    Each batch is read, re-wrapped in memory, then written in its own short transaction with a
    compare-and-set (a record whose credentials were replaced meanwhile is left as it is). When
    a complete pass leaves nothing behind but unopenable records, the older keys are retired.
    """
    started = time.perf_counter()
    primary = await keyring.ensure_primary()
    report = RewrapReport(primary=primary)
    targets = list(SEALED_COLUMNS if columns is None else columns)
    for _ in range(max_passes):
        for sealed_column in targets:
            await _rewrap_column(keyring, sealed_column, batch_size, report)
        report.remaining = await _count_not_on(keyring.db, targets, keyring.primary_key_id)
        if report.remaining <= len(report.failed):  # nothing left but what cannot be opened
            break
    if report.remaining <= len(report.failed):
        report.retired = await _retire_older_keys(keyring.db)
    report.primary = keyring.primary_key_id or primary
    report.elapsed_ms = (time.perf_counter() - started) * 1000
    return report


async def _rewrap_column(
    keyring: Keyring, sealed_column: SealedColumn, batch_size: int, report: RewrapReport
) -> None:
    t = sealed_column.table
    record_id = t.c[sealed_column.id_column]
    key_id = t.c[f"{sealed_column.column_name}_key_id"]
    wrapped_key = t.c[f"{sealed_column.column_name}_wrapped_key"]
    ciphertext = t.c[f"{sealed_column.column_name}_ciphertext"]
    after: object | None = None
    while True:
        primary = keyring.primary_key_id
        query = (
            select(record_id, key_id, wrapped_key, ciphertext)
            .where(key_id.is_not(None), key_id != primary)
            .order_by(record_id)
            .limit(batch_size)
        )
        if after is not None:
            query = query.where(record_id > after)
        async with keyring.db.read() as session:
            rows = (await session.execute(query)).all()
        if not rows:
            return
        after = rows[-1][0]
        updates: list[tuple[object, SealedSecret, SealedSecret]] = []
        for row_id, row_key_id, row_wrapped, row_ciphertext in rows:
            old = SealedSecret(row_key_id, row_wrapped, row_ciphertext)
            aad = sealed_column.aad(row_id)
            try:
                updates.append((row_id, old, await keyring.rewrap(old, aad=aad)))
            except SecretUnavailable:
                if aad not in report.failed:
                    report.failed.append(aad)
        if not updates:
            continue
        async with keyring.db.transaction() as session:
            for row_id, old, new in updates:
                result = await session.execute(
                    update(t)
                    .where(
                        record_id == row_id,
                        key_id == old.key_id,
                        wrapped_key == old.wrapped_key,
                        ciphertext == old.ciphertext,
                    )
                    .values({key_id: new.key_id, wrapped_key: new.wrapped_key})
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    report.rewrapped += 1
                else:
                    report.changed_meanwhile += 1


async def _count_not_on(db: Database, columns: Iterable[SealedColumn], primary: str | None) -> int:
    total = 0
    async with db.read() as session:
        for sealed_column in columns:
            key_id = sealed_column.table.c[f"{sealed_column.column_name}_key_id"]
            total += (
                await session.scalar(
                    select(func.count()).where(key_id.is_not(None), key_id != primary)
                )
            ) or 0
    return total


async def _retire_older_keys(db: Database) -> list[str]:
    async with db.transaction() as session:
        await _lock_keyring(session)
        ids = list(
            (
                await session.scalars(
                    select(crypto_keys.c.id).where(
                        crypto_keys.c.is_primary.is_(False), crypto_keys.c.retired_at.is_(None)
                    )
                )
            ).all()
        )
        if ids:
            await session.execute(
                update(crypto_keys).where(crypto_keys.c.id.in_(ids)).values(retired_at=utcnow())
            )
    if ids:
        _log.info("keyring_keys_retired", key_ids=ids)
    return ids


async def list_keys(db: Database, columns: Sequence[SealedColumn] | None = None) -> list[KeyInfo]:
    """Every keyring key, oldest first, with how many records its wraps."""
    counts: dict[str, int] = {}
    async with db.read() as session:
        rows = (
            await session.execute(
                select(
                    crypto_keys.c.id,
                    crypto_keys.c.is_primary,
                    crypto_keys.c.created_at,
                    crypto_keys.c.retired_at,
                ).order_by(crypto_keys.c.created_at, crypto_keys.c.id)
            )
        ).all()
        for sealed_column in SEALED_COLUMNS if columns is None else columns:
            key_id = sealed_column.table.c[f"{sealed_column.column_name}_key_id"]
            for used_key, count in (
                await session.execute(
                    select(key_id, func.count()).where(key_id.is_not(None)).group_by(key_id)
                )
            ).all():
                counts[used_key] = counts.get(used_key, 0) + count
    return [
        KeyInfo(
            id=key_id,
            is_primary=bool(is_primary),
            created_at=created_at,
            retired_at=retired_at,
            records=counts.get(key_id, 0),
        )
        for key_id, is_primary, created_at, retired_at in rows
    ]


async def change_root_key(db: Database, old_root: bytes, new_root: bytes) -> int:
    """Re-wrap every keyring key from `old_root` to `new_root`, in one transaction.

    Keys already wrapped by `new_root` are left alone, so re-running after a crash is safe.
    Returns how many keys were re-wrapped. Records are not touched.
    """
    old, new = _root_aead(old_root), _root_aead(new_root)
    changed = 0
    async with db.transaction() as session:
        await _lock_keyring(session)
        rows = (await session.execute(select(crypto_keys.c.id, crypto_keys.c.wrapped_key))).all()
        for key_id, wrapped in rows:
            aad = _keyring_aad(key_id)
            try:
                _decrypt(new, wrapped, aad)
                continue  # already under the new root
            except InvalidTag:
                pass
            try:
                raw = _decrypt(old, wrapped, aad)
            except InvalidTag:
                raise SecretUnavailable(
                    f"neither the old nor the new root key opens keyring key {key_id}; "
                    "nothing was changed"
                ) from None
            await session.execute(
                update(crypto_keys)
                .where(crypto_keys.c.id == key_id)
                .values(wrapped_key=_encrypt(new, raw, aad))
            )
            changed += 1
    _log.info("keyring_root_key_changed", keys=changed)
    return changed
