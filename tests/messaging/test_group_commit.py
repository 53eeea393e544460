"""Group commit: concurrent sends share transactions, and a failing send in a shared batch
fails alone — the others commit, with gap-free sequences."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy import select

from tests.support.messaging import create_channel
from tests.support.users import add_member, create_api_key, create_workspace, register
from tidings.identity.policy import UserPrincipal
from tidings.messaging.messages import Draft
from tidings.messaging.models import ConversationMember, Message


def _batches() -> tuple[float, float]:
    count = REGISTRY.get_sample_value("tidings_message_send_batch_size_count") or 0.0
    total = REGISTRY.get_sample_value("tidings_message_send_batch_size_sum") or 0.0
    return count, total


async def test_concurrent_sends_share_transactions_and_fail_alone(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    owner = await register(client)
    workspace = await create_workspace(client, owner)

    async def channel(name: str) -> str:
        response = await client.post(
            f"/api/v1/workspaces/{workspace}/conversations",
            json={"kind": "public", "name": name},
            headers=owner.headers,
        )
        assert response.status_code == 201, response.text
        conversation_id: str = response.json()["id"]
        return conversation_id

    first, second, archived = await channel("first"), await channel("second"), await channel("old")
    assert (
        await client.post(f"/api/v1/conversations/{archived}/archive", headers=owner.headers)
    ).status_code == 200
    taken = await client.post(
        f"/api/v1/conversations/{first}/messages",
        json={"body": "original", "client_id": "taken"},
        headers=owner.headers,
    )
    assert taken.status_code == 201

    def send(conversation: str, body: str, **extra: Any) -> Any:
        return client.post(
            f"/api/v1/conversations/{conversation}/messages",
            json={"body": body, **extra},
            headers=owner.headers,
        )

    root = await send(second, "a thread")
    assert root.status_code == 201
    root_id = root.json()["id"]
    count_before, total_before = _batches()
    requests = (
        [send(first, f"first {i}") for i in range(20)]
        + [send(second, f"second {i}") for i in range(20)]
        + [send(archived, f"archived {i}") for i in range(5)]
        + [send(first, "different body", client_id="taken")]
        + [send(str(uuid.uuid4()), "nowhere")]
        + [send(second, "twice", client_id="same") for _ in range(2)]
        + [send(second, f"reply {i}", thread_root_id=root_id) for i in range(3)]
    )
    responses = await asyncio.gather(*requests)
    statuses = [r.status_code for r in responses]
    assert statuses[:40] == [201] * 40
    assert [r.json()["code"] for r in responses[40:45]] == ["conversation_archived"] * 5
    assert responses[45].json()["code"] == "client_id_reused"
    assert responses[46].json()["code"] == "conversation_not_found"
    # The same client_id twice in one batch: one message, and both answers name it.
    twice = responses[47:49]
    assert sorted(r.status_code for r in twice) == [200, 201]
    assert twice[0].json()["id"] == twice[1].json()["id"]
    assert [r.status_code for r in responses[49:]] == [201] * 3
    thread = await client.get(
        f"/api/v1/conversations/{second}/messages/{root_id}/thread", headers=owner.headers
    )
    assert thread.json()["root"]["reply_count"] == 3
    assert len(thread.json()["replies"]) == 3

    # second: the root, 20 sends, "twice" once, 3 replies (replies have sequences too).
    for conversation, expected in ((first, 21), (second, 25)):
        async with app.state.runtime.db.read() as session:
            seqs = list(
                await session.scalars(
                    select(Message.seq)
                    .where(Message.conversation_id == uuid.UUID(conversation))
                    .order_by(Message.seq)
                )
            )
        assert seqs == list(range(1, expected + 1))

    count_after, total_after = _batches()
    # 52 sends went through fewer transactions than sends: at least one batch held several.
    assert total_after - total_before == 52
    assert count_after - count_before < 52


async def test_a_batch_of_many_senders_checks_each_and_moves_each_read_position(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Senders of one batch are checked together (one statement): each gets its own answer,
    and each member's read position moves to its own last message."""
    owner = await register(client)
    workspace = await create_workspace(client, owner)
    members = [await add_member(client, owner, workspace, "member") for _ in range(4)]
    outsider = await register(client)
    key = {
        "Authorization": f"Bearer {await create_api_key(client, owner, workspace, ['messages:send'])}"
    }

    async def channel(kind: str, name: str) -> str:
        response = await client.post(
            f"/api/v1/workspaces/{workspace}/conversations",
            json={"kind": kind, "name": name},
            headers=owner.headers,
        )
        assert response.status_code == 201, response.text
        conversation_id: str = response.json()["id"]
        return conversation_id

    team, secret = await channel("public", "team"), await channel("private", "secret")
    for member in members:
        joined = await client.post(f"/api/v1/conversations/{team}/join", headers=member.headers)
        assert joined.status_code == 200, joined.text

    def send(conversation: str, headers: dict[str, str], body: str) -> Any:
        return client.post(
            f"/api/v1/conversations/{conversation}/messages", json={"body": body}, headers=headers
        )

    count_before, total_before = _batches()
    requests = [
        send(team, m.headers, f"{n} from {i}") for n in range(3) for i, m in enumerate(members)
    ]
    requests += [
        send(team, outsider.headers, "not in this workspace"),
        send(secret, members[0].headers, "not in this channel"),
        send(team, key, "from the key"),
        send(secret, owner.headers, "owner only"),
    ]
    responses = await asyncio.gather(*requests)
    assert [r.status_code for r in responses[:12]] == [201] * 12
    assert [r.status_code for r in responses[12:14]] == [404, 404]
    assert {r.json()["code"] for r in responses[12:14]} == {"conversation_not_found"}
    assert responses[14].status_code == 201
    assert responses[14].json()["sender_name"] == "ci"
    assert responses[15].status_code == 201
    count_after, total_after = _batches()
    assert total_after - total_before == 16
    assert count_after - count_before < 16  # several senders shared a batch

    own_last = {
        m.id: max(r.json()["seq"] for r in responses[i:12:4]) for i, m in enumerate(members)
    }
    async with app.state.runtime.db.read() as session:
        positions = dict(
            (
                await session.execute(
                    select(ConversationMember.user_id, ConversationMember.last_read_seq).where(
                        ConversationMember.conversation_id == uuid.UUID(team)
                    )
                )
            ).all()
        )
    for user_id, seq in own_last.items():
        assert positions[uuid.UUID(user_id)] == seq
    assert sorted(r.json()["seq"] for r in [*responses[:12], responses[14]]) == list(range(1, 14))


async def test_sends_a_few_loop_turns_apart_share_one_transaction(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Requests parsed together reach the queue a few loop turns apart (their body, the
    caller's check): the writer lets them queue before it takes a batch."""
    owner = await register(client)
    workspace = await create_workspace(client, owner)
    conversation = uuid.UUID((await create_channel(client, owner.headers, workspace))["id"])
    messages = app.state.runtime.messaging.messages
    principal = UserPrincipal(uuid.UUID(owner.id), uuid.UUID(owner.session_id))

    async def send_after(turns: int, index: int) -> int:
        for _ in range(turns):
            await asyncio.sleep(0)
        sent = await messages.send(principal, conversation, Draft(body=f"turn {index}"))
        seq: int = sent.message["seq"]
        return seq

    count_before, total_before = _batches()
    seqs = await asyncio.gather(*(send_after(index % 4, index) for index in range(12)))
    count_after, total_after = _batches()
    assert sorted(seqs) == list(range(1, 13))
    assert (count_after - count_before, total_after - total_before) == (1, 12)
