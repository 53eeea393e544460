"""Message search through the real API, on both profiles (SQLite FTS5 and PostgreSQL)."""

from __future__ import annotations

import asyncio
import base64
from datetime import date, datetime, timedelta
from typing import Any

import httpx
import orjson
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.users import Account, add_member, create_api_key, create_workspace, register
from tidings.messaging.models import Message
from tidings.search.query import parse
from tidings.search.service import matches

Headers = dict[str, str]


# -- helpers ---------------------------------------------------------------------------------


async def channel(
    client: httpx.AsyncClient,
    owner: Account,
    workspace_id: str,
    name: str,
    *,
    kind: str = "public",
    members: tuple[Account, ...] = (),
) -> str:
    body: dict[str, Any] = {"kind": kind, "member_ids": [m.id for m in members]}
    if kind in {"public", "private"}:
        body["name"] = name
    response = await client.post(
        f"/api/v1/workspaces/{workspace_id}/conversations", json=body, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    conversation_id: str = response.json()["id"]
    return conversation_id


async def send(
    client: httpx.AsyncClient,
    headers: Headers,
    conversation_id: str,
    body: str,
    *,
    thread_root_id: str | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {"body": body}
    if thread_root_id:
        payload["thread_root_id"] = thread_root_id
    response = await client.post(
        f"/api/v1/conversations/{conversation_id}/messages", json=payload, headers=headers
    )
    assert response.status_code == 201, response.text
    message: dict[str, Any] = response.json()
    return message


async def search(
    client: httpx.AsyncClient, headers: Headers, workspace_id: str, q: str, **params: Any
) -> httpx.Response:
    return await client.get(
        f"/api/v1/workspaces/{workspace_id}/search", params={"q": q, **params}, headers=headers
    )


async def found(
    client: httpx.AsyncClient, headers: Headers, workspace_id: str, q: str
) -> list[str]:
    """Bodies of every hit (one page of up to 100), newest first."""
    response = await search(client, headers, workspace_id, q, limit=100)
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["next_cursor"] is None
    return [hit["message"]["body"] for hit in page["items"]]


def problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code, response.json()


async def workspace_with_owner(client: httpx.AsyncClient) -> tuple[Account, str]:
    owner = await register(client)
    return owner, await create_workspace(client, owner)


# -- finding and highlighting ----------------------------------------------------------------


async def test_finds_a_message_with_a_highlighted_snippet(client: httpx.AsyncClient) -> None:
    owner, workspace_id = await workspace_with_owner(client)
    ops = await channel(client, owner, workspace_id, "ops")
    sent = await send(
        client, owner.headers, ops, 'The deploy of <script>alert("x")</script> went fine & quick'
    )
    await send(client, owner.headers, ops, "Lunch is at noon")

    response = await search(client, owner.headers, workspace_id, "DEPLOY")
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["next_cursor"] is None
    [hit] = page["items"]
    assert hit["message"]["id"] == sent["id"]
    assert hit["message"]["conversation_id"] == ops
    assert hit["message"]["seq"] == sent["seq"]
    assert hit["message"]["sender_id"] == owner.id
    assert hit["message"]["thread_root_id"] is None
    assert hit["message"]["body"] == sent["body"]
    assert hit["conversation"] == {"id": ops, "name": "ops", "kind": "public"}
    snippet = hit["snippet"]
    assert "<mark>deploy</mark>" in snippet
    # Everything but the marks is escaped: the message's own markup is inert text.
    assert "&lt;script&gt;" in snippet
    assert "&amp; quick" in snippet
    assert snippet.replace("<mark>", "").replace("</mark>", "").count("<") == 0

    assert await found(client, owner.headers, workspace_id, "deploy fine") == [sent["body"]]
    assert await found(client, owner.headers, workspace_id, "deploy missing") == []
    assert await found(client, owner.headers, workspace_id, '"went fine"') == [sent["body"]]
    assert await found(client, owner.headers, workspace_id, '"fine went"') == []
    assert await found(client, owner.headers, workspace_id, "depl*") == [sent["body"]]
    assert await found(client, owner.headers, workspace_id, "depl") == []


async def test_every_matched_word_is_marked(client: httpx.AsyncClient) -> None:
    owner, workspace_id = await workspace_with_owner(client)
    ops = await channel(client, owner, workspace_id, "ops")
    await send(client, owner.headers, ops, "Rollout of the billing service: billing is green")

    response = await search(client, owner.headers, workspace_id, "billing green")
    [hit] = response.json()["items"]
    assert hit["snippet"].count("<mark>billing</mark>") == 2
    assert "<mark>green</mark>" in hit["snippet"]
    assert hit["snippet"].count("<mark>") == hit["snippet"].count("</mark>") == 3


async def test_tag_like_text_is_searchable_and_kept_in_the_snippet(
    client: httpx.AsyncClient,
) -> None:
    owner, workspace_id = await workspace_with_owner(client)
    ops = await channel(client, owner, workspace_id, "ops")
    await send(client, owner.headers, ops, "use <b>bold</b> & Vec<String> if a<b and c>d")

    [hit] = (await search(client, owner.headers, workspace_id, "string")).json()["items"]
    assert hit["snippet"] == (
        "use &lt;b&gt;bold&lt;/b&gt; &amp; Vec&lt;<mark>String</mark>&gt; if a&lt;b and c&gt;d"
    )
    assert len(await found(client, owner.headers, workspace_id, "bold and")) == 1


async def test_a_long_message_gets_a_short_snippet_around_the_match(
    client: httpx.AsyncClient,
) -> None:
    owner, workspace_id = await workspace_with_owner(client)
    ops = await channel(client, owner, workspace_id, "ops")
    body = " ".join(
        [*(f"lead{i}" for i in range(100)), "target", *(f"tail{i}" for i in range(100))]
    )
    await send(client, owner.headers, ops, body)

    [hit] = (await search(client, owner.headers, workspace_id, "target")).json()["items"]
    assert hit["message"]["body"] == body
    assert "<mark>target</mark>" in hit["snippet"]
    assert hit["snippet"].endswith("…")
    assert len(hit["snippet"]) < len(body) // 4
    # Without words to match, the start of the text stands in for a snippet.
    [hit] = (await search(client, owner.headers, workspace_id, "in:#ops")).json()["items"]
    assert hit["snippet"].startswith("lead0 lead1")
    assert hit["snippet"].endswith("…")
    assert "<mark>" not in hit["snippet"]


# -- filters ---------------------------------------------------------------------------------


async def test_filters(client: httpx.AsyncClient) -> None:
    owner, workspace_id = await workspace_with_owner(client)
    member = await add_member(client, owner, workspace_id, "member")
    alpha = await channel(client, owner, workspace_id, "alpha", members=(member,))
    beta = await channel(client, owner, workspace_id, "beta", members=(member,))
    mine = await send(client, owner.headers, alpha, "report one")
    root = await send(client, owner.headers, alpha, "report thread root")
    reply = await send(client, member.headers, alpha, "report reply", thread_root_id=root["id"])
    theirs = await send(client, member.headers, beta, "report two")
    everything = {mine["body"], root["body"], reply["body"], theirs["body"]}

    async def bodies(q: str, account: Account = owner) -> set[str]:
        return set(await found(client, account.headers, workspace_id, q))

    assert await bodies("report") == everything
    assert await bodies("report in:#alpha") == {mine["body"], root["body"], reply["body"]}
    assert await bodies("report in:alpha") == {mine["body"], root["body"], reply["body"]}
    assert await bodies(f"report in:{beta}") == {theirs["body"]}
    assert await bodies("report in:#alpha in:#beta") == everything
    assert await bodies("report in:#nowhere") == set()
    assert await bodies("report from:me") == {mine["body"], root["body"]}
    assert await bodies("report from:me", member) == {reply["body"], theirs["body"]}
    assert await bodies(f"report from:{member.id}") == {reply["body"], theirs["body"]}
    assert await bodies(f"report from:@{member.email.upper()}") == {reply["body"], theirs["body"]}
    assert await bodies(f"from:{member.email} in:#beta") == {theirs["body"]}
    assert await bodies("report has:thread") == {root["body"], reply["body"]}
    assert await bodies("has:thread in:#beta") == set()

    day = datetime.fromisoformat(mine["created_at"]).date()
    before, after = day - timedelta(days=1), day + timedelta(days=1)
    assert await bodies(f"report before:{after}") == everything
    assert await bodies(f"report before:{day}") == set()
    assert await bodies(f"report after:{before}") == everything
    assert await bodies(f"report after:{day}") == set()
    assert await bodies(f"on:{day} in:#beta") == {theirs["body"]}
    assert await bodies(f"report on:{before}") == set()
    assert await bodies(f"report after:{date.max}") == set()
    assert await bodies(f"report before:{date.min}") == set()


async def test_bad_filters_and_empty_queries_are_problems(client: httpx.AsyncClient) -> None:
    owner, workspace_id = await workspace_with_owner(client)
    for q in ["", "   ", "***", '""', "- ( ) ^ :"]:
        problem(await search(client, owner.headers, workspace_id, q), 400, "empty_query")
    for q in [
        "before:2026-13-01",
        "after:2026-02-30",
        "on:yesterday",
        "before:20260101",
        "after:",
        "has:link",
        "from:nobody",
        "from:@handle",
    ]:
        problem(await search(client, owner.headers, workspace_id, q), 400, "invalid_filter")
    problem(await search(client, owner.headers, workspace_id, "x" * 501), 400, "validation_failed")


# -- pagination ------------------------------------------------------------------------------


async def test_pagination_walks_every_result_once(client: httpx.AsyncClient) -> None:
    owner, workspace_id = await workspace_with_owner(client)
    ops = await channel(client, owner, workspace_id, "ops")
    sent = [await send(client, owner.headers, ops, f"needle number {i}") for i in range(7)]
    await send(client, owner.headers, ops, "haystack")

    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        response = await search(client, owner.headers, workspace_id, "needle", **params)
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        seen.extend(hit["message"] for hit in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert [m["id"] for m in seen] == [m["id"] for m in reversed(sent)]  # newest first, once
    stamps = [m["created_at"] for m in seen]
    assert stamps == sorted(stamps, reverse=True)


async def test_a_bad_cursor_is_a_problem(client: httpx.AsyncClient) -> None:
    owner, workspace_id = await workspace_with_owner(client)
    naive = base64.urlsafe_b64encode(
        orjson.dumps(["2026-01-01T00:00:00", "00000000-0000-0000-0000-000000000000"])
    ).decode()
    for cursor in ["garbage", "!!!", naive, base64.urlsafe_b64encode(b"[1, 2]").decode()]:
        response = await search(client, owner.headers, workspace_id, "x", cursor=cursor)
        problem(response, 400, "invalid_cursor")


# -- who sees what ---------------------------------------------------------------------------


async def test_never_finds_what_the_caller_may_not_read(client: httpx.AsyncClient) -> None:
    owner, workspace_id = await workspace_with_owner(client)
    member, other, third = await asyncio.gather(
        add_member(client, owner, workspace_id, "member"),
        add_member(client, owner, workspace_id, "admin"),
        add_member(client, owner, workspace_id, "member"),
    )
    private = await channel(client, owner, workspace_id, "board", kind="private")
    dm = await channel(client, owner, workspace_id, "", kind="direct", members=(other,))
    group = await channel(client, owner, workspace_id, "", kind="group", members=(other, third))
    public = await channel(client, owner, workspace_id, "town")
    await send(client, owner.headers, private, "secret in private")
    await send(client, owner.headers, dm, "secret in direct")
    await send(client, other.headers, group, "secret in group")
    await send(client, owner.headers, public, "secret in public")
    elsewhere_owner, elsewhere = await workspace_with_owner(client)
    elsewhere_channel = await channel(client, elsewhere_owner, elsewhere, "town")
    await send(client, elsewhere_owner.headers, elsewhere_channel, "secret elsewhere")

    # A member reads public channels without joining, nothing private, no one else's DMs.
    assert await found(client, member.headers, workspace_id, "secret") == ["secret in public"]
    assert await found(client, member.headers, workspace_id, f"in:{private}") == []
    assert await found(client, member.headers, workspace_id, f"in:{dm} secret") == []
    # Admins too: a private channel or DM is for its members only.
    assert set(await found(client, other.headers, workspace_id, "secret")) == {
        "secret in direct",
        "secret in group",
        "secret in public",
    }
    assert set(await found(client, owner.headers, workspace_id, "secret")) == {
        "secret in private",
        "secret in direct",
        "secret in group",
        "secret in public",
    }
    # Another workspace is not there at all.
    problem(await search(client, member.headers, elsewhere, "secret"), 404, "workspace_not_found")
    problem(
        await search(client, owner.headers, "00000000-0000-0000-0000-000000000000", "secret"),
        404,
        "workspace_not_found",
    )
    problem(await search(client, {}, workspace_id, "secret"), 401, "unauthenticated")


async def test_a_deleted_workspace_is_not_found(client: httpx.AsyncClient) -> None:
    owner, workspace_id = await workspace_with_owner(client)
    ops = await channel(client, owner, workspace_id, "ops")
    await send(client, owner.headers, ops, "left behind")
    key = await create_api_key(client, owner, workspace_id, ["messages:read"])
    response = await client.delete(f"/api/v1/workspaces/{workspace_id}", headers=owner.headers)
    assert response.status_code == 204, response.text

    for headers in [owner.headers, {"Authorization": f"Bearer {key}"}]:
        response = await search(client, headers, workspace_id, "left")
        assert response.status_code in {401, 404}, response.text  # the key may die with it
        if response.status_code == 404:
            problem(response, 404, "workspace_not_found")


async def test_a_guest_sees_only_conversations_they_are_in(client: httpx.AsyncClient) -> None:
    owner, workspace_id = await workspace_with_owner(client)
    guest, member = await asyncio.gather(
        add_member(client, owner, workspace_id, "guest"),
        add_member(client, owner, workspace_id, "member"),
    )
    invited = await channel(client, owner, workspace_id, "invited", members=(guest,))
    other = await channel(client, owner, workspace_id, "other")
    await send(client, owner.headers, invited, "harbor lights in invited")
    await send(client, owner.headers, other, "harbor lights in other")

    assert await found(client, guest.headers, workspace_id, "harbor") == [
        "harbor lights in invited"
    ]
    assert await found(client, guest.headers, workspace_id, "harbor in:#other") == []
    assert len(await found(client, member.headers, workspace_id, "harbor")) == 2


async def test_api_keys_search_their_workspace_but_dms_with_the_read_scope(
    client: httpx.AsyncClient,
) -> None:
    owner, workspace_id = await workspace_with_owner(client)
    other = await add_member(client, owner, workspace_id, "member")
    private = await channel(client, owner, workspace_id, "board", kind="private")
    dm = await channel(client, owner, workspace_id, "", kind="direct", members=(other,))
    await send(client, owner.headers, private, "quarterly numbers in private")
    await send(client, other.headers, dm, "quarterly numbers in direct")
    reader = {
        "Authorization": f"Bearer {await create_api_key(client, owner, workspace_id, ['messages:read', 'messages:send'])}"
    }
    admin = {
        "Authorization": f"Bearer {await create_api_key(client, owner, workspace_id, ['admin'])}"
    }
    sender = {
        "Authorization": f"Bearer {await create_api_key(client, owner, workspace_id, ['messages:send'])}"
    }
    await send(client, reader, private, "quarterly numbers from a robot")

    # Direct messages stay between their people: no key finds them.
    assert set(await found(client, reader, workspace_id, "quarterly")) == {
        "quarterly numbers in private",
        "quarterly numbers from a robot",
    }
    assert len(await found(client, admin, workspace_id, "quarterly")) == 2
    assert await found(client, reader, workspace_id, "from:me") == [
        "quarterly numbers from a robot"
    ]
    problem(await search(client, sender, workspace_id, "quarterly"), 403, "forbidden")
    _, elsewhere = await workspace_with_owner(client)
    problem(await search(client, reader, elsewhere, "quarterly"), 404, "workspace_not_found")


# -- edits and deletions ---------------------------------------------------------------------


async def test_deleted_messages_vanish_and_edits_match_their_new_text(
    client: httpx.AsyncClient, profile: str, database_url: str
) -> None:
    owner, workspace_id = await workspace_with_owner(client)
    ops = await channel(client, owner, workspace_id, "ops")
    edited = await send(client, owner.headers, ops, "original wording zebra")
    doomed = await send(client, owner.headers, ops, "ephemeral giraffe")
    kept = await send(client, owner.headers, ops, "steady giraffe")
    url = f"/api/v1/conversations/{ops}/messages"

    response = await client.patch(
        f"{url}/{edited['id']}", json={"body": "revised wording"}, headers=owner.headers
    )
    assert response.status_code == 200, response.text
    assert await found(client, owner.headers, workspace_id, "zebra") == []
    assert await found(client, owner.headers, workspace_id, "original") == []
    [hit] = (await search(client, owner.headers, workspace_id, "revised")).json()["items"]
    assert hit["message"]["body"] == "revised wording"
    assert hit["message"]["edited_at"] is not None
    assert "<mark>revised</mark>" in hit["snippet"]

    response = await client.delete(f"{url}/{doomed['id']}", headers=owner.headers)
    assert response.status_code == 204, response.text
    assert await found(client, owner.headers, workspace_id, "giraffe") == [kept["body"]]
    assert await found(client, owner.headers, workspace_id, "ephemeral") == []
    # Filter-only searches do not list tombstones either.
    listed = await found(client, owner.headers, workspace_id, "in:#ops")
    assert listed == [kept["body"], "revised wording"]

    response = await client.delete(f"{url}/{edited['id']}", headers=owner.headers)
    assert response.status_code == 204, response.text
    assert await found(client, owner.headers, workspace_id, "wording") == []

    if profile == "embedded":  # the index agrees with the table after all of that
        engine = create_async_engine(database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)"
                    )
                )
        finally:
            await engine.dispose()


# -- hostile input ---------------------------------------------------------------------------

HOSTILE = [
    '"',
    '"unterminated phrase',
    "*",
    "-",
    "-giraffe",
    "(",
    ")",
    "NEAR",
    "NEAR(a b)",
    "NEAR/2",
    "OR",
    "a OR b",
    "AND",
    "NOT",
    "NOT a",
    "^start",
    "body:x",
    "{body}: x",
    "a:b",
    "+plus",
    "x*y",
    "*star",
    'a"b',
    "it's",
    "back\\slash",
    "%",
    "_",
    "\x00",
    "nul\x00byte",
    "\x1b[31m",
    "😀",
    "\u0301",
    "²",
    "\ue000",
    "'; DROP TABLE messages; --",
    "'a':*",
    "a & b | !c <-> d",
    "in:#",
    "from:@",
    "x" * 500,
    " ".join(["w"] * 250),
    " ".join(f"w{i}" for i in range(100)),
]


async def test_hostile_queries_never_break_the_engine(client: httpx.AsyncClient) -> None:
    owner, workspace_id = await workspace_with_owner(client)
    ops = await channel(client, owner, workspace_id, "ops")
    await send(client, owner.headers, ops, 'He said "NEAR OR (x) -y *z" AND NOT ^a:b it\'s')

    for q in HOSTILE:
        response = await search(client, owner.headers, workspace_id, q)
        if response.status_code == 200:
            assert isinstance(response.json()["items"], list)
            continue
        assert response.status_code == 400, (q, response.text)
        assert response.headers["content-type"] == "application/problem+json", q
        assert response.json()["code"] in {"empty_query", "invalid_filter", "too_many_terms"}, (
            q,
            response.text,
        )

    # Operators of either engine are words like any other.
    for q in ["NEAR", "OR", "AND NOT", '"near or"', "it's", "-y", "*z", "(x)", "^a:b"]:
        assert len(await found(client, owner.headers, workspace_id, q)) == 1, q
    assert await found(client, owner.headers, workspace_id, '"or near"') == []


# -- the index itself ------------------------------------------------------------------------


async def test_the_search_index_is_in_place(profile: str, database_url: str) -> None:
    """The engine objects of migration 0004 exist at head and the search query uses them."""
    condition = matches(parse("deploy").terms, sqlite=profile == "embedded")
    statement = select(Message.id).where(condition)
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            compiled = statement.compile(conn.engine, compile_kwargs={"literal_binds": True})
            if profile == "embedded":
                names = set(
                    (
                        await conn.execute(
                            text("SELECT name FROM sqlite_master WHERE name LIKE 'messages_fts%'")
                        )
                    ).scalars()
                )
                assert {
                    "messages_fts",
                    "messages_fts_insert",
                    "messages_fts_update",
                    "messages_fts_delete",
                } <= names
                plan = (await conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}"))).all()
                assert any("VIRTUAL TABLE" in str(row) for row in plan), plan
            else:
                await conn.execute(text("SET enable_seqscan = off"))
                plan = (await conn.execute(text(f"EXPLAIN {compiled}"))).scalars().all()
                assert any("ix_messages_search" in line for line in plan), plan
    finally:
        await engine.dispose()
