"""MessengerConnector against a local Graph API server: the Send API request (token in the
header, appsecret_proof), Graph's error codes classed (rate-limit wait from the usage header),
timeouts and drops, the SSRF guard, secrets kept out of errors and logs, and delivery receipts
verified by Meta's X-Hub-Signature-256."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError

from tests.delivery.connectors_b.conftest import GUARDED, ContextFactory, assert_secret_absent
from tests.delivery.providers.base import Reply
from tests.delivery.providers_b.graph import (
    APP_SECRET,
    KNOWN_PSID,
    PAGE_NAME,
    PAGE_TOKEN,
    VERSION,
    GraphServer,
    delivery_webhook,
    graph_error,
    meta_signature,
    rate_limited,
)
from tidings.delivery.connectors.base import (
    CallbackRejected,
    Channel,
    ConnectorContext,
    DeliveryError,
    ErrorClass,
    OutboundEnvelope,
    StatusUpdate,
)
from tidings.delivery.connectors.messenger import (
    MessengerConnector,
    MessengerCredentials,
    MessengerSettings,
    appsecret_proof,
)
from tidings.delivery.connectors.registry import get_connector_type


@pytest.fixture
async def graph() -> AsyncIterator[GraphServer]:
    async with GraphServer() as server:
        yield server


def credentials(
    token: str = PAGE_TOKEN, app_secret: str | None = APP_SECRET
) -> MessengerCredentials:
    values: dict[str, Any] = {"page_access_token": token}
    if app_secret is not None:
        values["app_secret"] = app_secret
    return MessengerCredentials.model_validate(values)


def settings(server: GraphServer | None = None, **values: Any) -> MessengerSettings:
    base = {"api_base": server.base_url} if server else {}
    return MessengerSettings.model_validate({**base, "api_version": VERSION, **values})


def connector(
    server: GraphServer, context: ConnectorContext, *, token: str = PAGE_TOKEN, **values: Any
) -> MessengerConnector:
    return MessengerConnector(settings(server, **values), credentials(token), context)


def message(recipient: str = KNOWN_PSID, text: str = "Your order has shipped") -> OutboundEnvelope:
    return OutboundEnvelope("dlv_fb_1", recipient, {"text": text})


async def failure(
    server: GraphServer, context: ConnectorContext, envelope: OutboundEnvelope | None = None
) -> DeliveryError:
    with pytest.raises(DeliveryError) as failed:
        await connector(server, context).send(envelope or message())
    return failed.value


def test_registered_as_builtin() -> None:
    assert get_connector_type("messenger") is MessengerConnector
    assert MessengerConnector.channel is Channel.CHAT


async def test_send_api_request_and_result(
    graph: GraphServer, make_context: ContextFactory
) -> None:
    async with make_context() as context:
        result = await connector(graph, context).send(message())
    request = graph.last()
    assert request.method == "POST"
    assert request.path == f"/{VERSION}/me/messages"
    assert request.bearer() == PAGE_TOKEN
    assert "access_token" not in request.query  # the token never rides in the URL
    assert request.query["appsecret_proof"] == [appsecret_proof(APP_SECRET, PAGE_TOKEN)]
    assert request.json() == {
        "recipient": {"id": KNOWN_PSID},
        "messaging_type": "RESPONSE",
        "message": {"text": "Your order has shipped"},
    }
    assert result.provider_message_id is not None
    assert result.provider_message_id.startswith("m_")
    assert result.status == 200


async def test_message_tag_outside_the_window(
    graph: GraphServer, make_context: ContextFactory
) -> None:
    async with make_context() as context:
        await connector(
            graph, context, messaging_type="MESSAGE_TAG", message_tag="POST_PURCHASE_UPDATE"
        ).send(message())
    body = graph.last().json()
    assert body["messaging_type"] == "MESSAGE_TAG"
    assert body["tag"] == "POST_PURCHASE_UPDATE"


async def test_test_reads_the_page(graph: GraphServer, make_context: ContextFactory) -> None:
    async with make_context() as context:
        tested = await connector(graph, context).test()
        refused = await connector(graph, context, token="EAAGnot-the-token-at-all").test()
    assert tested.ok
    assert PAGE_NAME in tested.detail
    assert graph.received[0].method == "GET"
    assert graph.received[0].path == f"/{VERSION}/me"
    assert not refused.ok
    assert "code 190" in refused.detail


@pytest.mark.parametrize(
    ("recipient", "scripted", "expected", "retry_after"),
    [
        ("1999999999", None, ErrorClass.INVALID_RECIPIENT, None),  # 100/2018001: no such user
        (
            KNOWN_PSID,
            graph_error(400, 551, "This person isn't available right now.", subcode=1545041),
            ErrorClass.INVALID_RECIPIENT,
            None,
        ),
        (KNOWN_PSID, rate_limited(5), ErrorClass.RATE_LIMITED, 300.0),
        (
            KNOWN_PSID,
            graph_error(
                403,
                4,
                "(#4) Application request limit reached",
                headers={"X-App-Usage": '{"call_count": 100, "total_time": 25}'},
            ),
            ErrorClass.RATE_LIMITED,
            None,
        ),
        (
            KNOWN_PSID,
            graph_error(400, 32, "Page request limit reached", headers={"Retry-After": "30"}),
            ErrorClass.RATE_LIMITED,
            30.0,
        ),
        (
            KNOWN_PSID,
            graph_error(
                400, 10, "(#10) This message is sent outside of allowed window.", subcode=2018278
            ),
            ErrorClass.INVALID_REQUEST,
            None,
        ),
        (
            KNOWN_PSID,
            graph_error(403, 200, "(#200) The user hasn't authorized the application"),
            ErrorClass.AUTH,
            None,
        ),
        (
            KNOWN_PSID,
            graph_error(500, 2, "An unexpected error has occurred.", is_transient=True),
            ErrorClass.SERVER_ERROR,
            None,
        ),
        (
            KNOWN_PSID,
            graph_error(500, 1200, "Temporary send message failure. Please try again later"),
            ErrorClass.SERVER_ERROR,
            None,
        ),
        (
            KNOWN_PSID,
            graph_error(400, 100, "(#100) Invalid parameter"),
            ErrorClass.INVALID_REQUEST,
            None,
        ),
        (KNOWN_PSID, Reply.text("<html>Bad Gateway</html>", 502), ErrorClass.SERVER_ERROR, None),
        (
            KNOWN_PSID,
            Reply.text("slow down", 429, headers={"Retry-After": "9"}),
            ErrorClass.RATE_LIMITED,
            9.0,
        ),
    ],
)
async def test_graph_errors_classed(
    graph: GraphServer,
    make_context: ContextFactory,
    recipient: str,
    scripted: Reply | None,
    expected: ErrorClass,
    retry_after: float | None,
) -> None:
    if scripted is not None:
        graph.script(scripted)
    async with make_context() as context:
        error = await failure(graph, context, message(recipient))
    assert error.error_class is expected
    assert error.retry_after == retry_after
    assert error.response


async def test_invalid_token_is_auth_and_secrets_stay_out(
    graph: GraphServer, make_context: ContextFactory, debug_logs: pytest.LogCaptureFixture
) -> None:
    wrong = "EAAGwrong-token-" + "x" * 20
    async with make_context() as context:
        with pytest.raises(DeliveryError) as failed:
            await connector(graph, context, token=wrong).send(message())
        ok = await connector(graph, context).send(message())
    assert failed.value.error_class is ErrorClass.AUTH
    assert "fbtrace_id" in failed.value.detail
    for secret in (wrong, PAGE_TOKEN, APP_SECRET):
        assert_secret_absent(secret, errors=[failed.value, ok.response], caplog=debug_logs)
    # The requests were logged (host only), so the absence above means something.
    assert any(r.name == "tidings.delivery.connectors.http" for r in debug_logs.records)


async def test_slow_answer_times_out(graph: GraphServer, make_context: ContextFactory) -> None:
    graph.script(Reply.slow(3.0))
    async with make_context(seconds=0.5) as context:
        error = await failure(graph, context)
    assert error.error_class is ErrorClass.TIMEOUT


async def test_dropped_connection(graph: GraphServer, make_context: ContextFactory) -> None:
    graph.script(Reply.dropped())
    async with make_context() as context:
        error = await failure(graph, context)
    assert error.error_class is ErrorClass.CONNECTION


async def test_loopback_api_base_refused_without_the_allow_setting(
    graph: GraphServer, make_context: ContextFactory
) -> None:
    async with make_context(GUARDED) as context:
        error = await failure(graph, context)
    assert error.error_class is ErrorClass.BLOCKED
    assert graph.received == []


@pytest.mark.parametrize(
    ("recipient", "text", "expected"),
    [
        ("ada@example.com", "hi", ErrorClass.INVALID_RECIPIENT),
        (KNOWN_PSID, " ", ErrorClass.INVALID_REQUEST),
        (KNOWN_PSID, "x" * 2001, ErrorClass.INVALID_REQUEST),
    ],
)
async def test_refused_before_any_request(
    graph: GraphServer,
    make_context: ContextFactory,
    recipient: str,
    text: str,
    expected: ErrorClass,
) -> None:
    async with make_context() as context:
        error = await failure(graph, context, message(recipient, text))
    assert error.error_class is expected
    assert graph.received == []


# -- delivery receipts ---------------------------------------------------------------------


def verify(
    body: bytes, headers: dict[str, str], *, app_secret: str | None = APP_SECRET
) -> list[StatusUpdate]:
    return MessengerConnector.verify_status_callback(
        settings(),
        credentials(app_secret=app_secret),
        url="https://tidings.example.com/callbacks/messenger",
        headers=headers,
        body=body,
    )


def test_delivery_receipt_marks_each_mid_delivered() -> None:
    body = delivery_webhook(["m_first", "m_second"])
    updates = verify(body, {"x-hub-signature-256": meta_signature(body)})
    assert [(u.provider_message_id, u.status) for u in updates] == [
        ("m_first", "delivered"),
        ("m_second", "delivered"),
    ]  # the read receipt in the same batch names no message and adds nothing


def test_delivery_without_mids_names_no_message() -> None:
    body = delivery_webhook([])
    assert verify(body, {"X-Hub-Signature-256": meta_signature(body)}) == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Hub-Signature-256": "sha256=" + "0" * 64},
        {"X-Hub-Signature-256": meta_signature(b"another body")},
        {"X-Hub-Signature-256": meta_signature(delivery_webhook(["m_first"]), "other-app-secret")},
        {"X-Hub-Signature": "sha1=" + "0" * 40},  # the legacy SHA-1 header is not accepted
    ],
)
def test_receipt_with_a_bad_signature_rejected(headers: dict[str, str]) -> None:
    with pytest.raises(CallbackRejected):
        verify(delivery_webhook(["m_first"]), headers)


def test_receipts_need_the_app_secret() -> None:
    body = delivery_webhook(["m_first"])
    with pytest.raises(CallbackRejected):
        verify(body, {"X-Hub-Signature-256": meta_signature(body)}, app_secret=None)


def test_settings_refused() -> None:
    with pytest.raises(ValidationError):
        MessengerSettings.model_validate({"messaging_type": "MESSAGE_TAG"})
    with pytest.raises(ValidationError):
        MessengerSettings.model_validate({"message_tag": "HUMAN_AGENT"})
    with pytest.raises(ValidationError):
        MessengerSettings.model_validate({"api_version": "latest"})
    with pytest.raises(ValidationError):
        MessengerSettings.model_validate({"api_base": "graph.facebook.com"})
