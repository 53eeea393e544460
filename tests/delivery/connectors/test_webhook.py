"""The signed webhook connector against a real receiver on 127.0.0.1: what it sends, how it signs
(golden vector, rotation, replay window), and how each kind of failure is classed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import structlog
from pydantic import ValidationError

from tests.delivery.providers.base import Reply
from tests.delivery.providers.context import connector_context, envelope
from tests.delivery.providers.webhook import WebhookReceiver
from tidings.delivery.connectors.base import DeliveryError, ErrorClass
from tidings.delivery.connectors.http import HttpConnectorContext
from tidings.delivery.connectors.webhook import (
    WebhookConnector,
    WebhookCredentials,
    WebhookSettings,
    sign,
    verify_signature,
)
from tidings.infra.logging import configure_logging

SECRET = "whsec_" + "s" * 32
OLD_SECRET = "whsec_" + "o" * 32


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(secret=SECRET) as server:
        yield server


@pytest.fixture
async def context() -> AsyncIterator[HttpConnectorContext]:
    async with connector_context(timeout_seconds=2.0) as ctx:
        yield ctx


def connector(
    context: HttpConnectorContext,
    url: str,
    *,
    secret: str = SECRET,
    previous: str | None = None,
    headers: dict[str, str] | None = None,
) -> WebhookConnector:
    return WebhookConnector(
        WebhookSettings(url=url, headers=headers or {}),
        WebhookCredentials.model_validate(
            {"signing_secret": secret, "previous_signing_secret": previous}
        ),
        context,
    )


async def send_expecting_error(hook: WebhookConnector) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        await hook.send(envelope("ops", {"text": "hi"}))
    return caught.value


def test_signature_golden_vector() -> None:
    # Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac <secret>
    expected = "3b3f63a6d9852084e35d9c6f559ee4d6054bc7e45d3cfca447947797ed0c2abd"
    assert sign("whsec_golden_vector_secret", 1_700_000_000, b'{"a":1}') == expected
    header = f"t=1700000000,v1={expected}"
    assert verify_signature(
        header, b'{"a":1}', "whsec_golden_vector_secret", now=1_700_000_000 + 299
    )


def test_signature_refused_when_stale_tampered_or_wrong() -> None:
    body = b'{"id":"dlv_1"}'
    now = 1_700_000_000
    header = f"t={now},v1={sign(SECRET, now, body)}"
    assert verify_signature(header, body, SECRET, now=now)
    assert not verify_signature(header, body, SECRET, now=now + 301)  # replayed too late
    assert not verify_signature(header, body, SECRET, now=now - 301)  # from the future
    assert not verify_signature(header, body + b" ", SECRET, now=now)  # body changed
    assert not verify_signature(header, body, OLD_SECRET, now=now)  # another secret
    assert not verify_signature(f"t={now}", body, SECRET, now=now)  # no v1
    assert not verify_signature(f"v1={sign(SECRET, now, body)}", body, SECRET, now=now)  # no t
    assert not verify_signature("", body, SECRET, now=now)


async def test_send_posts_signed_json_with_delivery_id(
    receiver: WebhookReceiver, context: HttpConnectorContext
) -> None:
    hook = connector(context, receiver.url, headers={"X-Team": "ops"})
    message = envelope("ops-channel", {"subject": "Hi", "text": "Hello"}, metadata={"order": 42})

    result = await hook.send(message)

    assert result.status == 200
    assert result.provider_message_id is None
    request = receiver.last()
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["tidings-delivery-id"] == message.delivery_id
    assert request.headers["tidings-event"] == "message"
    assert request.headers["x-team"] == "ops"
    # The receiver answered 200 only because the signature verified; check it here as well.
    signature = request.headers["tidings-signature"]
    assert verify_signature(signature, request.body, SECRET)
    timestamp = int(signature.split(",")[0].removeprefix("t="))
    assert abs(time.time() - timestamp) < 60
    payload = request.json()
    assert payload["id"] == message.delivery_id
    assert payload["type"] == "message"
    assert payload["recipient"] == "ops-channel"
    assert payload["content"] == {"subject": "Hi", "text": "Hello"}
    assert payload["metadata"] == {"order": 42}
    assert payload["created_at"].endswith("Z")


async def test_retry_keeps_the_delivery_id(
    receiver: WebhookReceiver, context: HttpConnectorContext
) -> None:
    hook = connector(context, receiver.url)
    message = envelope("ops", {"text": "once"})
    receiver.script(Reply.json({"error": "busy"}, 503))
    with pytest.raises(DeliveryError):
        await hook.send(message)
    await hook.send(message)
    ids = {r.headers["tidings-delivery-id"] for r in receiver.received}
    assert ids == {message.delivery_id}
    assert len(receiver.received) == 2


async def test_rotation_sends_both_signatures(
    receiver: WebhookReceiver, context: HttpConnectorContext
) -> None:
    # The receiver still holds the old secret: the second v1 lets it verify.
    receiver.secret = OLD_SECRET
    hook = connector(context, receiver.url, secret=SECRET, previous=OLD_SECRET)
    await hook.send(envelope("ops", {"text": "rotating"}))
    request = receiver.last()
    header = request.headers["tidings-signature"]
    assert header.count("v1=") == 2
    assert verify_signature(header, request.body, SECRET)
    assert verify_signature(header, request.body, OLD_SECRET)


async def test_wrong_secret_is_refused_by_the_receiver(
    receiver: WebhookReceiver, context: HttpConnectorContext
) -> None:
    hook = connector(context, receiver.url, secret="whsec_" + "x" * 32)
    error = await send_expecting_error(hook)
    assert error.error_class is ErrorClass.INVALID_REQUEST
    assert error.status == 400
    assert error.response is not None
    assert "invalid signature" in error.response


@pytest.mark.parametrize(
    ("reply", "error_class", "retry_after"),
    [
        (Reply.json({}, 429, headers={"Retry-After": "7"}), ErrorClass.RATE_LIMITED, 7.0),
        (Reply.json({}, 429), ErrorClass.RATE_LIMITED, None),
        (Reply.json({}, 401), ErrorClass.AUTH, None),
        (Reply.json({}, 403), ErrorClass.AUTH, None),
        (Reply.json({}, 400), ErrorClass.INVALID_REQUEST, None),
        (Reply.json({}, 404), ErrorClass.INVALID_REQUEST, None),
        (Reply.json({}, 408), ErrorClass.TIMEOUT, None),
        (Reply.json({}, 500), ErrorClass.SERVER_ERROR, None),
        (Reply.json({}, 503, headers={"Retry-After": "2"}), ErrorClass.SERVER_ERROR, 2.0),
        (Reply.json({}, 302, headers={"Location": "/elsewhere"}), ErrorClass.CONFIGURATION, None),
    ],
    ids=lambda v: str(v.status) if isinstance(v, Reply) else None,
)
async def test_status_is_classed(
    receiver: WebhookReceiver,
    context: HttpConnectorContext,
    reply: Reply,
    error_class: ErrorClass,
    retry_after: float | None,
) -> None:
    receiver.script(reply)
    error = await send_expecting_error(connector(context, receiver.url))
    assert error.error_class is error_class
    assert error.status == reply.status
    assert error.retry_after == retry_after
    assert error.retriable is (
        error_class in {ErrorClass.RATE_LIMITED, ErrorClass.SERVER_ERROR, ErrorClass.TIMEOUT}
    )
    # A redirect is not followed: the only request is the one that got the 302.
    assert len(receiver.received) == 1


async def test_retry_after_as_http_date(
    receiver: WebhookReceiver, context: HttpConnectorContext
) -> None:
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 120))
    receiver.script(Reply.json({}, 429, headers={"Retry-After": when}))
    error = await send_expecting_error(connector(context, receiver.url))
    assert error.error_class is ErrorClass.RATE_LIMITED
    assert error.retry_after is not None
    assert 100 < error.retry_after <= 120


async def test_slow_receiver_times_out(receiver: WebhookReceiver) -> None:
    receiver.script(Reply.slow(3.0))
    async with connector_context(timeout_seconds=0.3) as context:
        error = await send_expecting_error(connector(context, receiver.url))
    assert error.error_class is ErrorClass.TIMEOUT
    assert error.retriable


async def test_dropped_connection(receiver: WebhookReceiver, context: HttpConnectorContext) -> None:
    receiver.script(Reply.dropped())
    error = await send_expecting_error(connector(context, receiver.url))
    assert error.error_class is ErrorClass.CONNECTION
    assert error.retriable
    assert len(receiver.received) == 1


async def test_nothing_listening(context: HttpConnectorContext) -> None:
    async with WebhookReceiver() as gone:
        url = gone.url
    error = await send_expecting_error(connector(context, url))
    assert error.error_class is ErrorClass.CONNECTION


async def test_oversized_answer_is_refused(receiver: WebhookReceiver) -> None:
    receiver.script(Reply.text("x" * 5000))
    async with connector_context(max_response_bytes=1024) as context:
        error = await send_expecting_error(connector(context, receiver.url))
    assert error.error_class is ErrorClass.INVALID_REQUEST
    assert "more than 1024 bytes" in error.detail


async def test_loopback_refused_unless_allowed(receiver: WebhookReceiver) -> None:
    async with connector_context(allow=()) as context:
        error = await send_expecting_error(connector(context, receiver.url))
    assert error.error_class is ErrorClass.BLOCKED
    assert not error.retriable
    assert receiver.received == []


async def test_secret_never_in_errors_or_results(
    receiver: WebhookReceiver, context: HttpConnectorContext
) -> None:
    # A receiver that echoes what it got, signing secret included, in its error body.
    receiver.script(Reply.text(f"bad request, your secret is {SECRET}", 400))
    error = await send_expecting_error(connector(context, receiver.url))
    assert error.response is not None
    assert SECRET not in error.response
    assert SECRET not in str(error)
    assert "***" in error.response
    receiver.script(Reply.text(f"ok {SECRET}"))
    result = await connector(context, receiver.url).send(envelope("ops", {"text": "x"}))
    assert result.response is not None
    assert SECRET not in result.response
    assert SECRET not in repr(WebhookCredentials.model_validate({"signing_secret": SECRET}))


async def test_test_sends_a_signed_ping(
    receiver: WebhookReceiver, context: HttpConnectorContext
) -> None:
    result = await connector(context, receiver.url).test()
    assert result.ok
    assert result.status == 200
    request = receiver.last()
    assert request.headers["tidings-event"] == "ping"
    assert request.json()["type"] == "ping"
    assert request.headers["tidings-delivery-id"] == request.json()["id"]


async def test_test_reports_failure_without_raising(
    receiver: WebhookReceiver, context: HttpConnectorContext
) -> None:
    receiver.script(Reply.json({}, 401))
    result = await connector(context, receiver.url).test()
    assert not result.ok
    assert result.status == 401
    assert "auth" in result.detail
    receiver.script(Reply.dropped())
    dropped = await connector(context, receiver.url).test()
    assert not dropped.ok
    assert dropped.status is None


@pytest.mark.parametrize(
    "values",
    [
        {"url": "ftp://example.com/hook"},
        {"url": "/relative"},
        {"url": "https://user:pw@example.com/hook"},
        {"url": "https://example.com/hook", "headers": {"Tidings-Signature": "forged"}},
        {"url": "https://example.com/hook", "headers": {"content-type": "text/plain"}},
        {"url": "https://example.com/hook", "headers": {"X-Bad": "a\r\nInjected: 1"}},
        {"url": "https://example.com/hook", "unknown": 1},
    ],
)
def test_settings_refused(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        WebhookSettings.model_validate(values)


def test_short_signing_secret_refused() -> None:
    with pytest.raises(ValidationError):
        WebhookCredentials.model_validate({"signing_secret": "short"})


async def test_a_connector_works_before_logging_is_configured(
    receiver: WebhookReceiver, context: HttpConnectorContext
) -> None:
    # A script or plugin test may use a connector without `configure_logging`: structlog's
    # default logger then lacks the standard library's `isEnabledFor`.
    structlog.reset_defaults()
    try:
        result = await connector(context, receiver.url).send(envelope("ops", {"text": "hi"}))
    finally:
        configure_logging("info", "json")
    assert result.status == 200
