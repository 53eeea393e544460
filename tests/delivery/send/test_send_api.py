"""POST /api/v1/messages end to end: accepted durably, delivered by the worker, logged."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, func, select, text, update

from tests.delivery.providers.base import Reply
from tests.delivery.providers.webhook import WebhookReceiver
from tests.delivery.send.conftest import Team, add_webhook
from tests.support.helpers import eventually
from tests.support.messaging import problem
from tests.support.users import add_member, create_api_key, create_workspace, register
from tidings.delivery.connectors_service import Connectors
from tidings.delivery.models import Connector, OutboundMessage
from tidings.events.models import Event
from tidings.infra.crypto import Keyring, rotate_keys
from tidings.jobs.models import Job
from tidings.settings import Settings, decode_master_key

pytestmark = pytest.mark.anyio


def hello(**extra: Any) -> dict[str, Any]:
    return {"to": "https://example.test/inbox", "content": {"text": "hello"}, **extra}


async def send(
    client: httpx.AsyncClient, team: Team, body: dict[str, Any], **headers: str
) -> httpx.Response:
    return await client.post("/api/v1/messages", json=body, headers={**team.key_headers, **headers})


async def settled(client: httpx.AsyncClient, team: Team, message_id: str) -> dict[str, Any]:
    """The message once it has left `queued`/`sending` for good."""
    result: dict[str, Any] = {}

    async def check() -> bool:
        response = await client.get(f"/api/v1/messages/{message_id}", headers=team.key_headers)
        assert response.status_code == 200, response.text
        result.update(response.json())
        return result["status"] not in {"queued", "sending"}

    await eventually(check, within=15)
    return result


async def stream_types(app: FastAPI, message_id: str) -> list[str]:
    """The types of a message's events, in order."""
    async with app.state.runtime.db.read() as session:
        return list(
            await session.scalars(
                select(Event.type)
                .where(Event.stream_key == f"outbound:{message_id}")
                .order_by(Event.stream_seq)
            )
        )


async def test_a_send_is_accepted_then_delivered_signed_and_logged(
    client: httpx.AsyncClient, team: Team, receiver: WebhookReceiver, app: FastAPI
) -> None:
    await add_webhook(client, team, receiver)
    response = await send(client, team, hello(connector="hook", metadata={"order": 7}))
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "queued"

    message = await settled(client, team, accepted["id"])
    assert message["status"] == "sent"
    assert message["attempts"] == 1
    [attempt] = message["attempt_log"]
    assert attempt["outcome"] == "sent"
    assert attempt["provider_status"] == 200
    assert attempt["latency_ms"] > 0
    [request] = receiver.received
    assert request.headers["tidings-delivery-id"] == accepted["id"]
    assert request.json()["content"] == {"text": "hello"}
    assert request.json()["metadata"] == {"order": 7}

    types = await stream_types(app, accepted["id"])
    assert types == ["delivery.queued", "delivery.sending", "delivery.sent"]


async def test_retriable_failures_back_off_and_honour_retry_after(
    client: httpx.AsyncClient, team: Team, receiver: WebhookReceiver
) -> None:
    await add_webhook(client, team, receiver)
    receiver.script(
        Reply.json({"error": "down"}, 503),
        Reply.json({"error": "slow down"}, 429, headers={"Retry-After": "1"}),
    )
    accepted = (await send(client, team, hello(connector="hook"))).json()
    message = await settled(client, team, accepted["id"])
    assert message["status"] == "sent", message
    log = message["attempt_log"]
    assert [a["outcome"] for a in log] == ["retry", "retry", "sent"]
    assert [a["error_class"] for a in log] == ["server_error", "rate_limited", None]
    assert [a["provider_status"] for a in log] == [503, 429, 200]
    waited = datetime.fromisoformat(log[2]["started_at"]) - datetime.fromisoformat(
        log[1]["finished_at"]
    )
    assert waited >= timedelta(seconds=0.95), "Retry-After: 1 was not honoured"
    # One delivery id across every attempt: a provider that dedupes sees one message.
    assert {r.headers["tidings-delivery-id"] for r in receiver.received} == {accepted["id"]}


async def test_the_attempt_budget_ends_in_failed_with_the_last_error(
    client: httpx.AsyncClient, team: Team, receiver: WebhookReceiver
) -> None:
    await add_webhook(client, team, receiver)
    receiver.script(*[Reply.json({"error": "down"}, 500)] * 4)
    accepted = (await send(client, team, hello(connector="hook"))).json()
    message = await settled(client, team, accepted["id"])
    assert message["status"] == "failed"
    assert message["attempts"] == 4  # the budget (TIDINGS_DELIVERY_MAX_ATTEMPTS)
    log = message["attempt_log"]
    # Three failures in a row open the circuit (threshold 3 here): the fourth run skips it.
    assert [a["outcome"] for a in log] == ["retry", "retry", "retry", "skipped"]
    assert [a["error_class"] for a in log[:3]] == ["server_error"] * 3
    assert message["error_class"] == "connector_unavailable"
    assert "circuit open" in message["error"]
    assert len(receiver.received) == 3


async def test_a_permanent_error_fails_at_once(
    client: httpx.AsyncClient, team: Team, receiver: WebhookReceiver
) -> None:
    await add_webhook(client, team, receiver)
    receiver.script(Reply.json({"error": "bad payload"}, 400))
    accepted = (await send(client, team, hello(connector="hook"))).json()
    message = await settled(client, team, accepted["id"])
    assert message["status"] == "failed"
    assert message["error_class"] == "invalid_request"
    assert len(receiver.received) == 1


async def test_401_marks_the_connector_broken_with_an_event(
    client: httpx.AsyncClient, team: Team, receiver: WebhookReceiver, app: FastAPI
) -> None:
    connector = await add_webhook(client, team, receiver)
    receiver.script(Reply.json({"error": "who are you"}, 401))
    accepted = (await send(client, team, hello(connector="hook"))).json()
    message = await settled(client, team, accepted["id"])
    assert message["status"] == "failed"
    assert message["error_class"] == "auth"
    shown = await client.get(
        f"/api/v1/workspaces/{team.workspace_id}/connectors/hook", headers=team.owner.headers
    )
    assert shown.json()["status"] == "broken"
    async with app.state.runtime.db.read() as session:
        broken = await session.scalar(
            select(func.count())
            .select_from(Event)
            .where(
                Event.type == "connector.broken", Event.stream_key == f"connector:{connector['id']}"
            )
        )
    assert broken == 1
    # A broken connector is not tried again until someone fixes it.
    second = (await send(client, team, hello(connector="hook"))).json()
    assert (await settled(client, team, second["id"]))["status"] == "failed"
    assert len(receiver.received) == 1
    # A successful "test connection" puts it back in service.
    tested = await client.post(
        f"/api/v1/workspaces/{team.workspace_id}/connectors/hook/test", headers=team.owner.headers
    )
    assert tested.status_code == 200, tested.text
    assert tested.json()["ok"] is True
    shown = await client.get(
        f"/api/v1/workspaces/{team.workspace_id}/connectors/hook", headers=team.owner.headers
    )
    assert shown.json()["status"] == "active"


async def test_a_route_falls_back_and_the_circuit_opens(
    client: httpx.AsyncClient, team: Team
) -> None:
    async with WebhookReceiver() as primary, WebhookReceiver() as backup:
        await add_webhook(client, team, primary, name="primary")
        await add_webhook(client, team, backup, name="backup")
        created = await client.post(
            f"/api/v1/workspaces/{team.workspace_id}/routes",
            json={"name": "alerts", "connectors": ["primary", "backup"]},
            headers=team.owner.headers,
        )
        assert created.status_code == 201, created.text
        assert created.json()["connector_names"] == ["primary", "backup"]
        primary.script(*[Reply.json({"error": "down"}, 503)] * 10)
        ids = []
        for _ in range(5):
            accepted = (await send(client, team, hello(route="alerts"))).json()
            message = await settled(client, team, accepted["id"])
            assert message["status"] == "sent"
            assert message["connector_id"] == (await _connector_id(client, team, "backup"))
            ids.append(accepted["id"])
        # The threshold is 3 failures: after them the primary is skipped, not called.
        assert len(primary.received) == 3
        assert len(backup.received) == 5
        last = await client.get(f"/api/v1/messages/{ids[-1]}", headers=team.key_headers)
        assert [a["outcome"] for a in last.json()["attempt_log"]] == ["skipped", "sent"]
        stats = await client.get(
            f"/api/v1/workspaces/{team.workspace_id}/connectors/primary/stats",
            headers=team.owner.headers,
        )
        body = stats.json()
        assert body["failed"] == {"server_error": 3}
        assert body["circuit"] == "open"
        backup_stats = await client.get(
            f"/api/v1/workspaces/{team.workspace_id}/connectors/backup/stats",
            headers=team.owner.headers,
        )
        assert backup_stats.json()["sent"] == 5
        assert backup_stats.json()["latency_p50_ms"] > 0


async def _connector_id(client: httpx.AsyncClient, team: Team, name: str) -> str:
    response = await client.get(
        f"/api/v1/workspaces/{team.workspace_id}/connectors/{name}", headers=team.owner.headers
    )
    connector_id: str = response.json()["id"]
    return connector_id


async def test_idempotency_key_replays_the_first_answer_and_refuses_another_body(
    client: httpx.AsyncClient, team: Team, receiver: WebhookReceiver, app: FastAPI
) -> None:
    await add_webhook(client, team, receiver)
    key = str(uuid.uuid4())
    first = await send(client, team, hello(connector="hook"), **{"Idempotency-Key": key})
    again = await send(client, team, hello(connector="hook"), **{"Idempotency-Key": key})
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    other = await send(
        client, team, hello(connector="hook", to="someone-else"), **{"Idempotency-Key": key}
    )
    problem(other, 409, "idempotency_key_reused")
    async with app.state.runtime.db.read() as session:
        count = await session.scalar(select(func.count()).select_from(OutboundMessage))
    assert count == 1


async def test_concurrent_identical_requests_make_one_message(
    client: httpx.AsyncClient, team: Team, receiver: WebhookReceiver, app: FastAPI
) -> None:
    await add_webhook(client, team, receiver)
    key = str(uuid.uuid4())
    responses = await asyncio.gather(
        *(send(client, team, hello(connector="hook"), **{"Idempotency-Key": key}) for _ in range(8))
    )
    assert {r.status_code for r in responses} == {202}, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    await settled(client, team, responses[0].json()["id"])
    async with app.state.runtime.db.read() as session:
        count = await session.scalar(select(func.count()).select_from(OutboundMessage))
    assert count == 1
    assert len(receiver.received) == 1


async def test_a_batch_is_all_or_nothing(
    client: httpx.AsyncClient, team: Team, receiver: WebhookReceiver, app: FastAPI
) -> None:
    await add_webhook(client, team, receiver)
    bad = await client.post(
        "/api/v1/messages/batch",
        json={"messages": [hello(connector="hook"), hello(connector="missing")]},
        headers=team.key_headers,
    )
    body = problem(bad, 404, "connector_not_found")
    assert body["index"] == 1
    async with app.state.runtime.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(OutboundMessage)) == 0
        assert await session.scalar(select(func.count()).select_from(Job)) == 0

    good = await client.post(
        "/api/v1/messages/batch",
        json={"messages": [hello(connector="hook", to=f"r{i}") for i in range(25)]},
        headers=team.key_headers,
    )
    assert good.status_code == 202, good.text
    ids = [m["id"] for m in good.json()["messages"]]
    assert len(set(ids)) == 25
    for message_id in ids:
        assert (await settled(client, team, message_id))["status"] == "sent"
    assert len(receiver.received) == 25


async def test_a_scheduled_send_waits_and_can_be_cancelled(
    client: httpx.AsyncClient, team: Team, receiver: WebhookReceiver, app: FastAPI
) -> None:
    await add_webhook(client, team, receiver)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    accepted = (await send(client, team, hello(connector="hook", send_at=later))).json()
    assert accepted["status"] == "queued"
    assert accepted["send_at"] is not None
    cancelled = await client.post(
        f"/api/v1/messages/{accepted['id']}/cancel", headers=team.key_headers
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    again = await client.post(f"/api/v1/messages/{accepted['id']}/cancel", headers=team.key_headers)
    problem(again, 409, "message_not_cancellable")

    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    timed = (await send(client, team, hello(connector="hook", send_at=soon))).json()
    message = await settled(client, team, timed["id"])
    assert message["status"] == "sent"
    assert datetime.fromisoformat(message["sent_at"]) >= datetime.fromisoformat(soon)
    assert len(receiver.received) == 1
    # Its job was claimed when due (not handed over at the accept): the first attempt sends
    # at once and the `sending` mark, written meanwhile, still comes before the outcome.
    assert message["attempts"] == 1
    types = await stream_types(app, timed["id"])
    assert types == ["delivery.queued", "delivery.sending", "delivery.sent"]


async def test_the_log_lists_with_filters_and_cursor(
    client: httpx.AsyncClient, team: Team, receiver: WebhookReceiver
) -> None:
    await add_webhook(client, team, receiver)
    receiver.script(Reply.json({"error": "bad"}, 400))
    first = (await send(client, team, hello(connector="hook", to="alice"))).json()
    await settled(client, team, first["id"])
    ids = [
        (await send(client, team, hello(connector="hook", to="bob"))).json()["id"] for _ in range(3)
    ]
    for message_id in ids:
        await settled(client, team, message_id)
    page = await client.get("/api/v1/messages?limit=2", headers=team.key_headers)
    assert page.status_code == 200, page.text
    assert [m["id"] for m in page.json()["items"]] == ids[::-1][:2]
    rest = await client.get(
        f"/api/v1/messages?limit=2&cursor={page.json()['next_cursor']}", headers=team.key_headers
    )
    assert [m["id"] for m in rest.json()["items"]] == [ids[0], first["id"]]
    failed = await client.get("/api/v1/messages?status=failed", headers=team.key_headers)
    assert [m["id"] for m in failed.json()["items"]] == [first["id"]]
    to_bob = await client.get("/api/v1/messages?to=bob", headers=team.key_headers)
    assert len(to_bob.json()["items"]) == 3
    problem(
        await client.get("/api/v1/messages?status=nope", headers=team.key_headers),
        400,
        "validation_failed",
    )
    problem(
        await client.get("/api/v1/messages?cursor=zzz", headers=team.key_headers),
        400,
        "invalid_cursor",
    )


async def test_bad_requests_are_refused_with_stable_codes(
    client: httpx.AsyncClient, team: Team, receiver: WebhookReceiver
) -> None:
    await add_webhook(client, team, receiver)
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"to": "x", "content": {"text": "hi"}}, 400, "target_required"),
        (
            {"to": "x", "connector": "hook", "route": "r", "content": {"text": "hi"}},
            400,
            "target_required",
        ),
        ({"to": "x", "connector": "hook"}, 400, "content_required"),
        (
            {"to": "x", "connector": "missing", "content": {"text": "hi"}},
            404,
            "connector_not_found",
        ),
        ({"to": "x", "route": "missing", "content": {"text": "hi"}}, 404, "route_not_found"),
        ({"to": "", "connector": "hook", "content": {"text": "hi"}}, 400, "validation_failed"),
        (
            {"to": "x", "connector": "hook", "content": {"text": "hi"}, "extra": 1},
            400,
            "validation_failed",
        ),
        (
            {
                "to": "x",
                "connector": "hook",
                "content": {"text": "hi"},
                "send_at": "2030-01-01T00:00:00",
            },
            400,
            "validation_failed",
        ),
    ]
    for body, status, code in cases:
        problem(await send(client, team, body), status, code)
    problem(
        await send(client, team, hello(connector="hook"), **{"Idempotency-Key": " "}),
        400,
        "invalid_idempotency_key",
    )
    problem(
        await client.post("/api/v1/messages", json=hello(connector="hook")), 401, "unauthenticated"
    )


async def test_authorization_is_checked_on_every_object_across_workspaces(
    client: httpx.AsyncClient, team: Team, receiver: WebhookReceiver
) -> None:
    await add_webhook(client, team, receiver)
    accepted = (await send(client, team, hello(connector="hook"))).json()

    stranger = await register(client)
    their_workspace = await create_workspace(client, stranger, "Other")
    their_key = await create_api_key(client, stranger, their_workspace, ["messages:send"])
    theirs = {"Authorization": f"Bearer {their_key}"}
    # Another workspace's key sees neither our messages nor our connectors.
    problem(
        await client.get(f"/api/v1/messages/{accepted['id']}", headers=theirs),
        404,
        "message_not_found",
    )
    problem(
        await client.post("/api/v1/messages", json=hello(connector="hook"), headers=theirs),
        404,
        "connector_not_found",
    )
    problem(
        await client.post(f"/api/v1/messages/{accepted['id']}/cancel", headers=theirs),
        404,
        "message_not_found",
    )
    problem(
        await client.get(f"/api/v1/workspaces/{team.workspace_id}/connectors", headers=theirs),
        404,
        "workspace_not_found",
    )
    # A key of ours without messages:send may not send.
    reader = await create_api_key(client, team.owner, team.workspace_id, ["messages:read"])
    problem(
        await client.post(
            "/api/v1/messages",
            json=hello(connector="hook"),
            headers={"Authorization": f"Bearer {reader}"},
        ),
        403,
        "forbidden",
    )
    # Guests may not send or read the log; members may send but not manage connectors.
    guest = await add_member(client, team.owner, team.workspace_id, "guest")
    as_user = hello(connector="hook", workspace_id=team.workspace_id)
    problem(
        await client.post("/api/v1/messages", json=as_user, headers=guest.headers), 403, "forbidden"
    )
    member = await add_member(client, team.owner, team.workspace_id, "member")
    sent = await client.post("/api/v1/messages", json=as_user, headers=member.headers)
    assert sent.status_code == 202, sent.text
    problem(
        await client.post("/api/v1/messages", json=hello(connector="hook"), headers=member.headers),
        400,
        "workspace_required",
    )
    problem(
        await client.delete(
            f"/api/v1/workspaces/{team.workspace_id}/connectors/hook", headers=member.headers
        ),
        403,
        "forbidden",
    )
    # The stranger, as a user, naming our workspace: it does not exist for them.
    problem(
        await client.post("/api/v1/messages", json=as_user, headers=stranger.headers),
        404,
        "workspace_not_found",
    )


async def test_credentials_are_sealed_masked_and_never_shown(
    client: httpx.AsyncClient, team: Team, receiver: WebhookReceiver, app: FastAPI
) -> None:
    connector = await add_webhook(client, team, receiver)
    secret = receiver.secret
    assert connector["credentials"]["signing_secret"] == "••••" + secret[-4:]
    listed = await client.get(
        f"/api/v1/workspaces/{team.workspace_id}/connectors", headers=team.owner.headers
    )
    assert secret not in listed.text
    async with app.state.runtime.db.read() as session:
        raw = (
            await session.execute(
                text("SELECT * FROM connectors WHERE id = :id"),
                {
                    "id": uuid.UUID(connector["id"])
                    if app.state.runtime.db.dialect == "postgresql"
                    else uuid.UUID(connector["id"]).hex
                },
            )
        ).one()
    assert all(secret.encode() not in (v if isinstance(v, bytes) else str(v).encode()) for v in raw)
    async with app.state.runtime.db.read() as session:
        row = await session.get(Connector, uuid.UUID(connector["id"]))
        assert row is not None
        assert row.credentials_key_id is not None


async def test_reading_connectors_opens_no_credentials(
    client: httpx.AsyncClient,
    team: Team,
    receiver: WebhookReceiver,
    app: FastAPI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The list and one connector show masks written with the credentials: a read never
    unseals them; a row from before masks were stored is masked from its sealed credentials."""
    connector = await add_webhook(client, team, receiver)
    runtime = app.state.runtime
    opened: list[object] = []
    real_open = runtime.keyring.open

    async def counting_open(*args: Any, **kwargs: Any) -> bytes:
        opened.append(args)
        return bytes(await real_open(*args, **kwargs))

    monkeypatch.setattr(runtime.keyring, "open", counting_open)
    base = f"/api/v1/workspaces/{team.workspace_id}/connectors"
    listed = await client.get(base, headers=team.owner.headers)
    one = await client.get(f"{base}/{connector['id']}", headers=team.owner.headers)
    renamed = await client.patch(
        f"{base}/{connector['id']}", json={"name": "hook2"}, headers=team.owner.headers
    )
    masked = "••••" + receiver.secret[-4:]
    assert listed.json()[0]["credentials"]["signing_secret"] == masked
    assert one.json()["credentials"]["signing_secret"] == masked
    assert renamed.json()["credentials"]["signing_secret"] == masked
    assert opened == []
    async with runtime.db.transaction() as session:  # as revision 0005 left it
        await session.execute(
            update(Connector)
            .where(Connector.id == uuid.UUID(connector["id"]))
            .values(credentials_masked=None)
        )
    legacy = await client.get(f"{base}/{connector['id']}", headers=team.owner.headers)
    assert legacy.json()["credentials"]["signing_secret"] == masked
    assert len(opened) == 1


async def test_connector_settings_are_validated(client: httpx.AsyncClient, team: Team) -> None:
    url = f"/api/v1/workspaces/{team.workspace_id}/connectors"
    problem(
        await client.post(
            url, json={"type": "carrier-pigeon", "name": "x"}, headers=team.owner.headers
        ),
        400,
        "connector_type_unknown",
    )
    bad = await client.post(
        url,
        json={
            "type": "webhook",
            "name": "x",
            "settings": {},
            "credentials": {"signing_secret": "s" * 20},
        },
        headers=team.owner.headers,
    )
    body = problem(bad, 400, "validation_failed")
    assert body["errors"][0]["field"] == "settings.url"
    short = await client.post(
        url,
        json={
            "type": "webhook",
            "name": "x",
            "settings": {"url": "https://example.com/h"},
            "credentials": {"signing_secret": "hunter2"},
        },
        headers=team.owner.headers,
    )
    body = problem(short, 400, "validation_failed")
    assert "hunter2" not in short.text  # the rejected secret is not echoed back
    types = await client.get(
        f"/api/v1/workspaces/{team.workspace_id}/connector-types", headers=team.owner.headers
    )
    assert "webhook" in {t["type"] for t in types.json()}


async def test_keys_rotate_while_sends_are_in_flight(
    client: httpx.AsyncClient,
    team: Team,
    receiver: WebhookReceiver,
    app: FastAPI,
    settings: Settings,
) -> None:
    connector = await add_webhook(client, team, receiver)
    runtime = app.state.runtime
    first_key = runtime.keyring.primary_key_id

    # Providers answer slowly, so deliveries are in flight while the keys rotate.
    receiver.script(*[Reply.slow(0.2)] * 30)

    async def sender(first: int) -> list[str]:
        ids = []
        for i in range(first, first + 15):
            response = await send(client, team, hello(connector="hook", to=f"r{i}"))
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
            # As if each send ran in a fresh worker: credentials are opened again every time.
            runtime.delivery.connectors._instances.clear()
        return ids

    ids, first_rotation = await asyncio.gather(sender(0), rotate_keys(runtime.keyring))
    more, second_rotation = await asyncio.gather(sender(15), rotate_keys(runtime.keyring))
    ids += more
    reports = [first_rotation, second_rotation]
    for message_id in ids:
        assert (await settled(client, team, message_id))["status"] == "sent"
    assert len(receiver.received) == 30
    assert all(not r.rewrap.failed for r in reports)
    # The record is on the newest key, and a process that starts now opens it.
    async with runtime.db.read() as session:
        row = await session.get(Connector, uuid.UUID(connector["id"]))
    assert row is not None
    assert row.credentials_key_id == reports[-1].new_key_id != first_key
    fresh = Connectors(
        runtime.db,
        Keyring(runtime.db, decode_master_key(settings.master_key)),
        runtime.delivery.context,
    )
    instance = await fresh.instance(row)
    assert instance.credentials.signing_secret.get_secret_value() == receiver.secret  # type: ignore[attr-defined]


async def test_a_template_send_renders_at_accept_with_the_chosen_version(
    client: httpx.AsyncClient, team: Team, receiver: WebhookReceiver
) -> None:
    await add_webhook(client, team, receiver)
    templates = f"/api/v1/workspaces/{team.workspace_id}/templates"
    created = await client.post(
        templates,
        json={
            "name": "welcome",
            "parts": {
                "email": {"subject": "Hi {{ name }}", "html": "<p>Hi {{ name }}</p>"},
                "sms": {"text": "Hi {{ name }}, code {{ code }}"},
            },
        },
        headers=team.owner.headers,
    )
    assert created.status_code == 201, created.text
    replaced = await client.put(
        f"{templates}/welcome",
        json={"parts": {"sms": {"text": "v2: {{ name }}"}}},
        headers=team.owner.headers,
    )
    assert replaced.status_code == 200, replaced.text

    variables = {"name": "<Ada>", "code": 42}
    pinned = await send(
        client,
        team,
        {
            "to": "x",
            "connector": "hook",
            "template": "welcome",
            "template_version": 1,
            "variables": variables,
        },
    )
    assert pinned.status_code == 202, pinned.text
    message = await settled(client, team, pinned.json()["id"])
    assert message["template_version"] == 1
    # A webhook gets every part, rendered; HTML is escaped, text is not.
    assert message["content"]["email"]["html"] == "<p>Hi &lt;Ada&gt;</p>"
    assert message["content"]["sms"]["text"] == "Hi <Ada>, code 42"
    assert receiver.received[0].json()["content"]["sms"]["text"] == "Hi <Ada>, code 42"

    latest = await send(
        client,
        team,
        {"to": "x", "connector": "hook", "template": "welcome", "variables": variables},
    )
    message = await settled(client, team, latest.json()["id"])
    assert message["template_version"] == 2
    assert message["content"]["sms"]["text"] == "v2: <Ada>"

    missing = await send(
        client,
        team,
        {
            "to": "x",
            "connector": "hook",
            "template": "welcome",
            "template_version": 1,
            "variables": {"name": "A"},
        },
    )
    body = problem(missing, 400, "template_variable_missing")
    assert "code" in body["detail"]
    problem(
        await send(client, team, {"to": "x", "connector": "hook", "template": "nope"}),
        404,
        "template_not_found",
    )


async def test_per_connector_concurrency_and_rate_hold(
    client: httpx.AsyncClient, team: Team
) -> None:
    async with WebhookReceiver() as serial, WebhookReceiver() as paced:
        await add_webhook(client, team, serial, name="serial", max_concurrency=1)
        await add_webhook(client, team, paced, name="paced", rate_per_second=4)
        serial.script(*[Reply.slow(0.1)] * 6)
        batch = await client.post(
            "/api/v1/messages/batch",
            json={
                "messages": [hello(connector="serial", to=f"s{i}") for i in range(6)]
                + [hello(connector="paced", to=f"p{i}") for i in range(8)]
            },
            headers=team.key_headers,
        )
        assert batch.status_code == 202, batch.text
        messages = [await settled(client, team, m["id"]) for m in batch.json()["messages"]]
    assert {m["status"] for m in messages} == {"sent"}
    # One at a time: no two provider calls of `serial` overlap.
    spans = sorted(
        (
            datetime.fromisoformat(m["attempt_log"][0]["started_at"]),
            datetime.fromisoformat(m["attempt_log"][0]["finished_at"]),
        )
        for m in messages[:6]
    )
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans))
    # 4 per second with a burst of 4: eight calls need at least a second.
    starts = sorted(datetime.fromisoformat(m["attempt_log"][0]["started_at"]) for m in messages[6:])
    assert starts[-1] - starts[0] >= timedelta(seconds=0.9)


async def test_concurrent_single_sends_share_transactions_without_sharing_failures(
    client: httpx.AsyncClient, team: Team, receiver: WebhookReceiver, app: FastAPI
) -> None:
    await add_webhook(client, team, receiver)
    bodies = [hello(connector="hook", to=f"r{i}") for i in range(30)]
    bodies[7] = hello(connector="missing")
    bodies[19] = hello(connector="hook", template="missing-template")
    responses = await asyncio.gather(*(send(client, team, body) for body in bodies))
    problem(responses[7], 404, "connector_not_found")
    problem(responses[19], 400, "content_required")
    accepted = [r for i, r in enumerate(responses) if i not in (7, 19)]
    assert {r.status_code for r in accepted} == {202}
    for response in accepted:
        assert (await settled(client, team, response.json()["id"]))["status"] == "sent"
    async with app.state.runtime.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(OutboundMessage)) == 28
    assert len(receiver.received) == 28


async def test_an_expired_connector_row_is_read_once_for_concurrent_deliveries(
    app: FastAPI, client: httpx.AsyncClient, team: Team, receiver: WebhookReceiver
) -> None:
    connector = await add_webhook(client, team, receiver)
    connector_id = uuid.UUID(connector["id"])
    runtime = app.state.runtime
    connectors: Connectors = runtime.delivery.connectors
    reads: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM connectors" in statement:
            reads.append(statement)

    engine = runtime.db.read_engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        rows = await asyncio.gather(
            *(connectors.load_for_delivery(connector_id) for _ in range(20))
        )
        assert {row.id for row in rows if row is not None} == {connector_id}
        assert len(reads) == 1  # one read for all twenty, not one each
        await asyncio.gather(*(connectors.load_for_delivery(connector_id) for _ in range(20)))
        assert len(reads) == 1  # then the cached row

        renamed = await client.patch(
            f"/api/v1/workspaces/{team.workspace_id}/connectors/{connector_id}",
            json={"name": "renamed"},
            headers=team.owner.headers,
        )
        assert renamed.status_code == 200, renamed.text
        row = await connectors.load_for_delivery(connector_id)
        assert row is not None
        assert row.name == "renamed"  # a change made here is seen at once
    finally:
        event.remove(engine, "before_cursor_execute", count)


async def test_a_renamed_or_deleted_connector_is_seen_by_the_next_send_at_once(
    client: httpx.AsyncClient, team: Team, receiver: WebhookReceiver
) -> None:
    """Sends look a named connector up once a second per process; changes made through this
    process drop what it remembered."""
    created = await add_webhook(client, team, receiver)
    assert (await send(client, team, hello(connector="hook"))).status_code == 202
    assert (await send(client, team, hello(connector=created["id"]))).status_code == 202
    renamed = await client.patch(
        f"/api/v1/workspaces/{team.workspace_id}/connectors/hook",
        json={"name": "renamed"},
        headers=team.owner.headers,
    )
    assert renamed.status_code == 200, renamed.text
    problem(await send(client, team, hello(connector="hook")), 404, "connector_not_found")
    assert (await send(client, team, hello(connector="renamed"))).status_code == 202
    deleted = await client.delete(
        f"/api/v1/workspaces/{team.workspace_id}/connectors/renamed", headers=team.owner.headers
    )
    assert deleted.status_code == 204, deleted.text
    problem(await send(client, team, hello(connector="renamed")), 404, "connector_not_found")
    problem(await send(client, team, hello(connector=created["id"])), 404, "connector_not_found")
