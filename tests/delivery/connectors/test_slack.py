"""Slack's incoming webhook and chat.postMessage against a local server speaking Slack's
answers: 200 with `ok: false` and an error word, 429 with Retry-After, 5xx, late and dropped."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import ValidationError

from tests.delivery.providers import slack as sl
from tests.delivery.providers.base import Reply
from tests.delivery.providers.context import connector_context, envelope
from tidings.delivery.connectors.base import DeliveryError, ErrorClass
from tidings.delivery.connectors.http import HttpConnectorContext
from tidings.delivery.connectors.slack import (
    SlackApiConnector,
    SlackApiCredentials,
    SlackApiSettings,
    SlackWebhookConnector,
    SlackWebhookCredentials,
    SlackWebhookSettings,
)

BLOCKS = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Deploy* done"}}]


@pytest.fixture
async def server() -> AsyncIterator[sl.SlackServer]:
    async with sl.SlackServer() as running:
        yield running


@pytest.fixture
async def context() -> AsyncIterator[HttpConnectorContext]:
    async with connector_context(timeout_seconds=2.0) as ctx:
        yield ctx


def hook(
    server: sl.SlackServer, context: HttpConnectorContext, path: str = sl.WEBHOOK_PATH
) -> SlackWebhookConnector:
    return SlackWebhookConnector(
        SlackWebhookSettings(api_base=server.base_url, username="Tidings"),
        SlackWebhookCredentials.model_validate({"webhook_url": f"https://hooks.slack.com{path}"}),
        context,
    )


def bot(
    server: sl.SlackServer, context: HttpConnectorContext, token: str = sl.BOT_TOKEN
) -> SlackApiConnector:
    return SlackApiConnector(
        SlackApiSettings(api_base=f"{server.base_url}/api"),
        SlackApiCredentials.model_validate({"bot_token": token}),
        context,
    )


async def failure(
    connector: SlackApiConnector | SlackWebhookConnector, channel: str = "C0TIDINGS"
) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        await connector.send(envelope(channel, {"text": "hello"}))
    return caught.value


# -- incoming webhook ------------------------------------------------------------------------


async def test_webhook_posts_text_and_blocks(
    server: sl.SlackServer, context: HttpConnectorContext
) -> None:
    result = await hook(server, context).send(
        envelope("ignored", {"text": "Deploy done", "blocks": BLOCKS})
    )
    request = server.last()
    assert request.method == "POST"
    # The credential's host is not used: its path goes to api_base.
    assert request.path == sl.WEBHOOK_PATH
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {"text": "Deploy done", "blocks": BLOCKS, "username": "Tidings"}
    assert result.status == 200
    assert result.provider_message_id is None


@pytest.mark.parametrize(
    ("reply", "error_class"),
    [
        (sl.webhook_error("invalid_payload", 400), ErrorClass.INVALID_REQUEST),
        (sl.webhook_error("action_prohibited", 403), ErrorClass.AUTH),
        (sl.webhook_error("no_service", 404), ErrorClass.AUTH),
        (sl.webhook_error("channel_not_found", 404), ErrorClass.CONFIGURATION),
        (sl.webhook_error("channel_is_archived", 410), ErrorClass.CONFIGURATION),
        (Reply.text("rate limited", 429, headers={"Retry-After": "30"}), ErrorClass.RATE_LIMITED),
        (Reply.text("", 500), ErrorClass.SERVER_ERROR),
        (Reply.text("", 503), ErrorClass.SERVER_ERROR),
    ],
    ids=lambda v: f"{v.status}-{v.body.decode()[:20]}" if isinstance(v, Reply) else None,
)
async def test_webhook_errors(
    server: sl.SlackServer, context: HttpConnectorContext, reply: Reply, error_class: ErrorClass
) -> None:
    server.script(reply)
    error = await failure(hook(server, context))
    assert error.error_class is error_class
    assert error.status == reply.status
    if reply.status == 429:
        assert error.retry_after == 30.0


async def test_webhook_secret_path_never_in_errors(
    server: sl.SlackServer, context: HttpConnectorContext
) -> None:
    server.script(Reply.text(f"invalid_token for {sl.WEBHOOK_PATH}", 400))
    error = await failure(hook(server, context))
    assert sl.WEBHOOK_PATH not in str(error)
    assert sl.WEBHOOK_PATH not in (error.response or "")
    # The dropped-connection error names no URL either.
    server.script(Reply.dropped())
    dropped = await failure(hook(server, context))
    assert dropped.error_class is ErrorClass.CONNECTION
    assert "services" not in str(dropped)


async def test_webhook_removed_is_auth(
    server: sl.SlackServer, context: HttpConnectorContext
) -> None:
    error = await failure(hook(server, context, path="/services/T0/B0/gone"))
    assert error.error_class is ErrorClass.AUTH
    assert error.status == 404


async def test_webhook_test_posts_nothing(
    server: sl.SlackServer, context: HttpConnectorContext
) -> None:
    live = await hook(server, context).test()
    assert live.ok, live.detail
    assert server.posted == []
    dead = await hook(server, context, path="/services/T0/B0/gone").test()
    assert not dead.ok
    assert "auth" in dead.detail


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.slack.com/api/chat.postMessage",
        "http://hooks.slack.com/services/T0/B0/x",
        "not a url",
    ],
)
def test_webhook_url_must_be_one(url: str) -> None:
    with pytest.raises(ValidationError):
        SlackWebhookCredentials.model_validate({"webhook_url": url})


# -- Web API ---------------------------------------------------------------------------------


async def test_post_message_request_shape(
    server: sl.SlackServer, context: HttpConnectorContext
) -> None:
    message = envelope("C0TIDINGS", {"text": "Deploy done", "blocks": BLOCKS})
    result = await bot(server, context).send(message)

    request = server.last()
    assert request.path == "/api/chat.postMessage"
    assert request.bearer() == sl.BOT_TOKEN
    assert request.headers["content-type"] == "application/json"
    body = request.json()
    assert body["channel"] == "C0TIDINGS"
    assert body["text"] == "Deploy done"
    assert body["blocks"] == BLOCKS
    assert body["unfurl_links"] is False
    assert body["metadata"] == {
        "event_type": "tidings_delivery",
        "event_payload": {"delivery_id": message.delivery_id},
    }
    assert result.provider_message_id is not None
    channel, _, ts = result.provider_message_id.partition(":")
    assert channel == "C0TIDINGS"
    assert float(ts) > 0


@pytest.mark.parametrize(
    ("channel", "token", "error_class", "word"),
    [
        ("C0NOWHERE", sl.BOT_TOKEN, ErrorClass.INVALID_RECIPIENT, "channel_not_found"),
        ("C0ARCHIVED", sl.BOT_TOKEN, ErrorClass.INVALID_RECIPIENT, "is_archived"),
        ("C0TIDINGS", "xoxb-wrong", ErrorClass.AUTH, "invalid_auth"),
    ],
)
async def test_post_message_errors_from_the_server(
    server: sl.SlackServer,
    context: HttpConnectorContext,
    channel: str,
    token: str,
    error_class: ErrorClass,
    word: str,
) -> None:
    error = await failure(bot(server, context, token), channel)
    assert error.error_class is error_class
    assert error.status == 200  # Slack says it in the body
    assert word in error.detail
    assert "xoxb-wrong" not in str(error)


@pytest.mark.parametrize(
    ("word", "error_class"),
    [
        ("not_authed", ErrorClass.AUTH),
        ("account_inactive", ErrorClass.AUTH),
        ("token_revoked", ErrorClass.AUTH),
        ("not_in_channel", ErrorClass.INVALID_RECIPIENT),
        ("missing_scope", ErrorClass.CONFIGURATION),
        ("msg_too_long", ErrorClass.INVALID_REQUEST),
        ("invalid_blocks", ErrorClass.INVALID_REQUEST),
        ("internal_error", ErrorClass.SERVER_ERROR),
        ("request_timeout", ErrorClass.TIMEOUT),
    ],
)
async def test_post_message_error_words(
    server: sl.SlackServer, context: HttpConnectorContext, word: str, error_class: ErrorClass
) -> None:
    server.script(sl.slack_error(word))
    error = await failure(bot(server, context))
    assert error.error_class is error_class
    assert word in error.detail


async def test_post_message_rate_limited(
    server: sl.SlackServer, context: HttpConnectorContext
) -> None:
    server.script(sl.slack_error("ratelimited", 429, **{"Retry-After": "17"}))
    error = await failure(bot(server, context))
    assert error.error_class is ErrorClass.RATE_LIMITED
    assert error.status == 429
    assert error.retry_after == 17.0


@pytest.mark.parametrize("status", [500, 503])
async def test_post_message_server_errors(
    server: sl.SlackServer, context: HttpConnectorContext, status: int
) -> None:
    server.script(Reply.text("<html>upstream error</html>", status))
    error = await failure(bot(server, context))
    assert error.error_class is ErrorClass.SERVER_ERROR
    assert error.status == status


async def test_post_message_http_401_without_body_is_auth(
    server: sl.SlackServer, context: HttpConnectorContext
) -> None:
    server.script(Reply.text("", 401))
    error = await failure(bot(server, context))
    assert error.error_class is ErrorClass.AUTH


async def test_post_message_slow_and_dropped(server: sl.SlackServer) -> None:
    server.script(Reply.slow(3.0), Reply.dropped())
    async with connector_context(timeout_seconds=0.3) as context:
        slow = await failure(bot(server, context))
        dropped = await failure(bot(server, context))
    assert slow.error_class is ErrorClass.TIMEOUT
    assert dropped.error_class is ErrorClass.CONNECTION


async def test_auth_test(server: sl.SlackServer, context: HttpConnectorContext) -> None:
    ok = await bot(server, context).test()
    assert ok.ok, ok.detail
    assert "tidings_bot" in ok.detail
    assert server.last().path == "/api/auth.test"
    refused = await bot(server, context, "xoxb-wrong").test()
    assert not refused.ok
    assert "invalid_auth" in refused.detail


def test_token_shape_checked() -> None:
    with pytest.raises(ValidationError):
        SlackApiCredentials.model_validate({"bot_token": "not-a-token"})
    assert sl.BOT_TOKEN not in repr(SlackApiCredentials.model_validate({"bot_token": sl.BOT_TOKEN}))
