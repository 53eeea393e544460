"""AppriseConnector with Apprise's generic json:// and form:// notifiers aimed at a local
receiver, so a real HTTP request is made: what arrives, failures and timeouts classed, a URL
Apprise does not know, the host pre-check (SSRF) and the URL's secrets kept out of errors and
logs (Apprise logs URLs at DEBUG, urllib3 each request line)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError

from tests.delivery.connectors_b.conftest import GUARDED, ContextFactory, assert_secret_absent
from tests.delivery.providers.base import Reply
from tests.delivery.providers_b.hooks import (
    HOOK_PASSWORD,
    HOOK_PATH_TOKEN,
    HOOK_USER,
    HookServer,
)
from tidings.delivery.connectors.apprise import (
    AppriseConnector,
    AppriseCredentials,
    AppriseSettings,
    url_secrets,
)
from tidings.delivery.connectors.base import (
    Channel,
    ConnectorContext,
    DeliveryError,
    ErrorClass,
    OutboundEnvelope,
)
from tidings.delivery.connectors.registry import get_connector_type

pytestmark = pytest.mark.usefixtures("apprise_plugins")


@pytest.fixture
async def hooks() -> AsyncIterator[HookServer]:
    async with HookServer() as server:
        yield server


def hook_url(server: HookServer, scheme: str = "json", *, password: str = HOOK_PASSWORD) -> str:
    return f"{scheme}://{HOOK_USER}:{password}@127.0.0.1:{server.port}/hooks/{HOOK_PATH_TOKEN}"


def connector(url: str, context: ConnectorContext, **settings: Any) -> AppriseConnector:
    return AppriseConnector(
        AppriseSettings.model_validate(settings),
        AppriseCredentials.model_validate({"url": url}),
        context,
    )


def message(**content: str) -> OutboundEnvelope:
    return OutboundEnvelope(
        "dlv_ap_1",
        "ignored: the URL is the destination",
        content or {"text": "Deploy finished"},
        metadata={"title": "Deploys"},
    )


def test_registered_as_builtin() -> None:
    assert get_connector_type("apprise") is AppriseConnector
    assert AppriseConnector.channel is Channel.CHAT


async def test_json_notifier_posts_title_and_body(
    hooks: HookServer, make_context: ContextFactory
) -> None:
    async with make_context() as context:
        result = await connector(hook_url(hooks), context, notify_type="success").send(message())
    request = hooks.last()
    assert request.method == "POST"
    assert request.path == f"/hooks/{HOOK_PATH_TOKEN}"
    assert request.basic_auth() == (HOOK_USER, HOOK_PASSWORD)
    body = request.json()
    assert body["title"] == "Deploys"  # from the metadata title
    assert body["message"] == "Deploy finished"
    assert body["type"] == "success"
    assert result.response


async def test_form_notifier_uses_the_subject_as_title(
    hooks: HookServer, make_context: ContextFactory
) -> None:
    async with make_context() as context:
        await connector(hook_url(hooks, "form"), context).send(
            message(subject="Release 1.2", text="Shipped")
        )
    request = hooks.last()
    assert request.form_value("title") == "Release 1.2"
    assert request.form_value("message") == "Shipped"


@pytest.mark.parametrize(
    ("scripted", "expected", "status"),
    [
        (Reply.text("overloaded", 503), ErrorClass.SERVER_ERROR, 503),
        (Reply.text("boom", 500), ErrorClass.SERVER_ERROR, 500),
        (Reply.text("slow down", 429, headers={"Retry-After": "5"}), ErrorClass.RATE_LIMITED, 429),
        (Reply.dropped(), ErrorClass.SERVER_ERROR, None),
    ],
)
async def test_failures_are_retriable(
    hooks: HookServer,
    make_context: ContextFactory,
    scripted: Reply,
    expected: ErrorClass,
    status: int | None,
) -> None:
    hooks.script(scripted)
    async with make_context() as context:
        with pytest.raises(DeliveryError) as failed:
            await connector(hook_url(hooks), context).send(message())
    assert failed.value.error_class is expected
    assert failed.value.retriable
    assert failed.value.status == status
    assert failed.value.response  # Apprise's own account of what went wrong


async def test_slow_receiver_times_out(hooks: HookServer, make_context: ContextFactory) -> None:
    hooks.script(Reply.slow(4.0, Reply(204)))
    async with make_context(seconds=0.5) as context:
        with pytest.raises(DeliveryError) as failed:
            await connector(hook_url(hooks), context).send(message())
    # Apprise's socket read timeout was lowered to the connector's: it gives up, and says so.
    assert failed.value.retriable
    assert failed.value.error_class in (ErrorClass.TIMEOUT, ErrorClass.SERVER_ERROR), (
        failed.value.detail
    )


async def test_secrets_in_no_error_or_log_line(
    hooks: HookServer, make_context: ContextFactory, debug_logs: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-pa55-" + "w" * 12
    hooks.script(Reply.text("boom", 500))
    errors: list[Any] = []
    async with make_context() as context:
        for url in (hook_url(hooks), hook_url(hooks, password=wrong)):
            with pytest.raises(DeliveryError) as failed:
                await connector(url, context).send(message())
            errors.append(failed.value)
        ok = await connector(hook_url(hooks), context).send(message())
        tested = await connector(hook_url(hooks), context).test()
    assert [e.status for e in errors] == [500, 401]
    errors += [ok.response, tested.detail]
    for secret in (HOOK_PASSWORD, wrong, HOOK_PATH_TOKEN):
        assert_secret_absent(secret, errors=errors, caplog=debug_logs)
    # The libraries did log the requests; the filter masked them.
    assert any(r.name.startswith("urllib3") for r in debug_logs.records)


async def test_unknown_scheme_is_configuration(make_context: ContextFactory) -> None:
    async with make_context() as context:
        apprise = connector("nosuchservice://token@somewhere", context)
        with pytest.raises(DeliveryError) as failed:
            await apprise.send(message())
        tested = await apprise.test()
    assert failed.value.error_class is ErrorClass.CONFIGURATION
    assert not failed.value.retriable
    assert not tested.ok
    assert "token" not in failed.value.detail


async def test_test_parses_without_sending(hooks: HookServer, make_context: ContextFactory) -> None:
    async with make_context() as context:
        tested = await connector(hook_url(hooks), context).test()
    assert tested.ok
    assert "JSON" in tested.detail
    assert hooks.received == []


async def test_loopback_target_refused_without_the_allow_setting(
    hooks: HookServer, make_context: ContextFactory
) -> None:
    async with make_context(GUARDED) as context:
        apprise = connector(hook_url(hooks), context)
        with pytest.raises(DeliveryError) as failed:
            await apprise.send(message())
        tested = await apprise.test()
    assert failed.value.error_class is ErrorClass.BLOCKED
    assert not tested.ok
    assert hooks.received == []


async def test_hosted_service_url_has_no_host_to_check(make_context: ContextFactory) -> None:
    # discord://id/token: the "host" is the webhook id; Apprise posts to discord.com.
    async with make_context(GUARDED) as context:
        tested = await connector("discord://123456789012/AbCdEfToken-xyz", context).test()
    assert tested.ok


async def test_empty_text_refused(hooks: HookServer, make_context: ContextFactory) -> None:
    async with make_context() as context:
        with pytest.raises(DeliveryError) as failed:
            await connector(hook_url(hooks), context).send(message(text=" "))
    assert failed.value.error_class is ErrorClass.INVALID_REQUEST
    assert hooks.received == []


@pytest.mark.parametrize("url", ["not a url", "https//x", "windows://", "dbus://"])
def test_credentials_refused(url: str) -> None:
    with pytest.raises(ValidationError):
        AppriseCredentials.model_validate({"url": url})


def test_url_secrets_cover_password_path_and_token_hosts() -> None:
    secrets = url_secrets(f"json://u:{HOOK_PASSWORD}@hooks.example.com/hooks/{HOOK_PATH_TOKEN}")
    assert HOOK_PASSWORD in secrets
    assert HOOK_PATH_TOKEN in secrets
    assert "hooks.example.com" not in secrets  # a server's name is not a secret
    assert "123456789012" in url_secrets("discord://123456789012/AbCdEfToken-xyz")
