"""Every built-in connector type through the send API, end to end: created with
`POST /workspaces/{id}/connectors` against its provider's local server (HTTP servers from
`tests/delivery/providers*`, a real aiosmtpd relay for SMTP), tested, sent to, and delivered by
the app's own worker — a success, a retriable provider error then success, and the provider's
auth error breaking the connector."""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any, ClassVar

import httpx
import pytest
import trustme

from tests.delivery.providers import discord, mailgun, slack, twilio
from tests.delivery.providers.base import ProviderServer, Received, Reply
from tests.delivery.providers.webhook import WebhookReceiver
from tests.delivery.providers_b import graph, hooks, smtp_server, telegram
from tests.delivery.send.conftest import Team
from tests.delivery.send.test_send_api import send
from tests.support.helpers import eventually
from tidings.delivery.connectors.base import RETRIABLE_ERRORS

pytestmark = pytest.mark.anyio

EMAIL = {
    "subject": "Your order has shipped",
    "text": "Hello Ada, your order 1042 is on its way.",
    "html": "<p>Hello Ada, your order 1042 is on its way.</p>",
}
SMS = {"text": "Your Tidings code: 424242"}
CHAT = {"text": "Deploy 1.2.3 finished"}
WEBHOOK = {"text": "order 1042 shipped", "subject": "Shipped"}

# The machine running the suite may be busy: a delivery has this long to settle.
SETTLE_WITHIN = 60.0


class Provider(ABC):
    """A connector type, its provider's local server, and how to read what the server got."""

    type: ClassVar[str]
    to: ClassVar[str]
    content: ClassVar[dict[str, str]]
    # The recipient as the provider sees it; None where the destination is fixed by the
    # connector's configuration (Slack incoming webhook, Apprise URL) and `to` is ignored.
    delivered_to: ClassVar[str | None]
    # Whether an attempt the provider refused still shows in `deliveries()` (HTTP servers
    # record every request; the SMTP relay records only the mail it accepted).
    refused_attempts_recorded: ClassVar[bool] = True
    # The error class of the provider's answer scripted by `fail_retriably_once`.
    retriable_class: ClassVar[str]
    # The status the provider answers with its auth error (`fail_auth`); Slack's Web API
    # says 200 with ok: false, Graph 400 with code 190, an SMTP relay 535 to AUTH.
    auth_status: ClassVar[int | None] = None

    @abstractmethod
    async def start(self, stack: AsyncExitStack) -> None: ...

    @abstractmethod
    def connector(self) -> dict[str, Any]:
        """`settings` and `credentials` of the connector aimed at the local server."""

    @abstractmethod
    def deliveries(self) -> list[tuple[str | None, str | None]]:
        """(recipient, text) of every message the provider was asked to deliver."""

    @abstractmethod
    def fail_retriably_once(self) -> None:
        """Script the provider's own rate-limit or server error for the next send."""

    @abstractmethod
    def fail_auth(self) -> dict[str, Any] | None:
        """Make the next send meet the provider's auth error: scripted, or credentials to use
        instead (returned)."""

    def expected_provider_message_id(self, message_id: str) -> str | None:
        """The provider message id when it can be known exactly; else check_provider_message_id."""
        return None

    def check_provider_message_id(self, message_id: str, value: str | None) -> None:
        assert value is None


class HttpProvider(Provider):
    server: ProviderServer

    async def start(self, stack: AsyncExitStack) -> None:
        await stack.enter_async_context(self.server)

    def deliveries(self) -> list[tuple[str | None, str | None]]:
        return [self.parse(request) for request in self.server.received]

    @abstractmethod
    def parse(self, request: Received) -> tuple[str | None, str | None]: ...


class WebhookProvider(HttpProvider):
    type = "webhook"
    to = "https://example.test/inbox/7"
    content = WEBHOOK
    delivered_to = to
    retriable_class = "server_error"
    auth_status = 401

    def __init__(self) -> None:
        self.server = WebhookReceiver()

    def connector(self) -> dict[str, Any]:
        server = self.server
        assert isinstance(server, WebhookReceiver)
        return {"settings": {"url": server.url}, "credentials": {"signing_secret": server.secret}}

    def parse(self, request: Received) -> tuple[str | None, str | None]:
        body = request.json()
        # An outgoing webhook receives the raw content as given, every part.
        assert body["content"] == WEBHOOK
        return body["recipient"], body["content"]["text"]

    def fail_retriably_once(self) -> None:
        self.server.script(Reply.json({"error": "down for maintenance"}, 503))

    def fail_auth(self) -> None:
        self.server.script(Reply.json({"error": "who are you"}, 401))


class MailgunProvider(HttpProvider):
    type = "mailgun"
    to = "ada@example.com"
    content = EMAIL
    delivered_to = to
    retriable_class = "rate_limited"
    auth_status = 401

    def __init__(self) -> None:
        self.server = mailgun.MailgunServer()

    def connector(self) -> dict[str, Any]:
        return {
            "settings": {
                "domain": mailgun.DOMAIN,
                "from_address": f"Acme <noreply@{mailgun.DOMAIN}>",
                "api_base": self.server.base_url,
            },
            "credentials": {"api_key": mailgun.API_KEY},
        }

    def parse(self, request: Received) -> tuple[str | None, str | None]:
        assert request.form_value("subject") == EMAIL["subject"]
        assert request.form_value("html") == EMAIL["html"]
        return request.form_value("to"), request.form_value("text")

    def fail_retriably_once(self) -> None:
        self.server.script(mailgun.MailgunServer.rate_limited("1"))

    def fail_auth(self) -> None:
        self.server.script(Reply.text("Forbidden", 401))

    def check_provider_message_id(self, message_id: str, value: str | None) -> None:
        # Mailgun's id without its angle brackets: the form its webhooks use.
        assert value is not None
        assert value.endswith(f"@{mailgun.DOMAIN}")
        assert not value.startswith("<")
        assert not value.endswith(">")


class TwilioProvider(HttpProvider):
    type = "twilio"
    to = "+15551234567"
    content = SMS
    delivered_to = to
    retriable_class = "server_error"
    auth_status = 401

    def __init__(self) -> None:
        self.server = twilio.TwilioServer()

    def connector(self) -> dict[str, Any]:
        return {
            "settings": {
                "account_sid": twilio.ACCOUNT_SID,
                "from_number": twilio.FROM_NUMBER,
                "api_base": self.server.base_url,
            },
            "credentials": {"auth_token": twilio.AUTH_TOKEN},
        }

    def parse(self, request: Received) -> tuple[str | None, str | None]:
        assert request.form_value("From") == twilio.FROM_NUMBER
        return request.form_value("To"), request.form_value("Body")

    def fail_retriably_once(self) -> None:
        self.server.script(twilio.twilio_error(20500, "An internal server error has occurred", 500))

    def fail_auth(self) -> None:
        self.server.script(twilio.twilio_error(20003, "Authenticate", 401))

    def check_provider_message_id(self, message_id: str, value: str | None) -> None:
        assert value is not None
        assert value.startswith("SM")


class SlackWebhookProvider(HttpProvider):
    type = "slack_webhook"
    to = "#ignored"
    content = CHAT
    delivered_to = None  # the webhook fixes the channel
    retriable_class = "rate_limited"
    auth_status = 404

    def __init__(self) -> None:
        self.server = slack.SlackServer()

    def connector(self) -> dict[str, Any]:
        return {
            "settings": {"api_base": self.server.base_url},
            "credentials": {"webhook_url": f"https://hooks.slack.com{slack.WEBHOOK_PATH}"},
        }

    def parse(self, request: Received) -> tuple[str | None, str | None]:
        assert request.path == slack.WEBHOOK_PATH
        return None, request.json()["text"]

    def fail_retriably_once(self) -> None:
        self.server.script(Reply.text("rate_limited", 429, headers={"Retry-After": "1"}))

    def fail_auth(self) -> None:
        # What Slack answers for a webhook that was removed.
        self.server.script(slack.webhook_error("no_service", 404))


class SlackApiProvider(HttpProvider):
    type = "slack"
    to = "C0TIDINGS"
    content = CHAT
    delivered_to = to
    retriable_class = "rate_limited"
    auth_status = 200

    def __init__(self) -> None:
        self.server = slack.SlackServer()

    def connector(self) -> dict[str, Any]:
        return {
            "settings": {"api_base": f"{self.server.base_url}/api"},
            "credentials": {"bot_token": slack.BOT_TOKEN},
        }

    def parse(self, request: Received) -> tuple[str | None, str | None]:
        assert request.path == "/api/chat.postMessage"
        body = request.json()
        return body["channel"], body["text"]

    def fail_retriably_once(self) -> None:
        self.server.script(slack.slack_error("ratelimited", 429, **{"Retry-After": "1"}))

    def fail_auth(self) -> None:
        self.server.script(slack.slack_error("token_revoked"))

    def check_provider_message_id(self, message_id: str, value: str | None) -> None:
        assert value is not None
        channel, _, ts = value.partition(":")
        assert channel == self.to
        assert float(ts) > 0


class DiscordProvider(HttpProvider):
    type = "discord"
    to = "ignored"
    content = CHAT
    delivered_to = None  # the webhook fixes the channel
    retriable_class = "rate_limited"
    auth_status = 401

    def __init__(self) -> None:
        self.server = discord.DiscordServer()

    def connector(self) -> dict[str, Any]:
        return {
            "settings": {"api_base": f"{self.server.base_url}/api/v10"},
            "credentials": {
                "webhook_url": (
                    f"https://discord.com/api/webhooks/{discord.WEBHOOK_ID}/{discord.WEBHOOK_TOKEN}"
                )
            },
        }

    def parse(self, request: Received) -> tuple[str | None, str | None]:
        assert request.query.get("wait") == ["true"]
        return None, request.json()["content"]

    def fail_retriably_once(self) -> None:
        self.server.script(discord.rate_limited(0.3))

    def fail_auth(self) -> None:
        self.server.script(discord.discord_error(50027, "Invalid Webhook Token", 401))

    def check_provider_message_id(self, message_id: str, value: str | None) -> None:
        assert value is not None
        assert value.isdigit()


class TelegramProvider(HttpProvider):
    type = "telegram"
    to = str(telegram.KNOWN_CHAT)
    content = CHAT
    delivered_to = to
    retriable_class = "rate_limited"
    auth_status = 401

    def __init__(self) -> None:
        self.server = telegram.TelegramServer()

    def connector(self) -> dict[str, Any]:
        return {
            "settings": {"api_base": self.server.base_url},
            "credentials": {"bot_token": telegram.BOT_TOKEN},
        }

    def parse(self, request: Received) -> tuple[str | None, str | None]:
        assert request.path == f"/bot{telegram.BOT_TOKEN}/sendMessage"
        body = request.json()
        return str(body["chat_id"]), body["text"]

    def fail_retriably_once(self) -> None:
        self.server.script(telegram.TelegramServer.flood(1))

    def fail_auth(self) -> None:
        self.server.script(telegram.error(401, "Unauthorized"))

    def expected_provider_message_id(self, message_id: str) -> str | None:
        return f"{telegram.KNOWN_CHAT}:1001"  # the server's first message id


class MessengerProvider(HttpProvider):
    type = "messenger"
    to = graph.KNOWN_PSID
    content = CHAT
    delivered_to = to
    retriable_class = "server_error"
    auth_status = 400

    def __init__(self) -> None:
        self.server = graph.GraphServer()

    def connector(self) -> dict[str, Any]:
        return {
            "settings": {"api_base": self.server.base_url},
            "credentials": {"page_access_token": graph.PAGE_TOKEN, "app_secret": graph.APP_SECRET},
        }

    def parse(self, request: Received) -> tuple[str | None, str | None]:
        body = request.json()
        return body["recipient"]["id"], body["message"]["text"]

    def fail_retriably_once(self) -> None:
        self.server.script(
            graph.graph_error(
                500,
                2,
                "An unexpected error has occurred. Please retry your request later.",
                is_transient=True,
            )
        )

    def fail_auth(self) -> None:
        self.server.script(
            graph.graph_error(
                400, 190, "Error validating access token: The session has been invalidated"
            )
        )

    def check_provider_message_id(self, message_id: str, value: str | None) -> None:
        assert value is not None
        assert value.startswith("m_")


class AppriseProvider(HttpProvider):
    type = "apprise"
    to = "ignored: the URL is the destination"
    content = CHAT
    delivered_to = None
    retriable_class = "server_error"

    def __init__(self) -> None:
        self.server = hooks.HookServer()

    def connector(self) -> dict[str, Any]:
        url = (
            f"json://{hooks.HOOK_USER}:{hooks.HOOK_PASSWORD}@127.0.0.1:{self.server.port}"
            f"/hooks/{hooks.HOOK_PATH_TOKEN}"
        )
        return {"settings": {"notify_type": "success"}, "credentials": {"url": url}}

    def parse(self, request: Received) -> tuple[str | None, str | None]:
        assert request.basic_auth() == (hooks.HOOK_USER, hooks.HOOK_PASSWORD)
        body = request.json()
        assert body["type"] == "success"
        return None, body["message"]

    def fail_retriably_once(self) -> None:
        self.server.script(Reply.text("overloaded", 503))

    def fail_auth(self) -> None:  # pragma: no cover - see AUTH_KINDS
        raise NotImplementedError


class SmtpProvider(Provider):
    """A STARTTLS relay with a certificate from a private CA and AUTH, on 127.0.0.1."""

    type = "smtp"
    to = "ada@example.com"
    content = EMAIL
    delivered_to = to
    retriable_class = "rate_limited"
    auth_status = 535
    refused_attempts_recorded = False

    def __init__(self, ca: trustme.CA) -> None:
        self.ca = ca
        self.relay = smtp_server.SmtpRelay(
            smtp_server.SmtpMode.STARTTLS, ca, auth=True, hostname="127.0.0.1"
        )

    async def start(self, stack: AsyncExitStack) -> None:
        self.relay.start()
        stack.callback(self.relay.stop)

    def connector(self) -> dict[str, Any]:
        return {
            "settings": {
                "host": "127.0.0.1",
                "port": self.relay.port,
                "security": "starttls",
                "from_address": "shop@example.org",
                "from_name": "Ada's Shop",
                "ca_pem": self.ca.cert_pem.bytes().decode(),
            },
            "credentials": {"username": smtp_server.USERNAME, "password": smtp_server.PASSWORD},
        }

    def deliveries(self) -> list[tuple[str | None, str | None]]:
        found: list[tuple[str | None, str | None]] = []
        for mail in self.relay.received:
            assert mail.tls
            assert mail.login == smtp_server.USERNAME
            message = mail.message()
            assert message["Subject"] == EMAIL["subject"]
            plain = message.get_body(("plain",))
            assert plain is not None
            [recipient] = mail.rcpt_tos
            found.append((recipient, str(plain.get_content()).strip()))
        return found

    def fail_retriably_once(self) -> None:
        self.relay.script(
            "mail", smtp_server.Scripted("421 4.7.0 Too many messages from you, try later")
        )

    def fail_auth(self) -> dict[str, Any]:
        # The relay itself refuses the login: 535.
        return {"username": smtp_server.USERNAME, "password": "not-the-Pa55word-91ab"}

    def expected_provider_message_id(self, message_id: str) -> str | None:
        return f"<{message_id}.tidings@example.org>"


HTTP_PROVIDERS: dict[str, type[HttpProvider]] = {
    "webhook": WebhookProvider,
    "mailgun": MailgunProvider,
    "twilio": TwilioProvider,
    "slack_webhook": SlackWebhookProvider,
    "slack": SlackApiProvider,
    "discord": DiscordProvider,
    "telegram": TelegramProvider,
    "messenger": MessengerProvider,
    "apprise": AppriseProvider,
}
KINDS = ["webhook", "smtp", *[kind for kind in HTTP_PROVIDERS if kind != "webhook"]]
# Apprise answers a verdict, not a status: a refused login is a failure like any other
# (server_error, retriable; see docs/connectors.md), so there is no auth error to break it.
AUTH_KINDS = [kind for kind in KINDS if kind != "apprise"]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def apprise_plugins() -> None:
    """Load Apprise's plugins once per process, before a delivery's timeout runs (as
    tests/delivery/connectors_b/conftest.py does; its e-mail plugin imports the deprecated
    `imghdr`, and here every warning is an error)."""
    import apprise

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'imghdr' is deprecated", DeprecationWarning)
        apprise.Apprise.instantiate("json://localhost/")


@pytest.fixture
async def provider(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Provider]:
    made: Provider
    if kind == "smtp":
        made = SmtpProvider(request.getfixturevalue("ca"))
    else:
        if kind == "apprise":
            request.getfixturevalue("apprise_plugins")
        made = HTTP_PROVIDERS[kind]()
    async with AsyncExitStack() as stack:
        await made.start(stack)
        yield made


def test_every_builtin_type_is_covered() -> None:
    from tidings.delivery.connectors.registry import BUILTIN

    assert sorted(KINDS) == sorted(BUILTIN)


async def create(
    client: httpx.AsyncClient,
    team: Team,
    provider: Provider,
    credentials: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body = provider.connector()
    if credentials is not None:
        body["credentials"] = credentials
    response = await client.post(
        f"/api/v1/workspaces/{team.workspace_id}/connectors",
        json={"type": provider.type, "name": "out", **body},
        headers=team.owner.headers,
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert created["type"] == provider.type
    assert created["status"] == "active"
    return created


async def send_one(client: httpx.AsyncClient, team: Team, provider: Provider) -> dict[str, Any]:
    """Send through the connector, wait until the message settles, answer it."""
    accepted = await send(
        client, team, {"to": provider.to, "connector": "out", "content": provider.content}
    )
    assert accepted.status_code == 202, accepted.text
    message_id = accepted.json()["id"]
    result: dict[str, Any] = {}

    async def check() -> bool:
        response = await client.get(f"/api/v1/messages/{message_id}", headers=team.key_headers)
        assert response.status_code == 200, response.text
        result.update(response.json())
        return result["status"] not in {"queued", "sending"}

    await eventually(check, within=SETTLE_WITHIN, interval=0.05)
    return result


async def connector_status(client: httpx.AsyncClient, team: Team) -> str:
    response = await client.get(
        f"/api/v1/workspaces/{team.workspace_id}/connectors/out", headers=team.owner.headers
    )
    assert response.status_code == 200, response.text
    status: str = response.json()["status"]
    return status


def expected_delivery(provider: Provider) -> tuple[str | None, str | None]:
    return provider.delivered_to, provider.content["text"]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_message_is_delivered(
    client: httpx.AsyncClient, team: Team, provider: Provider
) -> None:
    await create(client, team, provider)
    message = await send_one(client, team, provider)

    assert message["status"] == "sent", message
    assert message["attempts"] == 1
    [attempt] = message["attempt_log"]
    assert attempt["outcome"] == "sent"
    assert provider.deliveries() == [expected_delivery(provider)]
    expected_id = provider.expected_provider_message_id(message["id"])
    if expected_id is not None:
        assert message["provider_message_id"] == expected_id
    else:
        provider.check_provider_message_id(message["id"], message["provider_message_id"])

    tested = await client.post(
        f"/api/v1/workspaces/{team.workspace_id}/connectors/out/test",
        headers=team.owner.headers,
    )
    assert tested.status_code == 200, tested.text
    assert tested.json()["ok"] is True, tested.json()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_retriable_provider_error_is_retried_then_sent(
    client: httpx.AsyncClient, team: Team, provider: Provider
) -> None:
    await create(client, team, provider)
    provider.fail_retriably_once()
    message = await send_one(client, team, provider)

    assert message["status"] == "sent", message
    assert message["attempts"] == 2
    first, second = message["attempt_log"]
    assert first["outcome"] == "retry"
    assert first["error_class"] == provider.retriable_class, first
    assert first["error_class"] in RETRIABLE_ERRORS
    assert second["outcome"] == "sent"
    assert second["error_class"] is None
    delivered = expected_delivery(provider)
    tries = 2 if provider.refused_attempts_recorded else 1
    assert provider.deliveries() == [delivered] * tries
    assert await connector_status(client, team) == "active"


@pytest.mark.parametrize("kind", AUTH_KINDS)
async def test_the_providers_auth_error_fails_and_breaks_the_connector(
    client: httpx.AsyncClient, team: Team, provider: Provider
) -> None:
    await create(client, team, provider, credentials=provider.fail_auth())
    message = await send_one(client, team, provider)

    assert message["status"] == "failed", message
    assert message["error_class"] == "auth", message
    assert message["attempts"] == 1
    [attempt] = message["attempt_log"]
    assert attempt["outcome"] == "failed"
    assert attempt["error_class"] == "auth"
    assert attempt["provider_status"] == provider.auth_status, attempt
    assert await connector_status(client, team) == "broken"
    if provider.refused_attempts_recorded:
        assert provider.deliveries() == [expected_delivery(provider)]
    else:
        assert provider.deliveries() == []
