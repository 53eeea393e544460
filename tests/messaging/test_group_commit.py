"""Group commit: concurrent sends share transactions, and a failing send in a shared batch
fails alone — the others commit, with gap-free sequences."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client import REGISTRY

from tests.support.users import create_workspace, register


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
    count_before, total_before = _batches()

    def send(conversation: str, body: str, **extra: Any) -> Any:
        return client.post(
            f"/api/v1/conversations/{conversation}/messages",
            json={"body": body, **extra},
            headers=owner.headers,
        )

    requests = (
        [send(first, f"first {i}") for i in range(20)]
        + [send(second, f"second {i}") for i in range(20)]
        + [send(archived, f"archived {i}") for i in range(5)]
        + [send(first, "different body", client_id="taken")]
        + [send(str(uuid.uuid4()), "nowhere")]
    )
    responses = await asyncio.gather(*requests)
    statuses = [r.status_code for r in responses]
    assert statuses[:40] == [201] * 40
    assert [r.json()["code"] for r in responses[40:45]] == ["conversation_archived"] * 5
    assert responses[45].json()["code"] == "client_id_reused"
    assert responses[46].json()["code"] == "conversation_not_found"

    for conversation, expected in ((first, 21), (second, 20)):
        page = await client.get(
            f"/api/v1/conversations/{conversation}/messages",
            params={"limit": 100},
            headers=owner.headers,
        )
        seqs = [m["seq"] for m in page.json()["messages"]]
        assert seqs == list(range(1, expected + 1))

    count_after, total_after = _batches()
    # 47 sends went through fewer transactions than sends: at least one batch held several.
    assert total_after - total_before == 47
    assert count_after - count_before < 47
