"""Mailgun against a local server speaking its messages API and errors, and its signed
webhooks: what is sent, how failures are classed, which callbacks are taken or refused."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from tests.delivery.providers import mailgun as mg
from tests.delivery.providers.base import Reply
from tests.delivery.providers.context import connector_context, envelope
from tidings.delivery.connectors.base import (
    CallbackRejected,
    DeliveryError,
    ErrorClass,
    StatusUpdate,
)
from tidings.delivery.connectors.http import HttpConnectorContext
from tidings.delivery.connectors.mailgun import (
    MailgunConnector,
    MailgunCredentials,
    MailgunSettings,
)

EMAIL = {"subject": "Your order", "text": "It shipped.", "html": "<p>It shipped.</p>"}


@pytest.fixture
async def server() -> AsyncIterator[mg.MailgunServer]:
    async with mg.MailgunServer() as running:
        yield running


@pytest.fixture
async def context() -> AsyncIterator[HttpConnectorContext]:
    async with connector_context(timeout_seconds=2.0) as ctx:
        yield ctx


def settings(base: str = "http://127.0.0.1:9", **values: object) -> MailgunSettings:
    return MailgunSettings.model_validate(
        {
            "domain": mg.DOMAIN,
            "from_address": "Acme <noreply@mg.example.com>",
            "api_base": base,
            **values,
        }
    )


def credentials(
    api_key: str = mg.API_KEY, signing_key: str | None = mg.SIGNING_KEY
) -> MailgunCredentials:
    return MailgunCredentials.model_validate(
        {"api_key": api_key, "webhook_signing_key": signing_key}
    )


def connector(
    server: mg.MailgunServer, context: HttpConnectorContext, **values: object
) -> MailgunConnector:
    api_key = str(values.pop("api_key", mg.API_KEY))
    return MailgunConnector(settings(server.base_url, **values), credentials(api_key), context)


async def failure(mailgun: MailgunConnector, recipient: str = "ada@example.com") -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        await mailgun.send(envelope(recipient, EMAIL))
    return caught.value


async def test_send_request_shape(server: mg.MailgunServer, context: HttpConnectorContext) -> None:
    mailgun = connector(server, context, tags=["receipts"], reply_to="help@example.com")
    message = envelope("ada@example.com", EMAIL)

    result = await mailgun.send(message)

    request = server.last()
    assert request.method == "POST"
    assert request.path == f"/v3/{mg.DOMAIN}/messages"
    assert request.basic_auth() == ("api", mg.API_KEY)
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    form = request.form()
    assert form["from"] == ["Acme <noreply@mg.example.com>"]
    assert form["to"] == ["ada@example.com"]
    assert form["subject"] == ["Your order"]
    assert form["text"] == ["It shipped."]
    assert form["html"] == ["<p>It shipped.</p>"]
    assert form["h:X-Tidings-Delivery-Id"] == [message.delivery_id]
    assert form["v:tidings_delivery_id"] == [message.delivery_id]
    assert form["h:Reply-To"] == ["help@example.com"]
    assert form["o:tag"] == ["receipts"]
    # Mailgun's id without its angle brackets: the form its webhooks report.
    assert result.provider_message_id is not None
    assert result.provider_message_id.endswith(f"@{mg.DOMAIN}")
    assert not result.provider_message_id.startswith("<")
    assert result.status == 200


async def test_missing_body_is_refused_before_sending(
    server: mg.MailgunServer, context: HttpConnectorContext
) -> None:
    with pytest.raises(DeliveryError) as caught:
        await connector(server, context).send(envelope("ada@example.com", {"subject": "x"}))
    assert caught.value.error_class is ErrorClass.INVALID_REQUEST
    assert server.received == []


async def test_wrong_key_is_auth(server: mg.MailgunServer, context: HttpConnectorContext) -> None:
    error = await failure(connector(server, context, api_key="key-wrong"))
    assert error.error_class is ErrorClass.AUTH
    assert error.status == 401
    assert not error.retriable
    assert "key-wrong" not in str(error)


async def test_invalid_recipient(server: mg.MailgunServer, context: HttpConnectorContext) -> None:
    error = await failure(connector(server, context), recipient="not-an-address")
    assert error.error_class is ErrorClass.INVALID_RECIPIENT
    assert error.status == 400
    assert "not a valid address" in error.detail


async def test_unknown_domain_is_configuration(
    server: mg.MailgunServer, context: HttpConnectorContext
) -> None:
    error = await failure(connector(server, context, domain="other.example.com"))
    assert error.error_class is ErrorClass.CONFIGURATION
    assert error.status == 404


async def test_rate_limited_with_retry_after(
    server: mg.MailgunServer, context: HttpConnectorContext
) -> None:
    server.script(server.rate_limited("12"))
    error = await failure(connector(server, context))
    assert error.error_class is ErrorClass.RATE_LIMITED
    assert error.retry_after == 12.0
    assert error.retriable


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors(
    server: mg.MailgunServer, context: HttpConnectorContext, status: int
) -> None:
    server.script(Reply.json({"message": "Internal Server Error"}, status))
    error = await failure(connector(server, context))
    assert error.error_class is ErrorClass.SERVER_ERROR
    assert error.status == status


async def test_other_400_is_invalid_request(
    server: mg.MailgunServer, context: HttpConnectorContext
) -> None:
    server.script(Reply.json({"message": "'o:deliverytime' parameter is not valid"}, 400))
    error = await failure(connector(server, context))
    assert error.error_class is ErrorClass.INVALID_REQUEST
    assert error.response is not None
    assert "deliverytime" in error.response


async def test_slow_and_dropped(server: mg.MailgunServer) -> None:
    server.script(Reply.slow(3.0), Reply.dropped())
    async with connector_context(timeout_seconds=0.3) as context:
        slow = await failure(connector(server, context))
        dropped = await failure(connector(server, context))
    assert slow.error_class is ErrorClass.TIMEOUT
    assert dropped.error_class is ErrorClass.CONNECTION


async def test_test_checks_the_domain(
    server: mg.MailgunServer, context: HttpConnectorContext
) -> None:
    ok = await connector(server, context).test()
    assert ok.ok, ok.detail
    assert server.last().path == f"/v3/domains/{mg.DOMAIN}"
    wrong_key = await connector(server, context, api_key="key-wrong").test()
    assert not wrong_key.ok
    assert wrong_key.status == 401
    unknown = await connector(server, context, domain="nope.example.com").test()
    assert not unknown.ok
    assert unknown.status == 404


# -- status callbacks ------------------------------------------------------------------------


def verify(
    body: bytes, *, signing_key: str | None = mg.SIGNING_KEY, now: float | None = None
) -> list[StatusUpdate]:
    return MailgunConnector.verify_status_callback(
        settings(),
        credentials(signing_key=signing_key),
        url="https://tidings.example.com/callbacks/x",
        headers={"content-type": "application/json"},
        body=body,
        now=now,
    )


def test_delivered_callback() -> None:
    updates = verify(mg.webhook(mg.event("delivered", "20240101.abc@mg.example.com")))
    assert [(u.provider_message_id, u.status) for u in updates] == [
        ("20240101.abc@mg.example.com", "delivered")
    ]


def test_permanent_failure_is_a_bounce() -> None:
    body = mg.webhook(
        mg.event(
            "failed",
            "<20240101.def@mg.example.com>",
            severity="permanent",
            reason="bounce",
            **{"delivery-status": {"code": 550, "message": "5.1.1 No such user"}},
        )
    )
    [update] = verify(body)
    assert update.provider_message_id == "20240101.def@mg.example.com"
    assert update.status == "bounced"
    assert update.detail is not None
    assert "No such user" in update.detail


@pytest.mark.parametrize(
    "event_data",
    [
        mg.event("failed", "x@mg.example.com", severity="temporary"),  # Mailgun retries
        mg.event("opened", "x@mg.example.com"),
        mg.event("accepted", "x@mg.example.com"),
    ],
)
def test_other_events_move_nothing(event_data: dict[str, object]) -> None:
    assert verify(mg.webhook(event_data)) == []


def test_wrong_signature_refused() -> None:
    body = mg.webhook(mg.event("delivered", "x@mg.example.com"), signing_key="whk-other")
    with pytest.raises(CallbackRejected, match="does not match"):
        verify(body)


def test_tampered_body_refused() -> None:
    body = mg.webhook(mg.event("delivered", "x@mg.example.com"), token="t" * 50)
    tampered = body.replace(b'"t' + b"t" * 49, b'"u' + b"t" * 49)
    with pytest.raises(CallbackRejected):
        verify(tampered)


def test_stale_timestamp_refused() -> None:
    old = int(time.time()) - 301
    body = mg.webhook(mg.event("delivered", "x@mg.example.com"), timestamp=old)
    with pytest.raises(CallbackRejected, match="replay window"):
        verify(body)
    # Inside the window it holds.
    assert verify(body, now=old + 299)


def test_unsigned_or_unconfigured_refused() -> None:
    with pytest.raises(CallbackRejected):
        verify(b'{"event-data": {"event": "delivered"}}')
    with pytest.raises(CallbackRejected):
        verify(b"not json")
    with pytest.raises(CallbackRejected, match="no webhook signing key"):
        verify(mg.webhook(mg.event("delivered", "x@mg.example.com")), signing_key=None)
