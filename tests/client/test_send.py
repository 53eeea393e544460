"""The SDK's send API clients against a real server (the live uvicorn server, both profiles)
delivering to a local webhook receiver: send and wait, batch, the log and its pages, cancel,
typed problems, and safe retries — an answer lost after the server committed, 503/429 with
Retry-After — which never send twice. The sync client runs in a worker thread against the same
server."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.client.conftest import LiveServer
from tests.client.team import PASSWORD, SdkFactory, person
from tests.delivery.providers.webhook import WebhookReceiver
from tests.delivery.send.conftest import receiver, settings_values
from tidings.client import (
    RetryPolicy,
    SendClient,
    SyncSendClient,
    TidingsClient,
    TidingsError,
)
from tidings.client.send_models import SendItem

# The send API tests' settings (loopback providers allowed, fast backoff, a worker in the app)
# and their webhook receiver.
__all__ = ["receiver", "settings_values"]

MESSAGES = "/api/v1/messages"
LOSE = "lose"  # a script step: forward the request, then lose the answer (a ReadError)
_recipients = itertools.count(1)


def recipient() -> str:
    return f"https://example.test/inbox/{next(_recipients)}"


@dataclass
class Sender:
    """A workspace with a webhook connector `hook`, its owner's client, and an API key."""

    owner: TidingsClient
    workspace_id: uuid.UUID
    key: str
    api: SendClient  # with the API key
    base_url: str

    def client(self, transport: httpx.AsyncBaseTransport, **options: Any) -> SendClient:
        return SendClient(self.base_url, api_key=self.key, transport=transport, **options)


@pytest.fixture
async def sender(
    live: LiveServer, sdk: SdkFactory, receiver: WebhookReceiver
) -> AsyncIterator[Sender]:
    owner = (await person(sdk, "owner")).client
    workspace = await owner.create_workspace("Acme")
    key = await owner.create_api_key(workspace.id, "app", ["messages:send"])
    await owner.send_api(workspace.id).create_connector(
        "webhook",
        "hook",
        settings={"url": receiver.url},
        credentials={"signing_secret": receiver.secret},
    )
    async with SendClient(live.base_url, api_key=key.key) as api:
        yield Sender(owner, workspace.id, key.key, api, live.base_url)


# -- transports that misbehave on cue ---------------------------------------------------------


@dataclass
class Script:
    """What the POSTs to `path` meet, in order: `LOSE`, or an answer given without forwarding
    (made by a function, one fresh response each); once the plan is done, the server."""

    path: str
    plan: list[Any]
    seen: list[httpx.Request] = field(default_factory=list)
    lost: list[httpx.Response] = field(default_factory=list)  # the answers a LOSE swallowed

    def step(self, request: httpx.Request) -> Any:
        if request.method != "POST" or request.url.path != self.path:
            return None
        self.seen.append(request)
        return self.plan.pop(0) if self.plan else None

    @property
    def keys(self) -> list[str | None]:
        return [r.headers.get("idempotency-key") for r in self.seen]

    def lose(self, request: httpx.Request, response: httpx.Response) -> httpx.ReadError:
        self.lost.append(response)
        return httpx.ReadError("connection reset while reading the answer", request=request)


class AsyncScripted(httpx.AsyncBaseTransport):
    def __init__(self, script: Script) -> None:
        self.script = script
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        step = self.script.step(request)
        if callable(step):
            answer: httpx.Response = step()
            return answer
        response = await self._inner.handle_async_request(request)
        if step == LOSE:
            await response.aread()  # the server committed and answered; the client never hears
            raise self.script.lose(request, response)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class SyncScripted(httpx.BaseTransport):
    def __init__(self, script: Script) -> None:
        self.script = script
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        step = self.script.step(request)
        response = self._inner.handle_request(request)
        if step == LOSE:
            response.read()
            raise self.script.lose(request, response)
        return response

    def close(self) -> None:
        self._inner.close()


def refused(status: int, retry_after: str) -> Any:
    """An answer the server never saw, as a proxy or an overloaded server gives it."""
    problem = {"status": status, "code": "try_later", "detail": "Busy."}
    return lambda: httpx.Response(status, headers={"retry-after": retry_after}, json=problem)


# -- the async client -------------------------------------------------------------------------


async def test_send_then_wait_until_sent_with_connectors_and_routes(
    sender: Sender, receiver: WebhookReceiver, sdk: SdkFactory
) -> None:
    to = recipient()
    accepted = await sender.api.send(
        to, connector="hook", content={"text": "hello"}, metadata={"order": 7}
    )
    assert (accepted.status, accepted.replayed) == ("queued", False)

    message = await sender.api.wait(accepted.id, timeout=20)
    assert message.status == "sent"
    assert message.settled
    assert (message.to, message.metadata) == (to, {"order": 7})
    assert message.content["webhook"] == {"text": "hello"}  # per channel
    assert message.attempt_log is not None
    [attempt] = message.attempt_log
    assert (attempt.outcome, attempt.provider_status) == ("sent", 200)
    [request] = receiver.received
    assert request.headers["tidings-delivery-id"] == str(accepted.id)

    # A signed-in user through TidingsClient.send_api: connectors, routes, a send by route.
    admin = sender.owner.send_api(sender.workspace_id)
    [hook] = await admin.connectors()
    assert (hook.name, hook.type, hook.status) == ("hook", "webhook", "active")
    assert (await admin.connector("hook")).id == hook.id
    assert (await admin.test_connector(hook.id)).ok
    route = await admin.create_route("main", ["hook"])
    assert route.connector_names == ["hook"]
    assert [r.id for r in await admin.routes()] == [route.id]
    by_route = await admin.send(recipient(), route="main", content={"text": "via route"})
    routed = await admin.wait(by_route.id, timeout=20)
    assert (routed.status, routed.route_id, routed.connector_id) == ("sent", route.id, hook.id)
    stats = await admin.connector_stats("hook", hours=1)
    assert stats.sent >= 2

    # send_api() shares the TidingsClient's token refresh: here it needs one before anything.
    tokens = await sdk().login((await sender.owner.me()).email, PASSWORD)
    renewing = sdk(refresh_token=tokens.refresh_token)
    assert [c.name for c in await renewing.send_api(sender.workspace_id).connectors()] == ["hook"]
    assert renewing.refresh_token not in (None, tokens.refresh_token)


async def test_batch_get_and_the_log_page_by_page(sender: Sender) -> None:
    items: list[SendItem] = [
        {"to": recipient(), "connector": "hook", "content": {"text": f"n{i}"}} for i in range(5)
    ]
    accepted = await sender.api.send_batch(items, idempotency_key="batch-1")
    assert len({a.id for a in accepted}) == 5
    assert not any(a.replayed for a in accepted)
    again = await sender.api.send_batch(items, idempotency_key="batch-1")
    assert [a.id for a in again] == [a.id for a in accepted]
    assert all(a.replayed for a in again)

    for one in accepted:
        message = await sender.api.wait(one.id, timeout=20)
        assert message.status == "sent"
        assert [a.outcome for a in message.attempt_log or []] == ["sent"]

    first = await sender.api.list(limit=2)
    assert len(first.items) == 2
    assert first.next_cursor is not None
    assert first.items[0].attempt_log is None  # the log has no attempts; get() has
    second = await sender.api.list(limit=2, cursor=first.next_cursor)
    assert not {m.id for m in first.items} & {m.id for m in second.items}
    everything = [m.id async for m in sender.api.iter_messages(limit=2)]
    assert sorted(everything) == sorted(a.id for a in accepted)
    assert [m.id for m in (await sender.api.list(to=items[3]["to"])).items] == [accepted[3].id]
    hook = first.items[0].connector_id
    assert hook is not None
    assert len((await sender.api.list(status="sent", connector_id=hook)).items) == 5
    assert (await sender.api.list(status="failed")).items == []


async def test_cancel_a_scheduled_send(sender: Sender) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    accepted = await sender.api.send(
        recipient(), connector="hook", content={"text": "x"}, send_at=later
    )
    assert accepted.status == "queued"
    assert accepted.send_at is not None
    assert abs(accepted.send_at - later) < timedelta(milliseconds=1)

    cancelled = await sender.api.cancel(accepted.id)
    assert (cancelled.status, cancelled.id) == ("cancelled", accepted.id)
    assert (await sender.api.cancel(accepted.id)).status == "cancelled"  # cancelled stays so
    assert (await sender.api.wait(accepted.id, timeout=1)).status == "cancelled"

    sent = await sender.api.send(recipient(), connector="hook", content={"text": "now"})
    await sender.api.wait(sent.id, timeout=20)
    with pytest.raises(TidingsError) as refused_cancel:
        await sender.api.cancel(sent.id)
    assert (refused_cancel.value.status, refused_cancel.value.code) == (
        409,
        "message_not_cancellable",
    )

    scheduled = await sender.api.send(
        recipient(), connector="hook", content={"text": "y"}, send_at=later
    )
    with pytest.raises(TimeoutError):
        await sender.api.wait(scheduled.id, timeout=0.3)


async def test_problems_raise_typed_errors_and_are_not_retried(sender: Sender) -> None:
    script = Script(MESSAGES, [])
    async with sender.client(AsyncScripted(script)) as api:
        await api.send(recipient(), connector="hook", content={"text": "a"}, idempotency_key="k1")
        with pytest.raises(TidingsError) as reused:
            await api.send(
                recipient(), connector="hook", content={"text": "b"}, idempotency_key="k1"
            )
        assert (reused.value.status, reused.value.code) == (409, "idempotency_key_reused")
        assert reused.value.detail
        assert script.keys == ["k1", "k1"]  # one request each: a 409 is not retried

        with pytest.raises(TidingsError) as missing:
            await api.get(uuid.uuid4())
        assert (missing.value.status, missing.value.code) == (404, "message_not_found")
        with pytest.raises(TidingsError) as invalid:
            await api.send("", connector="hook", content={"text": "a"})
        assert (invalid.value.status, invalid.value.code) == (400, "validation_failed")
        with pytest.raises(ValueError, match="workspace_id"):
            await api.connectors()  # an API key client names no workspace


async def test_an_answer_lost_after_the_commit_is_retried_with_the_same_key(
    sender: Sender, receiver: WebhookReceiver
) -> None:
    script = Script(MESSAGES, [LOSE, LOSE])
    to = recipient()
    async with sender.client(AsyncScripted(script)) as api:
        accepted = await api.send(to, connector="hook", content={"text": "once"})
        message = await api.wait(accepted.id, timeout=20)

    assert len(script.seen) == 3
    assert len(set(script.keys)) == 1
    assert script.keys[0] is not None
    assert [r.json()["id"] for r in script.lost] == [str(accepted.id)] * 2
    assert accepted.replayed
    assert [m.id for m in (await sender.api.list(to=to)).items] == [accepted.id]
    assert message.status == "sent"
    assert [r.headers["tidings-delivery-id"] for r in receiver.received] == [str(accepted.id)]

    batch_script = Script(f"{MESSAGES}/batch", [LOSE])
    items: list[SendItem] = [{"to": to, "connector": "hook", "content": {"text": "b"}}] * 3
    async with sender.client(AsyncScripted(batch_script)) as api:
        batch = await api.send_batch(items)
    assert [a.id for a in batch] == [
        uuid.UUID(a["id"]) for a in batch_script.lost[0].json()["messages"]
    ]
    assert len(set(batch_script.keys)) == 1
    assert len((await sender.api.list(to=to)).items) == 4


async def test_503_and_429_are_retried_after_their_retry_after(sender: Sender) -> None:
    script = Script(MESSAGES, [refused(503, "1"), refused(429, "0.5")])
    to = recipient()
    async with sender.client(AsyncScripted(script)) as api:
        started = time.monotonic()
        accepted = await api.send(to, connector="hook", content={"text": "hi"})
        waited = time.monotonic() - started
    assert waited >= 1.5, "Retry-After was not honoured"
    assert len(script.seen) == 3
    assert len(set(script.keys)) == 1
    assert not accepted.replayed  # the first two never reached the server
    assert [m.id for m in (await sender.api.list(to=to)).items] == [accepted.id]

    # Longer than the policy will wait: the error, with its Retry-After, at once.
    script = Script(MESSAGES, [refused(503, "120")])
    async with sender.client(AsyncScripted(script), retry=RetryPolicy(max_retry_after=5)) as api:
        with pytest.raises(TidingsError) as busy:
            await api.send(to, connector="hook", content={"text": "hi"})
    assert (busy.value.status, busy.value.retry_after, len(script.seen)) == (503, 120, 1)

    # Without Retry-After: backoff, and the last answer once the retries are spent.
    script = Script(MESSAGES, [refused(502, "")] * 3)
    policy = RetryPolicy(retries=2, initial_backoff=0.01)
    async with sender.client(AsyncScripted(script), retry=policy) as api:
        with pytest.raises(TidingsError) as bad_gateway:
            await api.send(to, connector="hook", content={"text": "hi"})
    assert (bad_gateway.value.status, len(script.seen)) == (502, 3)
    assert len((await sender.api.list(to=to)).items) == 1


# -- the sync client --------------------------------------------------------------------------


def sync_scenario(sender: Sender, access_token: str) -> None:
    """The blocking client, run in a worker thread while the server runs on the test's loop."""
    with SyncSendClient(sender.base_url, api_key=sender.key) as api:
        to = recipient()
        accepted = api.send(to, connector="hook", content={"text": "sync"})
        message = api.wait(accepted.id, timeout=20)
        assert message.status == "sent"
        assert [a.outcome for a in api.get(accepted.id).attempt_log or []] == ["sent"]

        items: list[SendItem] = [
            {"to": to, "connector": "hook", "content": {"text": str(i)}} for i in range(3)
        ]
        batch = api.send_batch(items)
        assert len({a.id for a in batch}) == 3
        assert {m.id for m in api.iter_messages(to=to, limit=2)} == {accepted.id} | {
            a.id for a in batch
        }
        assert api.list(to=to, limit=1).next_cursor is not None

        later = datetime.now(UTC) + timedelta(hours=1)
        scheduled = api.send(recipient(), connector="hook", content={"text": "x"}, send_at=later)
        assert api.cancel(scheduled.id).status == "cancelled"
        assert api.cancel(scheduled.id).status == "cancelled"

        api.send(to, connector="hook", content={"text": "a"}, idempotency_key="sync-1")
        with pytest.raises(TidingsError) as reused:
            api.send(to, connector="hook", content={"text": "b"}, idempotency_key="sync-1")
        assert (reused.value.status, reused.value.code) == (409, "idempotency_key_reused")

    script = Script(MESSAGES, [LOSE])
    lost_to = recipient()
    with SyncSendClient(sender.base_url, api_key=sender.key, transport=SyncScripted(script)) as api:
        once = api.send(lost_to, connector="hook", content={"text": "once"})
        assert once.replayed
        assert [m.id for m in api.list(to=lost_to).items] == [once.id]
    assert len(script.seen) == 2
    assert len(set(script.keys)) == 1

    user = SyncSendClient(
        sender.base_url, access_token=access_token, workspace_id=sender.workspace_id
    )
    with user:
        assert [c.name for c in user.connectors()] == ["hook"]
        assert user.send(recipient(), connector="hook", content={"text": "u"}).status == "queued"


async def test_the_sync_client(sender: Sender) -> None:
    assert sender.owner.access_token is not None
    await asyncio.to_thread(sync_scenario, sender, sender.owner.access_token)
