"""TelegramConnector against a local Bot API server: the request it makes, each error Telegram
answers (its own retry_after honoured), timeouts and drops, the SSRF guard, and a bot token that
appears in no error, excerpt or log line although it is part of every URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError

from tests.delivery.connectors_b.conftest import GUARDED, ContextFactory, assert_secret_absent
from tests.delivery.providers.base import Reply
from tests.delivery.providers_b.telegram import (
    BLOCKED_CHAT,
    BOT_TOKEN,
    BOT_USERNAME,
    CHANNEL,
    KNOWN_CHAT,
    TelegramServer,
    error,
)
from tidings.delivery.connectors.base import (
    Channel,
    ConnectorContext,
    DeliveryError,
    ErrorClass,
    OutboundEnvelope,
)
from tidings.delivery.connectors.registry import get_connector_type
from tidings.delivery.connectors.telegram import (
    TelegramConnector,
    TelegramCredentials,
    TelegramSettings,
)


@pytest.fixture
async def telegram() -> AsyncIterator[TelegramServer]:
    async with TelegramServer() as server:
        yield server


def connector(
    server: TelegramServer, context: ConnectorContext, *, token: str = BOT_TOKEN, **settings: Any
) -> TelegramConnector:
    return TelegramConnector(
        TelegramSettings.model_validate({"api_base": server.base_url, **settings}),
        TelegramCredentials.model_validate({"bot_token": token}),
        context,
    )


def message(
    recipient: str | int = KNOWN_CHAT, text: str = "Your order has shipped"
) -> OutboundEnvelope:
    return OutboundEnvelope("dlv_tg_1", str(recipient), {"text": text})


async def failure(
    server: TelegramServer, context: ConnectorContext, envelope: OutboundEnvelope | None = None
) -> DeliveryError:
    with pytest.raises(DeliveryError) as failed:
        await connector(server, context).send(envelope or message())
    return failed.value


def test_registered_as_builtin() -> None:
    assert get_connector_type("telegram") is TelegramConnector
    assert TelegramConnector.channel is Channel.CHAT
    assert TelegramConnector.default_rate_per_second == 30


async def test_send_message_request_and_result(
    telegram: TelegramServer, make_context: ContextFactory
) -> None:
    async with make_context() as context:
        result = await connector(
            telegram, context, parse_mode="HTML", disable_notification=True
        ).send(message(text="<b>Shipped</b>"))
    request = telegram.last()
    assert request.method == "POST"
    assert request.path == f"/bot{BOT_TOKEN}/sendMessage"
    assert request.json() == {
        "chat_id": KNOWN_CHAT,
        "text": "<b>Shipped</b>",
        "parse_mode": "HTML",
        "disable_notification": True,
    }
    assert result.provider_message_id == f"{KNOWN_CHAT}:1001"
    assert result.status == 200
    assert result.response is not None
    assert BOT_TOKEN not in result.response


async def test_channel_username_recipient(
    telegram: TelegramServer, make_context: ContextFactory
) -> None:
    async with make_context() as context:
        result = await connector(telegram, context).send(message(CHANNEL))
    assert telegram.last().json()["chat_id"] == CHANNEL
    assert result.provider_message_id == f"{CHANNEL}:1001"


async def test_test_calls_get_me(telegram: TelegramServer, make_context: ContextFactory) -> None:
    async with make_context() as context:
        tested = await connector(telegram, context).test()
        refused = await connector(telegram, context, token="7301234567:WRONGwrongWRONG").test()
    assert tested.ok
    assert BOT_USERNAME in tested.detail
    assert telegram.received[0].path == f"/bot{BOT_TOKEN}/getMe"
    assert not refused.ok
    assert refused.status == 401
    assert "WRONGwrongWRONG" not in refused.detail


async def test_flood_control_retry_after_from_parameters(
    telegram: TelegramServer, make_context: ContextFactory
) -> None:
    telegram.script(TelegramServer.flood(7))
    async with make_context() as context:
        error_ = await failure(telegram, context)
    assert error_.error_class is ErrorClass.RATE_LIMITED
    assert error_.retriable
    assert error_.retry_after == 7
    assert error_.status == 429
    assert "retry after 7" in error_.detail


async def test_retry_after_header_when_parameters_lack_it(
    telegram: TelegramServer, make_context: ContextFactory
) -> None:
    telegram.script(
        Reply.json(
            {"ok": False, "error_code": 429, "description": "Too Many Requests"},
            429,
            headers={"Retry-After": "12"},
        )
    )
    async with make_context() as context:
        error_ = await failure(telegram, context)
    assert error_.error_class is ErrorClass.RATE_LIMITED
    assert error_.retry_after == 12


@pytest.mark.parametrize(
    ("recipient", "scripted", "expected", "status"),
    [
        (99, None, ErrorClass.INVALID_RECIPIENT, 400),  # chat not found
        (BLOCKED_CHAT, None, ErrorClass.INVALID_RECIPIENT, 403),  # blocked: the token is fine
        (
            KNOWN_CHAT,
            error(403, "Forbidden: bot was kicked from the group chat"),
            ErrorClass.INVALID_RECIPIENT,
            403,
        ),
        (
            KNOWN_CHAT,
            error(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                migrate_to_chat_id=-1001234567890,
            ),
            ErrorClass.INVALID_RECIPIENT,
            400,
        ),
        (
            KNOWN_CHAT,
            error(400, "Bad Request: can't parse entities: Unexpected end tag"),
            ErrorClass.INVALID_REQUEST,
            400,
        ),
        (KNOWN_CHAT, error(500, "Internal Server Error"), ErrorClass.SERVER_ERROR, 500),
        (KNOWN_CHAT, error(502, "Bad Gateway"), ErrorClass.SERVER_ERROR, 502),
        # A proxy's page, not the Bot API's JSON.
        (
            KNOWN_CHAT,
            Reply.text("<html>503 Service Unavailable</html>", 503),
            ErrorClass.SERVER_ERROR,
            503,
        ),
    ],
)
async def test_telegram_errors_classed(
    telegram: TelegramServer,
    make_context: ContextFactory,
    recipient: int,
    scripted: Reply | None,
    expected: ErrorClass,
    status: int,
) -> None:
    if scripted is not None:
        telegram.script(scripted)
    async with make_context() as context:
        error_ = await failure(telegram, context, message(recipient))
    assert error_.error_class is expected
    assert error_.status == status
    assert error_.response


async def test_upgraded_group_names_the_new_chat(
    telegram: TelegramServer, make_context: ContextFactory
) -> None:
    telegram.script(
        error(400, "Bad Request: group chat was upgraded", migrate_to_chat_id=-1001234567890)
    )
    async with make_context() as context:
        error_ = await failure(telegram, context)
    assert "-1001234567890" in error_.detail


async def test_unknown_token_is_auth(
    telegram: TelegramServer, make_context: ContextFactory, debug_logs: pytest.LogCaptureFixture
) -> None:
    wrong = "7301234567:AAF-not-the-real-token-xyz"
    async with make_context() as context:
        with pytest.raises(DeliveryError) as failed:
            await connector(telegram, context, token=wrong).send(message())
    assert failed.value.error_class is ErrorClass.AUTH
    assert failed.value.status == 401
    assert_secret_absent(wrong, errors=[failed.value], caplog=debug_logs)


async def test_slow_answer_times_out(
    telegram: TelegramServer, make_context: ContextFactory
) -> None:
    telegram.script(Reply.slow(3.0))
    async with make_context(seconds=0.5) as context:
        error_ = await failure(telegram, context)
    assert error_.error_class is ErrorClass.TIMEOUT
    assert error_.retriable


async def test_dropped_connection(telegram: TelegramServer, make_context: ContextFactory) -> None:
    telegram.script(Reply.dropped())
    async with make_context() as context:
        error_ = await failure(telegram, context)
    assert error_.error_class is ErrorClass.CONNECTION
    assert error_.retriable


async def test_token_in_no_error_summary_or_log_line(
    telegram: TelegramServer, make_context: ContextFactory, debug_logs: pytest.LogCaptureFixture
) -> None:
    telegram.script(TelegramServer.flood(3), Reply.dropped(), error(500, "Internal Server Error"))
    errors: list[DeliveryError] = []
    async with make_context() as context:
        tg = connector(telegram, context)
        for _ in range(3):
            with pytest.raises(DeliveryError) as failed:
                await tg.send(message())
            errors.append(failed.value)
        result = await tg.send(message())
        tested = await tg.test()
    assert len(telegram.received) == 5
    assert_secret_absent(
        BOT_TOKEN, errors=[*errors, result.response, tested.detail], caplog=debug_logs
    )
    # Each answered request (one of the five was dropped) was logged, host only: the absence
    # above means something.
    logged = [r for r in debug_logs.records if r.name == "tidings.delivery.connectors.http"]
    assert len(logged) == 4


async def test_loopback_api_base_refused_without_the_allow_setting(
    telegram: TelegramServer, make_context: ContextFactory
) -> None:
    async with make_context(GUARDED) as context:
        error_ = await failure(telegram, context)
        tested = await connector(telegram, context).test()
    assert error_.error_class is ErrorClass.BLOCKED
    assert not tested.ok
    assert telegram.received == []


@pytest.mark.parametrize(
    ("recipient", "text", "expected"),
    [
        ("not a chat", "hi", ErrorClass.INVALID_RECIPIENT),
        ("@x", "hi", ErrorClass.INVALID_RECIPIENT),
        (KNOWN_CHAT, "", ErrorClass.INVALID_REQUEST),
        (KNOWN_CHAT, "x" * 4097, ErrorClass.INVALID_REQUEST),
    ],
)
async def test_refused_before_any_request(
    telegram: TelegramServer,
    make_context: ContextFactory,
    recipient: str | int,
    text: str,
    expected: ErrorClass,
) -> None:
    async with make_context() as context:
        error_ = await failure(telegram, context, message(recipient, text))
    assert error_.error_class is expected
    assert telegram.received == []


@pytest.mark.parametrize(
    "values",
    [
        {"bot_token": "not-a-token"},
        {"bot_token": "123456:has spaces in it"},
    ],
)
def test_credentials_refused(values: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        TelegramCredentials.model_validate(values)


def test_settings_refused() -> None:
    with pytest.raises(ValidationError):
        TelegramSettings.model_validate({"api_base": "ftp://api.telegram.org"})
    with pytest.raises(ValidationError):
        TelegramSettings.model_validate({"parse_mode": "BBCode"})
