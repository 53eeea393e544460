"""The SDK's REST client against a real server, on both profiles: a round trip over most
endpoints, problem answers mapped to `TidingsError`, token refresh, idempotent sends."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from typing import Any

import pytest

from tests.client.conftest import LiveServer, live_server
from tests.client.team import PASSWORD, SdkFactory, new_email, person, team
from tests.realtime.conftest import REALTIME_TIMINGS
from tests.support.helpers import eventually
from tests.support.users import register
from tidings.client import TidingsClient, TidingsError
from tidings.client.models import TokensOut
from tidings.settings import Settings


async def test_rest_round_trip(live: LiveServer, sdk: SdkFactory) -> None:
    t = await team(sdk)
    ada, bob, workspace = t.ada.client, t.bob.client, t.workspace

    # identity: me, workspaces, members, invitations
    assert (await ada.me()).id == t.ada.user.id
    assert [w.id for w in await ada.workspaces()] == [workspace.id]
    assert (await bob.workspace(workspace.id)).role == "member"
    renamed = await ada.rename_workspace(workspace.id, "Acme Inc")
    assert renamed.name == "Acme Inc"
    roles = {m.user_id: m.role for m in await ada.members(workspace.id)}
    assert roles == {t.ada.user.id: "owner", t.bob.user.id: "member"}
    invitation = await ada.create_invitation(workspace.id, role="guest", expires_in_hours=1)
    assert invitation.token
    assert [i.id for i in await ada.invitations(workspace.id)] == [invitation.id]
    await ada.revoke_invitation(workspace.id, invitation.id)
    assert await ada.invitations(workspace.id) == []

    # conversations
    channel = await ada.create_conversation(workspace.id, "public", name="plans", topic="Q3")
    assert channel.kind == "public"
    assert channel.topic == "Q3"
    assert channel.id in {c.id for c in await bob.browse_conversations(workspace.id)}
    assert channel.id not in {c.id for c in await bob.conversations(workspace.id)}
    joined = await bob.join_conversation(channel.id)
    assert joined.is_member
    await bob.leave_conversation(channel.id)
    assert not (await bob.conversation(channel.id)).is_member
    assert await ada.add_conversation_members(channel.id, [t.bob.user.id]) == [t.bob.user.id]
    assert await ada.add_conversation_members(channel.id, [t.bob.user.id]) == []
    members = {m.user_id for m in await ada.conversation_members(channel.id)}
    assert members == {t.ada.user.id, t.bob.user.id}
    await ada.remove_conversation_member(channel.id, t.bob.user.id)
    assert {m.user_id for m in await ada.conversation_members(channel.id)} == {t.ada.user.id}
    updated = await ada.update_conversation(channel.id, topic="Q4")
    assert (updated.name, updated.topic) == ("plans", "Q4")
    assert (await ada.archive_conversation(channel.id)).archived_at is not None
    assert (await ada.unarchive_conversation(channel.id)).archived_at is None
    assert (await ada.mute_conversation(channel.id)).muted is True
    assert (await ada.mute_conversation(channel.id, muted=False)).muted is False
    dm = await ada.create_conversation(workspace.id, "direct", member_ids=[t.bob.user.id])
    again = await ada.create_conversation(workspace.id, "direct", member_ids=[t.bob.user.id])
    assert again.id == dm.id

    # messages
    first = await ada.send_message(channel.id, "one")
    assert first.client_id  # generated, so a retry is the same message
    repeat = await ada.send_message(channel.id, "one", client_id=first.client_id)
    assert repeat.id == first.id
    rest = [await ada.send_message(channel.id, body) for body in ("two", "three", "four")]
    page = await ada.history(channel.id)
    assert [m.body for m in page.messages] == ["one", "two", "three", "four"]
    assert [m.body for m in (await ada.history(channel.id, before=rest[1].seq)).messages] == [
        "one",
        "two",
    ]
    after = await ada.history(channel.id, after=first.seq, limit=2)
    assert [m.body for m in after.messages] == ["two", "three"]
    assert after.has_more_after
    around = await ada.history(channel.id, around=rest[0].seq, limit=2)
    assert [m.body for m in around.messages] == ["one", "two"]
    assert [m.body async for m in ada.iter_history(channel.id, page_size=3)] == [
        "four",
        "three",
        "two",
        "one",
    ]
    assert (await ada.message(channel.id, first.id)).body == "one"

    edited = await ada.edit_message(channel.id, first.id, "one, edited")
    assert edited.edited_at is not None
    assert [e.previous_body for e in await ada.message_edits(channel.id, first.id)] == ["one"]
    reactions = await ada.react(channel.id, first.id, "🎉")
    assert [(r.emoji, r.count, r.user_ids) for r in reactions] == [("🎉", 1, [t.ada.user.id])]
    assert await ada.unreact(channel.id, first.id, "🎉") == []
    assert (await ada.pin(channel.id, first.id)).pinned
    assert [m.id for m in await ada.pins(channel.id)] == [first.id]
    assert not (await ada.unpin(channel.id, first.id)).pinned

    reply = await ada.send_message(channel.id, "a reply", thread_root_id=first.id)
    thread = await ada.thread(channel.id, first.id)
    assert thread.root.id == first.id
    assert [m.id for m in thread.replies] == [reply.id]
    await ada.unfollow_thread(channel.id, first.id)
    assert not (await ada.thread(channel.id, first.id)).following
    await ada.follow_thread(channel.id, first.id)
    assert (await ada.thread(channel.id, first.id)).following

    read = await ada.mark_read(channel.id, rest[-1].seq)
    assert read.last_read_seq == rest[-1].seq
    await ada.delete_message(channel.id, rest[0].id)
    assert (await ada.message(channel.id, rest[0].id)).deleted

    # API keys: an app sends with one; revoked, it is refused
    key = await ada.create_api_key(workspace.id, "bot", ["messages:send", "messages:read"])
    assert key.key.startswith("tdk_")
    assert [k.id for k in await ada.api_keys(workspace.id)] == [key.id]
    app = sdk(api_key=key.key)
    sent = await app.send_message(channel.id, "from the app")
    assert sent.sender_kind == "app"
    await ada.revoke_api_key(workspace.id, key.id)
    assert (await ada.api_keys(workspace.id))[0].revoked_at is not None

    async def refused() -> bool:
        try:
            await app.history(channel.id)
        except TidingsError as error:
            return error.code == "invalid_api_key"
        return False

    await eventually(refused)

    # anything not wrapped
    presence = await ada.request("GET", f"/api/v1/workspaces/{workspace.id}/presence")
    assert presence == {}


async def test_problems_raise_tidings_error(live: LiveServer, sdk: SdkFactory) -> None:
    ada = await person(sdk, "ada")
    workspace = await ada.client.create_workspace("Acme")

    with pytest.raises(TidingsError) as missing:
        await ada.client.conversation(uuid.uuid4())
    assert (missing.value.status, missing.value.code) == (404, "conversation_not_found")
    assert missing.value.problem["status"] == 404
    assert missing.value.detail
    assert missing.value.request_id

    with pytest.raises(TidingsError) as invalid:
        await ada.client.create_conversation(workspace.id, "public", name="x" * 200)
    assert (invalid.value.status, invalid.value.code) == (400, "validation_failed")
    assert any(e["field"].endswith("name") for e in invalid.value.problem["errors"])

    with pytest.raises(TidingsError) as wrong:
        await sdk().login(ada.user.email, "not the password")
    assert (wrong.value.status, wrong.value.code) == (401, "invalid_credentials")

    with pytest.raises(TidingsError) as anonymous:
        await sdk().me()
    assert (anonymous.value.status, anonymous.value.code) == (401, "unauthenticated")

    stranger = await person(sdk, "eve")
    with pytest.raises(TidingsError) as hidden:
        await stranger.client.workspace(workspace.id)
    assert hidden.value.code == "workspace_not_found"


async def test_rate_limits_expose_retry_after(settings_values: dict[str, Any]) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, **{**settings_values, **REALTIME_TIMINGS, "rate_limit_login": "2/minute"}
    )
    async with live_server(settings) as live, TidingsClient(live.base_url) as client:
        email = new_email("ada")
        await client.register(email, PASSWORD, "Ada")
        for _ in range(2):
            await client.login(email, PASSWORD)
        with pytest.raises(TidingsError) as limited:
            await client.login(email, PASSWORD)
        assert (limited.value.status, limited.value.code) == (429, "rate_limited")
        assert limited.value.retry_after is not None
        assert 0 < limited.value.retry_after <= 60


async def test_an_invalid_access_token_is_refreshed_once(live: LiveServer, sdk: SdkFactory) -> None:
    account = await register(live.http, new_email("ada"))
    seen: list[TokensOut] = []
    client = sdk(
        access_token="not-a-valid-token", refresh_token=account.refresh_token, on_tokens=seen.append
    )
    # Concurrent requests that all find the token wanting share one refresh (refresh tokens
    # rotate: a second refresh with the same one would be refused as a reuse).
    users = await asyncio.gather(*(client.me() for _ in range(5)))
    assert {u.id for u in users} == {uuid.UUID(account.id)}
    assert len(seen) == 1
    assert client.access_token == seen[0].access_token
    assert client.refresh_token == seen[0].refresh_token != account.refresh_token
    assert seen[0].session_id == uuid.UUID(account.session_id)

    # The new refresh token keeps working, rotating again; the first one is spent.
    await client.refresh()
    assert len(seen) == 2
    spent = await live.http.post(
        "/api/v1/auth/refresh", json={"refresh_token": account.refresh_token}
    )
    assert spent.status_code == 401
    assert spent.json()["code"] in {"refresh_token_used", "refresh_token_reused"}


async def test_a_refresh_token_alone_signs_in(live: LiveServer, sdk: SdkFactory) -> None:
    account = await register(live.http, new_email("ada"))
    client = sdk(refresh_token=account.refresh_token)
    assert str((await client.me()).id) == account.id
    assert client.access_token is not None


async def test_without_a_usable_refresh_token_the_401_is_raised(
    live: LiveServer, sdk: SdkFactory
) -> None:
    with pytest.raises(TidingsError) as no_refresh:
        await sdk(access_token="not-a-valid-token").me()
    assert (no_refresh.value.status, no_refresh.value.code) == (401, "invalid_token")

    with pytest.raises(TidingsError) as bad_refresh:
        await sdk(access_token="not-a-valid-token", refresh_token="tdr_forged").me()
    assert (bad_refresh.value.status, bad_refresh.value.code) == (401, "invalid_refresh_token")

    with pytest.raises(ValueError, match="not both"):
        TidingsClient(live.base_url, access_token="a", api_key="tdk_b")


async def test_logout_and_login(live: LiveServer, sdk: SdkFactory) -> None:
    client = sdk()
    email = new_email("ada")
    registered = await client.register(email, PASSWORD, "Ada")
    await client.logout()
    assert client.access_token is None
    assert client.refresh_token is None
    stale = sdk(access_token=registered.tokens.access_token)
    with pytest.raises(TidingsError) as ended:
        await stale.me()
    assert ended.value.code == "session_ended"
    tokens = await client.login(email, PASSWORD)
    assert tokens.session_id != registered.tokens.session_id
    assert (await client.me()).email == email
    assert [s.current for s in await client.sessions()] == [True]


def test_the_sdk_imports_no_server_parts() -> None:
    """The SDK needs no server, database driver or web framework: only the shared schemas."""
    probe = (
        "import sys, tidings.client\n"
        "server = ('fastapi', 'starlette', 'uvicorn', 'redis', 'asyncpg', 'aiosqlite', "
        "'alembic', 'sqlalchemy', 'argon2', 'tidings.app', 'tidings.realtime', 'tidings.db', "
        "'tidings.identity.accounts', 'tidings.messaging.messages')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in server or "
        "any(m == s or m.startswith(s + '.') for s in server))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)
