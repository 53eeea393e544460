"""SmtpConnector against a real SMTP relay (aiosmtpd): plain, STARTTLS and implicit TLS with a
private CA, AUTH, the MIME it sends, every reply class, timeouts, drops and the SSRF guard."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from pydantic import ValidationError

from tests.delivery.connectors_b.conftest import (
    GUARDED,
    LOOPBACK,
    ContextFactory,
    assert_secret_absent,
)
from tests.delivery.providers_b.smtp_server import (
    PASSWORD,
    USERNAME,
    Scripted,
    SmtpMode,
    SmtpRelay,
    free_port,
)
from tidings.delivery.connectors.base import (
    Channel,
    ConnectorContext,
    DeliveryError,
    ErrorClass,
    OutboundEnvelope,
)
from tidings.delivery.connectors.registry import get_connector_type
from tidings.delivery.connectors.smtp import SmtpConnector, SmtpCredentials, SmtpSettings

EMAIL = {
    "subject": "Your order\r\nhas shipped",
    "text": "Hello Ada,\nyour order is on its way.",
    "html": "<p>Hello Ada,<br>your order is on its way.</p>",
}


@pytest.fixture
def relays(ca: trustme.CA) -> Iterator[list[SmtpRelay]]:
    started: list[SmtpRelay] = []
    yield started
    for relay in started:
        relay.stop()


@pytest.fixture
def relay_factory(ca: trustme.CA, relays: list[SmtpRelay]) -> Any:
    def start(mode: SmtpMode, *, auth: bool = False) -> SmtpRelay:
        relay = SmtpRelay(mode, ca, auth=auth).start()
        relays.append(relay)
        return relay

    return start


def connector(
    relay: SmtpRelay | None,
    context: ConnectorContext,
    ca: trustme.CA | None = None,
    *,
    credentials: dict[str, Any] | None = None,
    **overrides: Any,
) -> SmtpConnector:
    values: dict[str, Any] = {
        "host": "localhost",
        "port": relay.port if relay else free_port(),
        "security": relay.mode.value if relay else "none",
        "from_address": "shop@example.org",
        "from_name": "Ada's Shop",
        "reply_to": "help@example.org",
    }
    if ca is not None:
        values["ca_pem"] = ca.cert_pem.bytes().decode()
    values.update(overrides)
    return SmtpConnector(
        SmtpSettings.model_validate(values),
        SmtpCredentials.model_validate(credentials or {}),
        context,
    )


def envelope(recipient: str = "ada@example.com", delivery_id: str = "dlv_01HX") -> OutboundEnvelope:
    return OutboundEnvelope(delivery_id=delivery_id, recipient=recipient, content=EMAIL)


AUTH = {"username": USERNAME, "password": PASSWORD}


def test_registered_as_builtin() -> None:
    assert get_connector_type("smtp") is SmtpConnector
    assert SmtpConnector.channel is Channel.EMAIL


async def test_starttls_login_and_the_mime_message(
    relay_factory: Any, ca: trustme.CA, make_context: ContextFactory
) -> None:
    relay = relay_factory(SmtpMode.STARTTLS, auth=True)
    async with make_context() as context:
        result = await connector(relay, context, ca, credentials=AUTH).send(envelope())

    [mail] = relay.received
    assert mail.tls
    assert mail.login == USERNAME
    assert mail.mail_from == "shop@example.org"
    assert mail.rcpt_tos == ["ada@example.com"]
    message = mail.message()
    assert message["Subject"] == "Your order has shipped"  # a line break cannot split headers
    assert message["From"] == "Ada's Shop <shop@example.org>"
    assert message["To"] == "ada@example.com"
    assert message["Reply-To"] == "help@example.org"
    assert message["Date"]
    assert message["X-Tidings-Delivery-Id"] == "dlv_01HX"
    assert message["Message-ID"] == result.provider_message_id == "<dlv_01HX.tidings@example.org>"
    assert message.get_content_type() == "multipart/alternative"
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None
    assert html is not None
    assert plain.get_content().strip() == EMAIL["text"]
    assert html.get_content().strip() == EMAIL["html"]
    assert result.status == 250
    assert result.response is not None
    assert "queued as" in result.response


async def test_implicit_tls(
    relay_factory: Any, ca: trustme.CA, make_context: ContextFactory
) -> None:
    relay = relay_factory(SmtpMode.TLS)
    async with make_context() as context:
        await connector(relay, context, ca).send(envelope())
    [mail] = relay.received
    assert mail.tls
    assert mail.login is None


async def test_plain_relay_with_login_and_html_only(
    relay_factory: Any, make_context: ContextFactory
) -> None:
    relay = relay_factory(SmtpMode.PLAIN, auth=True)
    html_only = OutboundEnvelope("dlv_2", "ada@example.com", {"subject": "Hi", "html": "<b>Hi</b>"})
    async with make_context() as context:
        await connector(relay, context, credentials=AUTH).send(html_only)
    [mail] = relay.received
    assert not mail.tls
    assert mail.login == USERNAME
    message = mail.message()
    assert message.get_content_type() == "text/html"


async def test_message_id_is_stable_across_retries(
    relay_factory: Any, make_context: ContextFactory
) -> None:
    relay = relay_factory(SmtpMode.PLAIN)
    async with make_context() as context:
        smtp = connector(relay, context)
        first = await smtp.send(envelope(delivery_id="dlv_same"))
        second = await smtp.send(envelope(delivery_id="dlv_same"))
    assert first.provider_message_id == second.provider_message_id
    assert [m.message()["Message-ID"] for m in relay.received] == [first.provider_message_id] * 2


async def test_certificate_checked_against_the_host_name(
    relay_factory: Any, ca: trustme.CA, make_context: ContextFactory
) -> None:
    relay = relay_factory(SmtpMode.STARTTLS)
    async with make_context() as context:
        # The private CA is not in the system store.
        with pytest.raises(DeliveryError) as unknown_ca:
            await connector(relay, context).send(envelope())
        # The certificate names "localhost", not the address the socket went to.
        with pytest.raises(DeliveryError) as wrong_name:
            await connector(relay, context, ca, host="127.0.0.1").send(envelope())
        # verify_tls=false is the operator's explicit choice.
        await connector(relay, context, verify_tls=False).send(envelope())
    assert unknown_ca.value.error_class is ErrorClass.CONFIGURATION
    assert "certificate" in unknown_ca.value.detail
    assert wrong_name.value.error_class is ErrorClass.CONFIGURATION
    assert len(relay.received) == 1


async def test_wrong_password_is_auth_and_never_shown(
    relay_factory: Any, ca: trustme.CA, make_context: ContextFactory, debug_logs: Any
) -> None:
    relay = relay_factory(SmtpMode.STARTTLS, auth=True)
    wrong = "not-the-Pa55word-91ab"
    async with make_context() as context:
        smtp = connector(relay, context, ca, credentials={"username": USERNAME, "password": wrong})
        with pytest.raises(DeliveryError) as refused:
            await smtp.send(envelope())
        tested = await smtp.test()
    assert refused.value.error_class is ErrorClass.AUTH
    assert not refused.value.retriable
    assert refused.value.status == 535
    assert not tested.ok
    assert tested.status == 535
    # aiosmtplib tries each mechanism the relay offers (PLAIN, LOGIN) before giving up.
    assert relay.logins
    assert all(login == (USERNAME, False) for login in relay.logins)
    assert relay.received == []
    assert_secret_absent(
        wrong, errors=[refused.value, tested.detail, repr(smtp.credentials)], caplog=debug_logs
    )


@pytest.mark.parametrize(
    ("stage", "reply", "expected"),
    [
        ("mail", "421 4.7.0 Too many messages from you, try again later", ErrorClass.RATE_LIMITED),
        (
            "rcpt",
            "450 4.2.0 <ada@example.com>: Recipient address rejected: Greylisted",
            ErrorClass.RATE_LIMITED,
        ),
        ("rcpt", "452 4.5.3 Too many recipients", ErrorClass.RATE_LIMITED),
        ("data", "451 4.3.0 Local error in processing", ErrorClass.SERVER_ERROR),
        ("data", "451 4.7.1 Please try again later", ErrorClass.RATE_LIMITED),
        ("rcpt", "553 5.1.3 Bad recipient address syntax", ErrorClass.INVALID_RECIPIENT),
        ("rcpt", "551 5.1.6 User has moved", ErrorClass.INVALID_RECIPIENT),
        ("data", "554 5.7.1 Message rejected as spam", ErrorClass.INVALID_REQUEST),
        ("data", "552 5.3.4 Message size exceeds fixed limit", ErrorClass.INVALID_REQUEST),
        ("mail", "553 5.7.1 Sender address rejected: not owned by user", ErrorClass.CONFIGURATION),
        ("mail", "530 5.7.0 Authentication required", ErrorClass.AUTH),
    ],
)
async def test_replies_map_to_error_classes(
    relay_factory: Any, make_context: ContextFactory, stage: str, reply: str, expected: ErrorClass
) -> None:
    relay = relay_factory(SmtpMode.PLAIN)
    relay.script(stage, reply)
    async with make_context() as context:
        with pytest.raises(DeliveryError) as failed:
            await connector(relay, context).send(envelope())
    error = failed.value
    assert error.error_class is expected
    assert error.status == int(reply[:3])
    assert error.response == reply
    assert error.retriable is reply.startswith("4")
    assert relay.received == []


async def test_unknown_mailbox_is_invalid_recipient(
    relay_factory: Any, make_context: ContextFactory
) -> None:
    relay = relay_factory(SmtpMode.PLAIN)
    async with make_context() as context:
        with pytest.raises(DeliveryError) as failed:
            await connector(relay, context).send(envelope("nobody@example.com"))
    assert failed.value.error_class is ErrorClass.INVALID_RECIPIENT
    assert failed.value.status == 550
    assert "User unknown" in failed.value.detail


async def test_malformed_recipient_refused_before_connecting(make_context: ContextFactory) -> None:
    async with make_context() as context:
        with pytest.raises(DeliveryError) as failed:
            await connector(None, context).send(envelope("ada at example.com"))
    assert failed.value.error_class is ErrorClass.INVALID_RECIPIENT


async def test_connection_refused(make_context: ContextFactory) -> None:
    async with make_context() as context:
        with pytest.raises(DeliveryError) as failed:
            await connector(None, context).send(envelope())
        tested = await connector(None, context).test()
    assert failed.value.error_class is ErrorClass.CONNECTION
    assert failed.value.retriable
    assert not tested.ok


async def test_slow_answer_times_out(relay_factory: Any, make_context: ContextFactory) -> None:
    relay = relay_factory(SmtpMode.PLAIN)
    relay.script("data", Scripted("250 2.0.0 Ok: too late", delay=3.0))
    async with make_context(seconds=0.5) as context:
        with pytest.raises(DeliveryError) as failed:
            await connector(relay, context).send(envelope())
    assert failed.value.error_class is ErrorClass.TIMEOUT
    assert failed.value.retriable


async def test_dropped_connection(relay_factory: Any, make_context: ContextFactory) -> None:
    relay = relay_factory(SmtpMode.PLAIN)
    relay.script("data", Scripted("250 never sent", drop=True))
    async with make_context() as context:
        with pytest.raises(DeliveryError) as failed:
            await connector(relay, context).send(envelope())
    assert failed.value.error_class is ErrorClass.CONNECTION
    assert failed.value.retriable


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]"])
async def test_loopback_relay_refused_without_the_allow_setting(
    relay_factory: Any, make_context: ContextFactory, host: str
) -> None:
    relay = relay_factory(SmtpMode.PLAIN)
    async with make_context(GUARDED) as context:
        smtp = connector(relay, context, host=host)
        with pytest.raises(DeliveryError) as failed:
            await smtp.send(envelope())
        tested = await smtp.test()
    assert failed.value.error_class is ErrorClass.BLOCKED
    assert not failed.value.retriable
    assert not tested.ok
    assert "non-public" in tested.detail
    assert relay.received == []


async def test_test_logs_in_and_says_so(
    relay_factory: Any, ca: trustme.CA, make_context: ContextFactory
) -> None:
    relay = relay_factory(SmtpMode.STARTTLS, auth=True)
    async with make_context(LOOPBACK) as context:
        tested = await connector(relay, context, ca, credentials=AUTH).test()
    assert tested.ok
    assert tested.status == 250
    assert "starttls" in tested.detail
    assert USERNAME in tested.detail
    assert relay.logins == [(USERNAME, True)]
    assert relay.received == []


@pytest.mark.parametrize(
    ("settings", "credentials"),
    [
        ({"host": "smtp://mail.example.org"}, {}),
        ({"host": "mail.example.org:25"}, {}),
        ({"host": "mail.example.org", "ca_pem": "not a certificate"}, {}),
        ({"host": "mail.example.org", "from_name": "Evil\r\nBcc: x@example.com"}, {}),
        ({"host": "mail.example.org"}, {"username": "only-a-user"}),
    ],
)
def test_settings_refused(settings: dict[str, Any], credentials: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SmtpSettings.model_validate({"from_address": "shop@example.org", **settings})
        SmtpCredentials.model_validate(credentials)


def test_password_masked_in_repr() -> None:
    credentials = SmtpCredentials(username=USERNAME, password=PASSWORD)  # type: ignore[arg-type]
    assert PASSWORD not in repr(credentials)
    assert PASSWORD not in str(credentials)
