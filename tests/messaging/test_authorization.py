"""Every messaging route x every kind of caller → the expected status; nothing foreign leaks.

The expectations are written out by hand as the specification (they are not derived from
`tidings.messaging.access`), in the spirit of tests/identity/test_authorization_matrix.py.

The scene: `#plans`, a public channel made by the owner, with the member and the guest in it.
The admin and the bystander (a member) are in the workspace but not in the channel; the
outsider has a workspace of their own, where `key_foreign` comes from. Keys of the workspace
have one scope each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from tests.support.messaging import (
    Headers,
    add_members,
    create_channel,
    post_message,
    problem,
    send,
    unique_name,
)
from tests.support.users import Account, create_api_key, create_workspace, register

SECRET = "Zanzibar-Confidential"
C = "/api/v1/conversations"
USERS = ["owner", "admin", "member", "bystander", "guest"]
KEYS = ["key_read", "key_send", "key_conv"]
CALLERS = ["anonymous", "outsider", "key_foreign", *KEYS, *USERS]
READERS = frozenset({*USERS, *KEYS})  # all of the workspace may read #plans (the guest is in it)
# What people wrote: not for send-only or channel-managing keys.
MESSAGE_READERS = frozenset({*USERS, "key_read"})
IN_CHANNEL = frozenset({"owner", "member", "guest"})
MANAGERS = frozenset({"owner", "admin"})


@dataclass
class World:
    workspace: str
    foreign_workspace: str
    accounts: dict[str, Account]
    headers: dict[str, Headers] = field(default_factory=dict)
    channel: str = ""  # #plans
    message: str = ""  # the owner's message in #plans, a thread root with one reply
    shared: dict[int, str] = field(default_factory=dict)  # refused callers' target, per case

    def account(self, name: str) -> Account:
        return self.accounts[name]


async def build(client: httpx.AsyncClient) -> World:
    owner = await register(client)
    workspace = await create_workspace(client, owner, f"{SECRET} HQ")
    admin, member, bystander, guest = await add_members(
        client, owner, workspace, "admin", "member", "member", "guest"
    )
    outsider = await register(client)
    foreign = await create_workspace(client, outsider, "Elsewhere")
    accounts = {
        "owner": owner,
        "admin": admin,
        "member": member,
        "bystander": bystander,
        "guest": guest,
    }
    world = World(workspace, foreign, {**accounts, "outsider": outsider})
    world.headers = {name: account.headers for name, account in world.accounts.items()}
    world.headers["anonymous"] = {}
    for name, scopes in {
        "key_read": ["messages:read"],
        "key_send": ["messages:send"],
        "key_conv": ["conversations:write"],
    }.items():
        world.headers[name] = {
            "Authorization": f"Bearer {await create_api_key(client, owner, workspace, scopes)}"
        }
    world.headers["key_foreign"] = {
        "Authorization": f"Bearer {await create_api_key(client, outsider, foreign, ['admin'])}"
    }
    world.channel = await fresh_channel(client, world)
    world.message = (await send(client, owner.headers, world.channel, f"{SECRET} launch plan"))[
        "id"
    ]
    await send(client, member.headers, world.channel, "a reply", thread_root_id=world.message)
    return world


async def fresh_channel(client: httpx.AsyncClient, world: World, *, archived: bool = False) -> str:
    """A public channel like #plans: made by the owner, with the member and the guest."""
    owner = world.account("owner")
    response = await client.post(
        f"/api/v1/workspaces/{world.workspace}/conversations",
        json={
            "kind": "public",
            "name": unique_name("plans"),
            "topic": SECRET,
            "member_ids": [world.account("member").id, world.account("guest").id],
        },
        headers=owner.headers,
    )
    assert response.status_code == 201, response.text
    channel: str = response.json()["id"]
    if archived:
        archiving = await client.post(f"{C}/{channel}/archive", headers=owner.headers)
        assert archiving.status_code == 200, archiving.text
    return channel


Request = tuple[str, str, dict[str, object] | None]
# Called with whether the caller is expected to succeed: only then does a change stick, so only
# then is a target made for that one call; refused callers share one target per case.
Prepare = Callable[[httpx.AsyncClient, World, bool], Awaitable[Request]]


def on_plans(method: str, path: str = "", body: dict[str, object] | None = None) -> Prepare:
    """A request on #plans (`{m}` is the owner's message there)."""

    async def prepare(_: httpx.AsyncClient, world: World, __: bool) -> Request:
        return method, f"{C}/{world.channel}{path}".replace("{m}", world.message), body

    return prepare


def on_fresh(
    method: str,
    path: str = "",
    body: Callable[[World], dict[str, object]] | None = None,
    *,
    archived: bool = False,
) -> Prepare:
    """A request on a channel like #plans, made for the call when the call should change it."""

    async def prepare(client: httpx.AsyncClient, world: World, succeeds: bool) -> Request:
        if succeeds or id(prepare) not in world.shared:
            channel = await fresh_channel(client, world, archived=archived)
            if not succeeds:
                world.shared[id(prepare)] = channel
        else:
            channel = world.shared[id(prepare)]
        path_ = path.replace("{member}", world.account("member").id)
        return method, f"{C}/{channel}{path_}", body(world) if body else None

    return prepare


def in_workspace(method: str, path: str, body: Callable[[World], dict[str, object]]) -> Prepare:
    async def prepare(_: httpx.AsyncClient, world: World, __: bool) -> Request:
        return method, f"/api/v1/workspaces/{world.workspace}{path}", body(world)

    return prepare


def members_message(method: str) -> Prepare:
    """A message of the member's in #plans (someone else's, for most callers)."""

    async def prepare(client: httpx.AsyncClient, world: World, succeeds: bool) -> Request:
        if succeeds or id(prepare) not in world.shared:
            sent = await send(client, world.headers["member"], world.channel, f"{SECRET} draft")
            message: str = sent["id"]
            if not succeeds:
                world.shared[id(prepare)] = message
        else:
            message = world.shared[id(prepare)]
        return method, f"{C}/{world.channel}/messages/{message}", None

    return prepare


@dataclass(frozen=True)
class Case:
    name: str
    prepare: Prepare
    allowed: frozenset[str]
    user_only: bool = False  # the route needs a signed-in user: every key gets 403
    statuses: dict[str, int] = field(default_factory=dict)  # other expected refusals


def channel_body(kind: str) -> Callable[[World], dict[str, object]]:
    return lambda world: {
        "kind": kind,
        "name": unique_name("made"),
        "member_ids": [world.account("member").id],
    }


CAN_CREATE = frozenset({"owner", "admin", "member", "bystander", "key_conv"})
CONVERSATION_CASES = [
    Case(
        "create public channel",
        in_workspace("POST", "/conversations", channel_body("public")),
        CAN_CREATE,
    ),
    Case(
        "create private channel",
        in_workspace("POST", "/conversations", channel_body("private")),
        CAN_CREATE,
    ),
    Case(
        "open a DM",
        in_workspace(
            "POST",
            "/conversations",
            lambda w: {"kind": "direct", "member_ids": [w.account("member").id]},
        ),
        frozenset(USERS),
    ),
    Case("list mine", in_workspace("GET", "/conversations", lambda _: {}), READERS),
    Case("browse", in_workspace("GET", "/conversations?browse=true", lambda _: {}), READERS),
    Case("get", on_plans("GET"), READERS),
    Case("list members", on_plans("GET", "/members"), READERS),
    Case("pins", on_plans("GET", "/pins"), MESSAGE_READERS),
    Case("set topic", on_plans("PATCH", "", {"topic": "new topic"}), IN_CHANNEL | {"key_conv"}),
    Case(
        "rename",
        on_fresh("PATCH", "", lambda _: {"name": unique_name("renamed")}),
        MANAGERS | {"key_conv"},
    ),
    Case("archive", on_fresh("POST", "/archive"), MANAGERS | {"key_conv"}),
    Case("unarchive", on_fresh("POST", "/unarchive", archived=True), MANAGERS | {"key_conv"}),
    Case(
        "add members",
        on_fresh("POST", "/members", lambda w: {"user_ids": [w.account("bystander").id]}),
        (IN_CHANNEL - {"guest"}) | MANAGERS | {"key_conv"},
    ),
    Case(
        "remove a member",
        on_fresh("DELETE", "/members/{member}"),
        MANAGERS | {"key_conv", "member"},
    ),
    Case("join", on_fresh("POST", "/join"), frozenset(USERS), user_only=True),
    Case(
        "leave",
        on_fresh("POST", "/leave"),
        IN_CHANNEL,
        user_only=True,
        statuses={"admin": 404, "bystander": 404},  # not in it: member_not_found
    ),
    Case("mute", on_plans("PUT", "/mute", {"muted": True}), IN_CHANNEL, user_only=True),
    Case("mark read", on_plans("POST", "/read", {"seq": 1}), IN_CHANNEL, user_only=True),
]


MESSAGE_CASES = [
    Case("send", on_plans("POST", "/messages", {"body": "hello"}), IN_CHANNEL | {"key_send"}),
    Case("history", on_plans("GET", "/messages"), MESSAGE_READERS),
    Case("get message", on_plans("GET", "/messages/{m}"), MESSAGE_READERS),
    Case("edit history", on_plans("GET", "/messages/{m}/edits"), MESSAGE_READERS),
    Case("thread", on_plans("GET", "/messages/{m}/thread"), MESSAGE_READERS),
    Case(
        "edit the owner's message",
        on_plans("PATCH", "/messages/{m}", {"body": "edited"}),
        frozenset({"owner"}),
    ),
    Case("delete the member's message", members_message("DELETE"), MANAGERS | {"member"}),
    Case("follow", on_plans("PUT", "/messages/{m}/follow"), frozenset(USERS), user_only=True),
    Case("unfollow", on_plans("DELETE", "/messages/{m}/follow"), frozenset(USERS), user_only=True),
    Case("react", on_plans("PUT", "/messages/{m}/reactions/tada"), IN_CHANNEL, user_only=True),
    Case("unreact", on_plans("DELETE", "/messages/{m}/reactions/tada"), IN_CHANNEL, user_only=True),
    Case("pin", on_plans("PUT", "/messages/{m}/pin"), IN_CHANNEL | {"key_send"}),
    Case("unpin", on_plans("DELETE", "/messages/{m}/pin"), IN_CHANNEL | {"key_send"}),
]


def expected_status(case: Case, caller: str) -> int:
    if caller == "anonymous":
        return 401
    if caller in case.allowed:
        return 2
    if caller in case.statuses:
        return case.statuses[caller]
    if case.user_only and caller.startswith("key_"):
        return 403  # refused as a key before anything is looked up
    if caller in {"outsider", "key_foreign"}:
        return 404
    return 403


async def check_cases(client: httpx.AsyncClient, cases: list[Case]) -> None:
    world = await build(client)
    failures = []
    for case in cases:
        # Targets are made one by one; then every caller tries at once (they are independent:
        # each caller expected to succeed has a target of its own).
        expected = {caller: expected_status(case, caller) for caller in CALLERS}
        requests = [await case.prepare(client, world, expected[caller] == 2) for caller in CALLERS]
        responses = await asyncio.gather(
            *(
                client.request(method, url, json=body, headers=world.headers[caller])
                for caller, (method, url, body) in zip(CALLERS, requests, strict=True)
            )
        )
        for caller, response in zip(CALLERS, responses, strict=True):
            want = expected[caller]
            got = response.status_code // 100 if want == 2 else response.status_code
            if got != want:
                failures.append(
                    f"{case.name} / {caller}: expected {want}, got {response.status_code} {response.text[:160]}"
                )
                continue
            if response.status_code >= 400:
                assert response.headers["content-type"] == "application/problem+json", (
                    case.name,
                    caller,
                )
                assert response.json()["code"], (case.name, caller)
                assert SECRET not in response.text, (
                    f"{case.name} / {caller} saw the secret in a {response.status_code}"
                )
            elif caller in {"outsider", "key_foreign"}:
                assert SECRET not in response.text, (
                    f"{case.name} / {caller} saw the other workspace"
                )
    assert not failures, "\n".join(failures)


async def test_conversation_routes(client: httpx.AsyncClient) -> None:
    await check_cases(client, CONVERSATION_CASES)


async def test_message_routes(client: httpx.AsyncClient) -> None:
    await check_cases(client, MESSAGE_CASES)


async def test_creating_a_workspace_needs_a_user(client: httpx.AsyncClient) -> None:
    owner = await register(client)
    workspace = await create_workspace(client, owner)
    key = await create_api_key(client, owner, workspace, ["admin"])
    problem(await client.post("/api/v1/workspaces", json={"name": "x"}), 401, "unauthenticated")
    problem(
        await client.post(
            "/api/v1/workspaces", json={"name": "x"}, headers={"Authorization": f"Bearer {key}"}
        ),
        403,
        "user_required",
    )
    problem(
        await client.post("/api/v1/workspaces", json={"name": "  "}, headers=owner.headers),
        400,
        "invalid_name",
    )


async def test_foreign_objects_are_not_found(client: httpx.AsyncClient) -> None:
    """Another workspace's conversations, messages and people, reached from one's own."""
    owner = await register(client)
    workspace = await create_workspace(client, owner)
    mine = (await create_channel(client, owner.headers, workspace))["id"]
    key = {"Authorization": f"Bearer {await create_api_key(client, owner, workspace, ['admin'])}"}
    stranger = await register(client)
    elsewhere = await create_workspace(client, stranger, f"{SECRET} Ltd")
    theirs = (await create_channel(client, stranger.headers, elsewhere, "zanzibar"))["id"]
    their_message = (await send(client, stranger.headers, theirs, f"{SECRET} numbers"))["id"]

    refusals: list[tuple[httpx.Response, int, str]] = []
    for headers in (owner.headers, key):
        for method, path in [
            ("GET", f"{C}/{theirs}"),
            ("GET", f"{C}/{theirs}/messages"),
            ("GET", f"{C}/{theirs}/messages/{their_message}"),
            ("POST", f"{C}/{theirs}/archive"),
            ("DELETE", f"{C}/{theirs}/messages/{their_message}"),
        ]:
            refusals.append(
                (await client.request(method, path, headers=headers), 404, "conversation_not_found")
            )
        # Their message addressed through our own conversation.
        for method, path, body in [
            ("GET", "", None),
            ("PATCH", "", {"body": "mine now"}),
            ("DELETE", "", None),
            ("GET", "/edits", None),
            ("GET", "/thread", None),
            ("PUT", "/pin", None),
        ]:
            response = await client.request(
                method, f"{C}/{mine}/messages/{their_message}{path}", json=body, headers=headers
            )
            refusals.append((response, 404, "message_not_found"))
        reply = await post_message(client, headers, mine, "re", thread_root_id=their_message)
        refusals.append((reply, 404, "thread_not_found"))
        refusals.append(
            (
                await client.get(f"/api/v1/workspaces/{elsewhere}/conversations", headers=headers),
                404,
                "workspace_not_found",
            )
        )
        refusals.append(
            (
                await client.post(
                    f"{C}/{mine}/members", json={"user_ids": [stranger.id]}, headers=headers
                ),
                400,
                "not_workspace_members",
            )
        )
    for action in ("reactions/tada", "follow"):
        response = await client.put(
            f"{C}/{mine}/messages/{their_message}/{action}", headers=owner.headers
        )
        refusals.append((response, 404, "message_not_found"))
    for response, status, code in refusals:
        problem(response, status, code)
        assert SECRET not in response.text
        assert "zanzibar" not in response.text
    # Nothing of theirs changed.
    still = await client.get(f"{C}/{theirs}/messages/{their_message}", headers=stranger.headers)
    assert (still.json()["body"], still.json()["deleted"], still.json()["reactions"]) == (
        f"{SECRET} numbers",
        False,
        [],
    )


async def test_private_conversations_are_hidden_from_workspace_admins(
    client: httpx.AsyncClient,
) -> None:
    owner = await register(client)
    workspace = await create_workspace(client, owner)
    admin, a, b = await add_members(client, owner, workspace, "admin", "member", "member")
    for kind, people in (("direct", [b]), ("group", [b, owner]), ("private", [b])):
        body: dict[str, object] = {"kind": kind, "member_ids": [p.id for p in people]}
        if kind == "private":
            body["name"] = "hush"
        made = await client.post(
            f"/api/v1/workspaces/{workspace}/conversations", json=body, headers=a.headers
        )
        conversation = made.json()["id"]
        message = (await send(client, a.headers, conversation, SECRET))["id"]
        for method, path in [
            ("GET", ""),
            ("GET", "/messages"),
            ("POST", "/messages"),
            ("GET", f"/messages/{message}"),
            ("GET", "/members"),
            ("POST", "/join"),
            ("POST", "/members"),
            ("DELETE", f"/messages/{message}"),
            ("POST", "/archive"),
        ]:
            bodies = {"/members": {"user_ids": [admin.id]}, "/messages": {"body": "let me in"}}
            response = await client.request(
                method,
                f"{C}/{conversation}{path}",
                json=bodies.get(path) if method == "POST" else None,
                headers=admin.headers,
            )
            body_ = problem(response, 404, "conversation_not_found")
            assert SECRET not in str(body_), kind
        listed = await client.get(
            f"/api/v1/workspaces/{workspace}/conversations",
            params={"browse": "true"},
            headers=admin.headers,
        )
        assert conversation not in {c["id"] for c in listed.json()}, kind
