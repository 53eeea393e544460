"""Envelope encryption and the rotating keyring (tidings.infra.crypto), on both profiles."""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update
from typer.testing import CliRunner

from tidings.cli import app as cli_app
from tidings.db.database import Database
from tidings.delivery.models import Connector, CryptoKey
from tidings.identity.models import Workspace
from tidings.infra import crypto
from tidings.infra.crypto import (
    CONNECTOR_CREDENTIALS,
    NONCE_BYTES,
    Keyring,
    SealedSecret,
    SecretUnavailable,
    change_root_key,
    list_keys,
    mask,
    rewrap_all,
    rotate_keys,
)
from tidings.infra.logging import configure_logging
from tidings.settings import Settings, decode_master_key

SECRET = b'{"api_key": "sk_live_0123456789abcdefSECRET"}'


@pytest.fixture
def root_key(settings: Settings) -> bytes:
    assert settings.master_key is not None
    return decode_master_key(settings.master_key)


@pytest.fixture
async def keyring(db: Database, root_key: bytes) -> Keyring:
    ring = Keyring(db, root_key)
    await ring.ensure_primary()
    return ring


@pytest.fixture
async def workspace_id(db: Database) -> uuid.UUID:
    workspace = Workspace(name="crypto")
    async with db.transaction() as session:
        session.add(workspace)
    return workspace.id


async def _add_connector(
    db: Database, keyring: Keyring, workspace_id: uuid.UUID, plaintext: bytes = SECRET
) -> uuid.UUID:
    connector_id = uuid.uuid4()
    sealed = await keyring.seal(plaintext, aad=CONNECTOR_CREDENTIALS.aad(connector_id))
    async with db.transaction() as session:
        session.add(
            Connector(
                id=connector_id,
                workspace_id=workspace_id,
                type="webhook",
                name=f"c-{connector_id.hex[:12]}",
                credentials_key_id=sealed.key_id,
                credentials_wrapped_key=sealed.wrapped_key,
                credentials_ciphertext=sealed.ciphertext,
            )
        )
    return connector_id


async def _load(db: Database, connector_id: uuid.UUID) -> SealedSecret:
    async with db.read() as session:
        row = await session.get(Connector, connector_id)
    assert row is not None
    assert row.credentials_key_id is not None
    assert row.credentials_wrapped_key is not None
    assert row.credentials_ciphertext is not None
    return SealedSecret(
        row.credentials_key_id, row.credentials_wrapped_key, row.credentials_ciphertext
    )


async def _open_row(db: Database, keyring: Keyring, connector_id: uuid.UUID) -> bytes:
    sealed = await _load(db, connector_id)
    return await keyring.open(sealed, aad=CONNECTOR_CREDENTIALS.aad(connector_id))


async def _key_ids_in_use(db: Database) -> set[str]:
    async with db.read() as session:
        return set((await session.scalars(select(Connector.credentials_key_id))).all()) - {None}  # type: ignore[arg-type]


def _flip(blob: bytes, index: int) -> bytes:
    return blob[:index] + bytes([blob[index] ^ 0x01]) + blob[index + 1 :]


# -- sealing -------------------------------------------------------------------------------


async def test_round_trip(keyring: Keyring) -> None:
    sealed = await keyring.seal(SECRET, aad="connectors:credentials:1")
    assert sealed.key_id == keyring.primary_key_id
    assert SECRET not in sealed.ciphertext
    assert await keyring.open(sealed, aad="connectors:credentials:1") == SECRET
    assert await keyring.open(await keyring.seal(b"", aad="x"), aad="x") == b""
    assert "sk_live" not in repr(sealed)


@pytest.mark.parametrize(
    ("part", "index"),
    [
        ("ciphertext", 0),  # format version
        ("ciphertext", 1),  # nonce
        ("ciphertext", 1 + NONCE_BYTES),  # body
        ("ciphertext", -1),  # tag
        ("wrapped_key", 5),
        ("wrapped_key", -1),
    ],
)
async def test_tampering_is_detected(keyring: Keyring, part: str, index: int) -> None:
    sealed = await keyring.seal(SECRET, aad="r")
    blob: bytes = getattr(sealed, part)
    tampered = SealedSecret(
        sealed.key_id,
        _flip(blob, index % len(blob)) if part == "wrapped_key" else sealed.wrapped_key,
        _flip(blob, index % len(blob)) if part == "ciphertext" else sealed.ciphertext,
    )
    with pytest.raises(SecretUnavailable) as caught:
        await keyring.open(tampered, aad="r")
    assert "sk_live" not in str(caught.value)


async def test_truncated_or_swapped_parts_fail(keyring: Keyring) -> None:
    one = await keyring.seal(SECRET, aad="r")
    other = await keyring.seal(b"other", aad="r")
    for broken in (
        SealedSecret(one.key_id, one.wrapped_key, one.ciphertext[:10]),
        SealedSecret(one.key_id, one.wrapped_key[:-3], one.ciphertext),
        SealedSecret(one.key_id, other.wrapped_key, one.ciphertext),  # another record's data key
        SealedSecret("k_unknown", one.wrapped_key, one.ciphertext),
    ):
        with pytest.raises(SecretUnavailable):
            await keyring.open(broken, aad="r")


async def test_a_sealed_value_moved_to_another_record_does_not_open(
    db: Database, keyring: Keyring, workspace_id: uuid.UUID
) -> None:
    first = await _add_connector(db, keyring, workspace_id, b"first secret")
    second = await _add_connector(db, keyring, workspace_id, b"second secret")
    stolen = await _load(db, first)
    async with db.transaction() as session:
        await session.execute(
            update(Connector)
            .where(Connector.id == second)
            .values(
                credentials_key_id=stolen.key_id,
                credentials_wrapped_key=stolen.wrapped_key,
                credentials_ciphertext=stolen.ciphertext,
            )
        )
    assert await _open_row(db, keyring, first) == b"first secret"
    with pytest.raises(SecretUnavailable):
        await _open_row(db, keyring, second)
    with pytest.raises(SecretUnavailable):  # other column, same record: bound too
        await keyring.open(stolen, aad=crypto.record_aad("connectors", "other", first))


async def test_nonces_are_unique(keyring: Keyring) -> None:
    nonces: set[bytes] = set()
    data_keys: set[bytes] = set()
    for _ in range(10_000):
        sealed = await keyring.seal(b"x", aad="r")
        nonces.add(sealed.ciphertext[1 : 1 + NONCE_BYTES])
        nonces.add(sealed.wrapped_key[1 : 1 + NONCE_BYTES])
        data_keys.add(sealed.wrapped_key)
    assert len(nonces) == 20_000
    assert len(data_keys) == 10_000


async def test_wrong_root_key_cannot_open_seal_or_rotate(db: Database, keyring: Keyring) -> None:
    sealed = await keyring.seal(SECRET, aad="r")
    wrong = Keyring(db, secrets.token_bytes(32))
    with pytest.raises(SecretUnavailable) as opened:
        await wrong.open(sealed, aad="r")
    assert "sk_live" not in str(opened.value)
    with pytest.raises(SecretUnavailable):
        await wrong.seal(b"new", aad="r")
    with pytest.raises(SecretUnavailable, match="TIDINGS_MASTER_KEY"):
        await wrong.ensure_primary()
    with pytest.raises(SecretUnavailable, match="not rotating"):
        await rotate_keys(wrong)
    assert [key.id for key in await list_keys(db)] == [keyring.primary_key_id]


async def test_first_key_is_created_once_by_racing_processes(db: Database, root_key: bytes) -> None:
    others = [Database(str(db.url.render_as_string(hide_password=False))) for _ in range(3)]
    try:
        rings = [Keyring(other, root_key) for other in others]
        primaries = await asyncio.gather(*(ring.ensure_primary() for ring in rings))
    finally:
        for other in others:
            await other.dispose()
    assert len(set(primaries)) == 1
    keys = await list_keys(db)
    assert [key.id for key in keys] == primaries[:1]
    assert keys[0].is_primary


async def test_the_database_never_holds_the_plaintext_or_keys(
    db: Database, keyring: Keyring, workspace_id: uuid.UUID, root_key: bytes
) -> None:
    connector_id = await _add_connector(db, keyring, workspace_id)
    await rotate_keys(keyring)
    async with db.read() as session:
        rows = [
            *(await session.execute(text("SELECT * FROM connectors"))).all(),
            *(await session.execute(text("SELECT * FROM crypto_keys"))).all(),
        ]
    raw = b"".join(
        value if isinstance(value, bytes) else str(value).encode() for row in rows for value in row
    )
    assert str(connector_id.hex) in raw.decode(errors="replace").replace("-", "")  # rows were read
    for needle in (SECRET, b"sk_live_0123456789abcdefSECRET", root_key):
        assert needle not in raw
        assert base64.b64encode(needle) not in raw
        assert needle.hex().encode() not in raw


# -- rotation ------------------------------------------------------------------------------


async def test_rotation_rewraps_records_and_keeps_old_keys(
    db: Database, keyring: Keyring, workspace_id: uuid.UUID
) -> None:
    key_a = keyring.primary_key_id
    ids = [await _add_connector(db, keyring, workspace_id, f"s{i}".encode()) for i in range(7)]
    before = {i: await _load(db, i) for i in ids}
    report = await rotate_keys(keyring, batch_size=3)
    key_b = report.new_key_id
    assert key_b != key_a
    assert keyring.primary_key_id == key_b
    assert report.rewrap.rewrapped == 7
    assert report.rewrap.failed == []
    assert report.rewrap.remaining == 0
    assert report.rewrap.retired == [key_a]
    assert await _key_ids_in_use(db) == {key_b}
    for n, connector_id in enumerate(ids):
        after = await _load(db, connector_id)
        assert after.ciphertext == before[connector_id].ciphertext  # only the wrapping changed
        assert after.wrapped_key != before[connector_id].wrapped_key
        assert await _open_row(db, keyring, connector_id) == f"s{n}".encode()
    # A value sealed under the old key (kept, retired) still opens; new seals use the new key.
    assert await keyring.open(before[ids[0]], aad=CONNECTOR_CREDENTIALS.aad(ids[0])) == b"s0"
    assert (await keyring.seal(b"n", aad="r")).key_id == key_b
    keys = {key.id: key for key in await list_keys(db)}
    assert keys[key_a].retired_at is not None
    assert not keys[key_a].is_primary
    assert keys[key_a].records == 0
    assert keys[key_b].is_primary
    assert keys[key_b].records == 7
    assert keys[key_b].retired_at is None
    again = await rewrap_all(keyring)  # idempotent
    assert again.rewrapped == 0
    assert again.retired == []


async def test_another_process_learns_of_the_rotation_by_itself(
    db: Database, keyring: Keyring, workspace_id: uuid.UUID, root_key: bytes
) -> None:
    other_db = Database(db.url.render_as_string(hide_password=False))
    try:
        other = Keyring(other_db, root_key)  # "another process": its own engine and cache
        idle = Keyring(other_db, root_key)  # a third one that opens nothing after the rotation
        connector_id = await _add_connector(db, keyring, workspace_id)
        assert await _open_row(other_db, other, connector_id) == SECRET  # caches key A only
        key_a = await idle.ensure_primary()
        assert other.primary_key_id == key_a
        report = await rotate_keys(keyring)
        assert other.primary_key_id == key_a  # not told
        assert await _open_row(other_db, other, connector_id) == SECRET  # unknown B: reloads
        assert other.primary_key_id == report.new_key_id  # and now seals with B too
        assert (await other.seal(b"n", aad="r")).key_id == report.new_key_id
        # Until its refresh interval a process may still seal with A: that opens everywhere.
        stale = await idle.seal(b"stale", aad="r")
        assert stale.key_id == key_a
        assert await keyring.open(stale, aad="r") == b"stale"
        assert await other.open(stale, aad="r") == b"stale"
        # Past the interval it seals with the new primary without being told.
        eager = Keyring(other_db, root_key, refresh_seconds=0)
        await eager.ensure_primary()
        latest = await rotate_keys(keyring)
        assert (await eager.seal(b"n", aad="r")).key_id == latest.new_key_id
    finally:
        await other_db.dispose()


async def test_rotation_while_other_processes_seal_open_and_replace(
    db: Database, keyring: Keyring, workspace_id: uuid.UUID, root_key: bytes
) -> None:
    other_db = Database(db.url.render_as_string(hide_password=False))
    other = Keyring(other_db, root_key)
    expected: dict[uuid.UUID, bytes] = {}
    # Each task replaces only its own rows, so `expected` follows the order of the commits.
    owned: dict[str, list[uuid.UUID]] = {"a": [], "b": []}
    for n in range(40):
        connector_id = await _add_connector(db, keyring, workspace_id, f"v{n}".encode())
        expected[connector_id] = f"v{n}".encode()
        owned["ab"[n % 2]].append(connector_id)
    failures: list[BaseException] = []
    stop = asyncio.Event()
    rng = random.Random(7)

    async def traffic(ring: Keyring, database: Database, tag: str) -> int:
        done = 0
        while not stop.is_set():
            try:
                choice = rng.random()
                if choice < 0.3:  # replace credentials (a new data key and ciphertext)
                    target = rng.choice(owned[tag])
                    value = f"{tag}-{done}".encode()
                    sealed = await ring.seal(value, aad=CONNECTOR_CREDENTIALS.aad(target))
                    async with database.transaction() as session:
                        await session.execute(
                            update(Connector)
                            .where(Connector.id == target)
                            .values(
                                credentials_key_id=sealed.key_id,
                                credentials_wrapped_key=sealed.wrapped_key,
                                credentials_ciphertext=sealed.ciphertext,
                            )
                        )
                    expected[target] = value
                elif choice < 0.4:
                    new_id = await _add_connector(database, ring, workspace_id, b"new")
                    expected[new_id] = b"new"
                    owned[tag].append(new_id)
                else:
                    await _open_row(database, ring, rng.choice(list(expected)))
                done += 1
            except BaseException as exc:
                failures.append(exc)
                raise
            await asyncio.sleep(0)
        return done

    tasks = [
        asyncio.create_task(traffic(keyring, db, "a")),
        asyncio.create_task(traffic(other, other_db, "b")),
    ]
    try:
        await asyncio.sleep(0.05)
        reports = [await rotate_keys(keyring, batch_size=4) for _ in range(2)]
        await asyncio.sleep(0.05)
    finally:
        stop.set()
        counts = await asyncio.gather(*tasks, return_exceptions=True)
    try:
        assert failures == []
        assert all(isinstance(count, int) and count > 0 for count in counts)
        assert all(report.rewrap.failed == [] for report in reports)
        # `other` kept its stale primary: what it sealed is on an old key until the next pass.
        final = await rewrap_all(keyring)
        assert final.remaining == 0
        assert await _key_ids_in_use(db) == {keyring.primary_key_id}
        for connector_id, value in expected.items():
            assert await _open_row(db, keyring, connector_id) == value
            assert await _open_row(other_db, other, connector_id) == value
    finally:
        await other_db.dispose()


async def test_an_interrupted_rotation_is_finished_by_running_again(
    db: Database, keyring: Keyring, workspace_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_a = keyring.primary_key_id
    ids = [await _add_connector(db, keyring, workspace_id, f"s{i}".encode()) for i in range(6)]
    real_rewrap = Keyring.rewrap
    calls = 0

    async def crashing_rewrap(self: Keyring, sealed: SealedSecret, *, aad: str) -> SealedSecret:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise RuntimeError("killed")
        return await real_rewrap(self, sealed, aad=aad)

    monkeypatch.setattr(Keyring, "rewrap", crashing_rewrap)
    with pytest.raises(RuntimeError, match="killed"):
        await rotate_keys(keyring, batch_size=2)
    monkeypatch.setattr(Keyring, "rewrap", real_rewrap)
    key_b = keyring.primary_key_id
    assert await _key_ids_in_use(db) == {key_a, key_b}  # half done
    keys = {key.id: key for key in await list_keys(db)}
    assert keys[key_a].retired_at is None  # not retired while records still use it
    for n, connector_id in enumerate(ids):  # everything opens meanwhile
        assert await _open_row(db, keyring, connector_id) == f"s{n}".encode()

    resumed = await rewrap_all(keyring)  # `tidings keys rewrap`: finish, no new key
    assert resumed.rewrapped == 4
    assert resumed.retired == [key_a]
    assert await _key_ids_in_use(db) == {key_b}

    again = await rotate_keys(keyring, batch_size=2)  # or simply rotate again
    assert again.rewrap.rewrapped == 6
    assert await _key_ids_in_use(db) == {again.new_key_id}
    for n, connector_id in enumerate(ids):
        assert await _open_row(db, keyring, connector_id) == f"s{n}".encode()


async def test_rotation_reports_records_it_cannot_open(
    db: Database, keyring: Keyring, workspace_id: uuid.UUID
) -> None:
    good = await _add_connector(db, keyring, workspace_id)
    bad = await _add_connector(db, keyring, workspace_id)
    sealed = await _load(db, bad)
    async with db.transaction() as session:
        await session.execute(
            update(Connector)
            .where(Connector.id == bad)
            .values(credentials_wrapped_key=_flip(sealed.wrapped_key, 20))
        )
    report = await rotate_keys(keyring)
    assert report.rewrap.rewrapped == 1
    assert report.rewrap.failed == [CONNECTOR_CREDENTIALS.aad(bad)]
    assert report.rewrap.remaining == 1
    assert await _open_row(db, keyring, good) == SECRET


async def test_changing_the_root_key(
    db: Database, keyring: Keyring, workspace_id: uuid.UUID, root_key: bytes
) -> None:
    connector_id = await _add_connector(db, keyring, workspace_id)
    await rotate_keys(keyring)
    await _add_connector(db, keyring, workspace_id)
    new_root = secrets.token_bytes(32)
    assert await change_root_key(db, root_key, new_root) == 2
    assert await change_root_key(db, root_key, new_root) == 0  # re-running is harmless
    assert await _open_row(db, Keyring(db, new_root), connector_id) == SECRET
    with pytest.raises(SecretUnavailable):
        await _open_row(db, Keyring(db, root_key), connector_id)
    with pytest.raises(SecretUnavailable, match="nothing was changed"):
        await change_root_key(db, secrets.token_bytes(32), secrets.token_bytes(32))


# -- logs, masking, CLI --------------------------------------------------------------------


async def test_no_secret_reaches_the_logs(
    db: Database,
    keyring: Keyring,
    workspace_id: uuid.UUID,
    root_key: bytes,
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("debug", "json")
    try:
        connector_id = await _add_connector(db, keyring, workspace_id)
        await rotate_keys(keyring)
        sealed = await _load(db, connector_id)
        with pytest.raises(SecretUnavailable):
            await keyring.open(sealed, aad="connectors:credentials:elsewhere")
        with pytest.raises(SecretUnavailable):
            await Keyring(db, secrets.token_bytes(32)).open(sealed, aad="x")
        logging.getLogger("test").info("done")
    finally:
        logging.getLogger().handlers.clear()
    logs = capsys.readouterr().out
    assert '"event": "keyring_rotated"' in logs
    assert '"event": "secret_unavailable"' in logs
    for needle in (SECRET.decode(), "sk_live", base64.b64encode(root_key).decode(), root_key.hex()):
        assert needle not in logs


def test_mask() -> None:
    assert mask(None) == ""
    assert mask("") == ""
    assert mask("short") == "••••"
    assert mask("elevenchars") == "••••"
    assert mask("sk_live_0123456789abcd") == "••••abcd"
    assert len(mask("x" * 500)) == 8


# CLI: a sync test, as the command runs its own event loop.
@pytest.fixture
def cli_env(settings_values: dict[str, Any]) -> Iterator[dict[str, str]]:
    env = {f"TIDINGS_{k.upper()}": str(v) for k, v in settings_values.items() if v is not None}
    yield env
    logging.getLogger().handlers.clear()


def test_keys_cli(settings: Settings, cli_env: dict[str, str], tmp_path: Path) -> None:
    assert settings.master_key is not None
    root = decode_master_key(settings.master_key)

    async def setup() -> uuid.UUID:
        db = Database(settings.effective_database_url)
        try:
            ring = Keyring(db, root)
            workspace = Workspace(name="cli")
            async with db.transaction() as session:
                session.add(workspace)
            return await _add_connector(db, ring, workspace.id)
        finally:
            await db.dispose()

    connector_id = asyncio.run(setup())
    runner = CliRunner()
    listed = runner.invoke(cli_app, ["keys", "list"], env=cli_env)
    assert listed.exit_code == 0, listed.output
    first_key = asyncio.run(_key_ids(settings))[0]
    assert first_key in listed.output

    rotated = runner.invoke(cli_app, ["keys", "rotate", "--batch-size", "10"], env=cli_env)
    assert rotated.exit_code == 0, rotated.output
    keys = asyncio.run(_key_ids(settings))
    assert len(keys) == 2
    assert f"new primary key {keys[1]}" in rotated.output
    assert "1 record re-wrapped" in rotated.output
    assert "ms" in rotated.output
    assert SECRET.decode() not in rotated.output

    listed = runner.invoke(cli_app, ["keys", "list"], env=cli_env)
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    new_line = next(line for line in lines if keys[1] in line)
    old_line = next(line for line in lines if keys[0] in line)
    assert "yes" in new_line  # primary
    assert "yes" not in old_line
    assert new_line.split() == [keys[1], "yes", *new_line.split()[2:4], "1"]
    assert len(old_line.split()) == 6  # id, created and retired (date, time), records
    assert old_line.split()[-1] == "0"

    rewrapped = runner.invoke(cli_app, ["keys", "rewrap"], env=cli_env)
    assert rewrapped.exit_code == 0, rewrapped.output
    assert "0 records re-wrapped" in rewrapped.output

    new_root = secrets.token_bytes(32)
    old_file = tmp_path / "old-root"
    old_file.write_text(cli_env["TIDINGS_MASTER_KEY"] + "\n")
    new_env = {
        **cli_env,
        "TIDINGS_MASTER_KEY": base64.urlsafe_b64encode(new_root).decode().rstrip("="),
    }
    changed = runner.invoke(
        cli_app, ["keys", "rewrap-root", "--old-key-file", str(old_file)], env=new_env
    )
    assert changed.exit_code == 0, changed.output
    assert "2 keyring keys re-wrapped" in changed.output

    async def reopen() -> bytes:
        db = Database(settings.effective_database_url)
        try:
            return await _open_row(db, Keyring(db, new_root), connector_id)
        finally:
            await db.dispose()

    assert asyncio.run(reopen()) == SECRET
    wrong = runner.invoke(cli_app, ["keys", "rotate"], env=cli_env)  # the old root now
    assert wrong.exit_code == 1
    assert "not rotating" in wrong.output


async def _key_ids(settings: Settings) -> list[str]:
    db = Database(settings.effective_database_url)
    try:
        async with db.read() as session:
            return list(
                (
                    await session.scalars(
                        select(CryptoKey.id).order_by(CryptoKey.created_at, CryptoKey.id)
                    )
                ).all()
            )
    finally:
        await db.dispose()
