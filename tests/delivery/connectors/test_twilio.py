"""Twilio SMS against a local server speaking the Messages API and its error codes, and its
signed status callbacks (Twilio's published signature vector, wrong and tampered ones)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import ValidationError

from tests.delivery.providers import twilio as tw
from tests.delivery.providers.base import Reply
from tests.delivery.providers.context import connector_context, envelope
from tidings.delivery.connectors.base import (
    CallbackRejected,
    DeliveryError,
    ErrorClass,
    StatusUpdate,
)
from tidings.delivery.connectors.http import HttpConnectorContext
from tidings.delivery.connectors.twilio import (
    TwilioCredentials,
    TwilioSettings,
    TwilioSmsConnector,
    signature,
)

CALLBACK_URL = "https://tidings.example.com/api/v1/connectors/c1/callbacks"


@pytest.fixture
async def server() -> AsyncIterator[tw.TwilioServer]:
    async with tw.TwilioServer() as running:
        yield running


@pytest.fixture
async def context() -> AsyncIterator[HttpConnectorContext]:
    async with connector_context(timeout_seconds=2.0) as ctx:
        yield ctx


def settings(base: str = "https://api.twilio.com", **values: object) -> TwilioSettings:
    return TwilioSettings.model_validate(
        {"account_sid": tw.ACCOUNT_SID, "from_number": tw.FROM_NUMBER, "api_base": base, **values}
    )


def credentials(token: str = tw.AUTH_TOKEN) -> TwilioCredentials:
    return TwilioCredentials.model_validate({"auth_token": token})


def connector(
    server: tw.TwilioServer,
    context: HttpConnectorContext,
    *,
    token: str = tw.AUTH_TOKEN,
    **values: object,
) -> TwilioSmsConnector:
    return TwilioSmsConnector(settings(server.base_url, **values), credentials(token), context)


async def failure(sms: TwilioSmsConnector, to: str = "+14155550100") -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        await sms.send(envelope(to, {"text": "Your code is 123456"}))
    return caught.value


async def test_send_request_shape(server: tw.TwilioServer, context: HttpConnectorContext) -> None:
    sms = connector(server, context, status_callback_url=CALLBACK_URL)
    result = await sms.send(envelope("+14155550100", {"text": "Your code is 123456"}))

    request = server.last()
    assert request.method == "POST"
    assert request.path == f"/2010-04-01/Accounts/{tw.ACCOUNT_SID}/Messages.json"
    assert request.basic_auth() == (tw.ACCOUNT_SID, tw.AUTH_TOKEN)
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.form() == {
        "To": ["+14155550100"],
        "From": [tw.FROM_NUMBER],
        "Body": ["Your code is 123456"],
        "StatusCallback": [CALLBACK_URL],
    }
    assert result.status == 201
    assert result.provider_message_id is not None
    assert result.provider_message_id.startswith("SM")
    assert tw.AUTH_TOKEN not in (result.response or "")


async def test_messaging_service_instead_of_a_number(
    server: tw.TwilioServer, context: HttpConnectorContext
) -> None:
    service = "MG" + "a" * 32
    sms = connector(server, context, from_number=None, messaging_service_sid=service)
    await sms.send(envelope("+14155550100", {"text": "hi"}))
    form = server.last().form()
    assert form["MessagingServiceSid"] == [service]
    assert "From" not in form
    assert "StatusCallback" not in form


async def test_invalid_to_is_invalid_recipient(
    server: tw.TwilioServer, context: HttpConnectorContext
) -> None:
    error = await failure(connector(server, context), to="12345")
    assert error.error_class is ErrorClass.INVALID_RECIPIENT
    assert error.status == 400
    assert "21211" in error.detail
    assert not error.retriable


async def test_unsubscribed_recipient(
    server: tw.TwilioServer, context: HttpConnectorContext
) -> None:
    server.script(tw.twilio_error(21610, "Attempt to send to unsubscribed recipient", 400))
    error = await failure(connector(server, context))
    assert error.error_class is ErrorClass.INVALID_RECIPIENT


async def test_wrong_sender_is_configuration(
    server: tw.TwilioServer, context: HttpConnectorContext
) -> None:
    error = await failure(connector(server, context, from_number="+15550001111"))
    assert error.error_class is ErrorClass.CONFIGURATION
    assert "21659" in error.detail


async def test_empty_body_is_invalid_request(
    server: tw.TwilioServer, context: HttpConnectorContext
) -> None:
    server.script(tw.twilio_error(21602, "Message body is required.", 400))
    error = await failure(connector(server, context))
    assert error.error_class is ErrorClass.INVALID_REQUEST
    assert error.status == 400


async def test_wrong_token_is_auth(server: tw.TwilioServer, context: HttpConnectorContext) -> None:
    error = await failure(connector(server, context, token="tok_wrong"))
    assert error.error_class is ErrorClass.AUTH
    assert error.status == 401
    assert "tok_wrong" not in str(error)


async def test_rate_limited(server: tw.TwilioServer, context: HttpConnectorContext) -> None:
    too_many = tw.twilio_error(20429, "Too Many Requests", 429)
    server.script(Reply(too_many.status, too_many.body, headers=(("Retry-After", "5"),)))
    error = await failure(connector(server, context))
    assert error.error_class is ErrorClass.RATE_LIMITED
    assert error.retry_after == 5.0


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors(
    server: tw.TwilioServer, context: HttpConnectorContext, status: int
) -> None:
    server.script(tw.twilio_error(20500, "Internal Server Error", status))
    error = await failure(connector(server, context))
    assert error.error_class is ErrorClass.SERVER_ERROR
    assert error.retriable


async def test_slow_and_dropped(server: tw.TwilioServer) -> None:
    server.script(Reply.slow(3.0), Reply.dropped())
    async with connector_context(timeout_seconds=0.3) as context:
        slow = await failure(connector(server, context))
        dropped = await failure(connector(server, context))
    assert slow.error_class is ErrorClass.TIMEOUT
    assert dropped.error_class is ErrorClass.CONNECTION


async def test_test_reads_the_account(
    server: tw.TwilioServer, context: HttpConnectorContext
) -> None:
    ok = await connector(server, context).test()
    assert ok.ok, ok.detail
    assert server.last().method == "GET"
    assert server.last().path == f"/2010-04-01/Accounts/{tw.ACCOUNT_SID}.json"
    server.account_status = "suspended"
    suspended = await connector(server, context).test()
    assert not suspended.ok
    assert "suspended" in suspended.detail
    wrong = await connector(server, context, token="tok_wrong").test()
    assert not wrong.ok
    assert wrong.status == 401


def test_settings_need_exactly_one_sender() -> None:
    with pytest.raises(ValidationError):
        settings(from_number=None)
    with pytest.raises(ValidationError):
        settings(messaging_service_sid="MG" + "a" * 32)
    with pytest.raises(ValidationError):
        settings(account_sid="not-a-sid")


# -- status callbacks ------------------------------------------------------------------------


def test_signature_matches_twilios_published_vector() -> None:
    # From Twilio's own request-validator tests (twilio-php, twilio-csharp, docs).
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675309",
        "Digits": "1234",
        "From": "+14158675309",
        "To": "+18005551212",
    }
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert signature("12345", url, list(params.items())) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    repeated = [
        ("Sid", "CA123"),
        ("SidAccount", "AC123"),
        ("Digits", "5678"),
        ("Digits", "1234"),
        ("Digits", "1234"),
    ]
    assert signature("12345", url, repeated) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


def callback(status: str, error_code: str | None = None, **extra: str) -> dict[str, str]:
    params = {
        "AccountSid": tw.ACCOUNT_SID,
        "ApiVersion": "2010-04-01",
        "From": tw.FROM_NUMBER,
        "To": "+14155550100",
        "MessageSid": "SM" + "f" * 32,
        "SmsSid": "SM" + "f" * 32,
        "MessageStatus": status,
        "SmsStatus": status,
        **extra,
    }
    if error_code:
        params["ErrorCode"] = error_code
    return params


def verify(
    headers: dict[str, str], body: bytes, *, url: str = CALLBACK_URL, token: str = tw.AUTH_TOKEN
) -> list[StatusUpdate]:
    return TwilioSmsConnector.verify_status_callback(
        settings(), credentials(token), url=url, headers=headers, body=body
    )


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        ("delivered", None, "delivered"),
        ("undelivered", "30005", "bounced"),  # unknown destination
        ("undelivered", "30003", "bounced"),  # unreachable handset
        ("failed", "30008", "failed"),
        ("undelivered", None, "failed"),
    ],
)
def test_final_statuses(status: str, code: str | None, expected: str) -> None:
    headers, body = tw.signed_callback(CALLBACK_URL, callback(status, code))
    [update] = verify(headers, body)
    assert update.provider_message_id == "SM" + "f" * 32
    assert update.status == expected
    if code:
        assert update.detail is not None
        assert code in update.detail


@pytest.mark.parametrize("status", ["queued", "sending", "sent", "accepted"])
def test_intermediate_statuses_move_nothing(status: str) -> None:
    headers, body = tw.signed_callback(CALLBACK_URL, callback(status))
    assert verify(headers, body) == []


def test_signature_with_the_default_port_written_out() -> None:
    # Signed by Twilio over the URL with :443; Tidings sees it without (or the reverse).
    with_port = CALLBACK_URL.replace("tidings.example.com", "tidings.example.com:443")
    headers, body = tw.signed_callback(with_port, callback("delivered"))
    assert verify(headers, body)
    headers, body = tw.signed_callback(CALLBACK_URL, callback("delivered"))
    assert verify(headers, body, url=with_port)


def test_wrong_signature_refused() -> None:
    headers, body = tw.signed_callback(CALLBACK_URL, callback("delivered"), auth_token="other")
    with pytest.raises(CallbackRejected, match="does not match"):
        verify(headers, body)


def test_tampered_form_refused() -> None:
    headers, body = tw.signed_callback(CALLBACK_URL, callback("undelivered", "30005"))
    with pytest.raises(CallbackRejected):
        verify(headers, body.replace(b"undelivered", b"delivered"))


def test_another_url_refused() -> None:
    headers, body = tw.signed_callback(CALLBACK_URL, callback("delivered"))
    with pytest.raises(CallbackRejected):
        verify(headers, body, url=CALLBACK_URL + "?x=1")


def test_missing_signature_refused() -> None:
    _, body = tw.signed_callback(CALLBACK_URL, callback("delivered"))
    with pytest.raises(CallbackRejected, match="missing"):
        verify({}, body)


def test_another_account_refused() -> None:
    params = callback("delivered", AccountSid="AC" + "9" * 32)
    headers, body = tw.signed_callback(CALLBACK_URL, params)
    with pytest.raises(CallbackRejected, match="another Twilio account"):
        verify(headers, body)


def test_header_name_is_case_insensitive() -> None:
    headers, body = tw.signed_callback(CALLBACK_URL, callback("delivered"))
    lowered = {k.lower(): v for k, v in headers.items()}
    assert verify(lowered, body)
