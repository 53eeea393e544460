"""The Discord webhook connector against a local server speaking Discord's webhook API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import ValidationError

from tests.delivery.providers import discord as dc
from tests.delivery.providers.base import Reply
from tests.delivery.providers.context import connector_context, envelope
from tidings.delivery.connectors.base import DeliveryError, ErrorClass
from tidings.delivery.connectors.discord import (
    DiscordCredentials,
    DiscordSettings,
    DiscordWebhookConnector,
)
from tidings.delivery.connectors.http import HttpConnectorContext


@pytest.fixture
async def server() -> AsyncIterator[dc.DiscordServer]:
    async with dc.DiscordServer() as running:
        yield running


@pytest.fixture
async def context() -> AsyncIterator[HttpConnectorContext]:
    async with connector_context(timeout_seconds=2.0) as ctx:
        yield ctx


def webhook_url(webhook_id: str = dc.WEBHOOK_ID, token: str = dc.WEBHOOK_TOKEN) -> str:
    return f"https://discord.com/api/webhooks/{webhook_id}/{token}"


def connector(
    server: dc.DiscordServer,
    context: HttpConnectorContext,
    url: str | None = None,
    **values: object,
) -> DiscordWebhookConnector:
    return DiscordWebhookConnector(
        DiscordSettings.model_validate({"api_base": f"{server.base_url}/api/v10", **values}),
        DiscordCredentials.model_validate({"webhook_url": url or webhook_url()}),
        context,
    )


async def failure(discord: DiscordWebhookConnector, text: str = "hello") -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        await discord.send(envelope("ignored", {"text": text}))
    return caught.value


async def test_send_waits_for_the_message_id(
    server: dc.DiscordServer, context: HttpConnectorContext
) -> None:
    discord = connector(server, context, username="Tidings Bot")
    result = await discord.send(envelope("ignored", {"text": "Deploy done @everyone"}))

    request = server.last()
    assert request.method == "POST"
    assert request.path == f"/api/v10/webhooks/{dc.WEBHOOK_ID}/{dc.WEBHOOK_TOKEN}"
    assert request.query == {"wait": ["true"]}
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "content": "Deploy done @everyone",
        "username": "Tidings Bot",
        "allowed_mentions": {"parse": []},  # no accidental @everyone ping
    }
    assert result.status == 200
    assert result.provider_message_id is not None
    assert result.provider_message_id.isdigit()
    assert dc.WEBHOOK_TOKEN not in (result.response or "")


async def test_mentions_when_allowed(
    server: dc.DiscordServer, context: HttpConnectorContext
) -> None:
    await connector(server, context, allow_mentions=True).send(envelope("x", {"text": "@here"}))
    assert server.last().json()["allowed_mentions"] == {"parse": ["users", "roles", "everyone"]}


async def test_rate_limited_uses_the_precise_body_value(
    server: dc.DiscordServer, context: HttpConnectorContext
) -> None:
    server.script(dc.rate_limited(0.529))
    error = await failure(connector(server, context))
    assert error.error_class is ErrorClass.RATE_LIMITED
    assert error.status == 429
    assert error.retry_after == 0.529  # not the header's rounded 1


async def test_rate_limited_header_only(
    server: dc.DiscordServer, context: HttpConnectorContext
) -> None:
    server.script(Reply.text("slow down", 429, headers={"Retry-After": "4"}))
    error = await failure(connector(server, context))
    assert error.error_class is ErrorClass.RATE_LIMITED
    assert error.retry_after == 4.0


async def test_deleted_webhook_is_auth(
    server: dc.DiscordServer, context: HttpConnectorContext
) -> None:
    error = await failure(connector(server, context, webhook_url("999999999999")))
    assert error.error_class is ErrorClass.AUTH
    assert error.status == 404
    assert "10015" in error.detail


async def test_wrong_token_is_auth_and_never_shown(
    server: dc.DiscordServer, context: HttpConnectorContext
) -> None:
    wrong = "tok-" + "x" * 64
    error = await failure(connector(server, context, webhook_url(token=wrong)))
    assert error.error_class is ErrorClass.AUTH
    assert error.status == 401
    assert wrong not in str(error)
    assert wrong not in (error.response or "")


async def test_server_echoing_the_token_is_redacted(
    server: dc.DiscordServer, context: HttpConnectorContext
) -> None:
    server.script(dc.discord_error(50035, f"Invalid Form Body for {dc.WEBHOOK_TOKEN}", 400))
    error = await failure(connector(server, context))
    assert error.error_class is ErrorClass.INVALID_REQUEST
    assert dc.WEBHOOK_TOKEN not in str(error)
    assert dc.WEBHOOK_TOKEN not in (error.response or "")


async def test_empty_message_refused_by_discord(
    server: dc.DiscordServer, context: HttpConnectorContext
) -> None:
    server.script(dc.discord_error(50006, "Cannot send an empty message", 400))
    error = await failure(connector(server, context))
    assert error.error_class is ErrorClass.INVALID_REQUEST
    assert "50006" in error.detail


async def test_too_long_refused_before_sending(
    server: dc.DiscordServer, context: HttpConnectorContext
) -> None:
    error = await failure(connector(server, context), text="x" * 2001)
    assert error.error_class is ErrorClass.INVALID_REQUEST
    assert server.received == []


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors(
    server: dc.DiscordServer, context: HttpConnectorContext, status: int
) -> None:
    server.script(dc.discord_error(0, "Internal Server Error", status))
    error = await failure(connector(server, context))
    assert error.error_class is ErrorClass.SERVER_ERROR
    assert error.retriable


async def test_slow_and_dropped(server: dc.DiscordServer) -> None:
    server.script(Reply.slow(3.0), Reply.dropped())
    async with connector_context(timeout_seconds=0.3) as context:
        slow = await failure(connector(server, context))
        dropped = await failure(connector(server, context))
    assert slow.error_class is ErrorClass.TIMEOUT
    assert dropped.error_class is ErrorClass.CONNECTION


async def test_test_gets_the_webhook(
    server: dc.DiscordServer, context: HttpConnectorContext
) -> None:
    ok = await connector(server, context).test()
    assert ok.ok, ok.detail
    assert dc.CHANNEL_ID in ok.detail
    assert server.last().method == "GET"
    assert server.posted == []
    gone = await connector(server, context, webhook_url("999999999999")).test()
    assert not gone.ok
    assert gone.status == 404


@pytest.mark.parametrize(
    "url",
    [
        f"https://discordapp.com/api/webhooks/{dc.WEBHOOK_ID}/{dc.WEBHOOK_TOKEN}",
        f"https://ptb.discord.com/api/v10/webhooks/{dc.WEBHOOK_ID}/{dc.WEBHOOK_TOKEN}",
        f"https://canary.discord.com/api/webhooks/{dc.WEBHOOK_ID}/{dc.WEBHOOK_TOKEN}/",
    ],
)
async def test_url_forms_all_reach_api_base(
    server: dc.DiscordServer, context: HttpConnectorContext, url: str
) -> None:
    await connector(server, context, url).send(envelope("x", {"text": "hi"}))
    assert server.last().path == f"/api/v10/webhooks/{dc.WEBHOOK_ID}/{dc.WEBHOOK_TOKEN}"


@pytest.mark.parametrize(
    "url",
    [
        f"http://discord.com/api/webhooks/{dc.WEBHOOK_ID}/{dc.WEBHOOK_TOKEN}",
        f"https://evil.example.com/api/webhooks/{dc.WEBHOOK_ID}/{dc.WEBHOOK_TOKEN}",
        "https://discord.com/api/webhooks/abc/def",
    ],
)
def test_webhook_url_checked(url: str) -> None:
    with pytest.raises(ValidationError):
        DiscordCredentials.model_validate({"webhook_url": url})
