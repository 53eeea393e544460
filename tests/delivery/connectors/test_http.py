"""The shared HTTP helpers every HTTP connector relies on: Retry-After in both forms, the
status table, the bounded body (declared or streamed), redaction, and the context built from
settings."""

from __future__ import annotations

import email.utils
import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from pydantic import SecretStr

from tests.delivery.providers.base import ProviderServer, Received, Reply
from tests.delivery.providers.context import connector_context
from tidings.delivery.connectors.base import ConnectorCredentials, DeliveryError, ErrorClass
from tidings.delivery.connectors.http import (
    error_for_status,
    make_context,
    parse_retry_after,
    request,
    secret_values,
    summarize,
)
from tidings.settings import Settings

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 3 ", 3.0),
        ("0.5", 0.5),
        ("0", 0.0),
        ("-5", 0.0),
        (email.utils.formatdate(NOW + 90, usegmt=True), 90.0),
        (email.utils.formatdate(NOW - 90, usegmt=True), 0.0),  # already past
        ("", None),
        (None, None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("Wed, 21 Oct 2015 07:28:00", None),  # a date without its zone is not an HTTP-date
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, None),
        (204, None),
        (301, None),
        (400, ErrorClass.INVALID_REQUEST),
        (401, ErrorClass.AUTH),
        (403, ErrorClass.AUTH),
        (404, ErrorClass.INVALID_REQUEST),
        (408, ErrorClass.TIMEOUT),
        (413, ErrorClass.INVALID_REQUEST),
        (422, ErrorClass.INVALID_REQUEST),
        (429, ErrorClass.RATE_LIMITED),
        (500, ErrorClass.SERVER_ERROR),
        (502, ErrorClass.SERVER_ERROR),
        (503, ErrorClass.SERVER_ERROR),
        (504, ErrorClass.SERVER_ERROR),
    ],
)
def test_status_table(status: int, expected: ErrorClass | None) -> None:
    error = error_for_status(status, provider="Acme")
    assert (error.error_class if error else None) == expected
    if error is not None:
        assert error.status == status
        assert "Acme" in error.detail


class _Creds(ConnectorCredentials):
    token: SecretStr
    url: SecretStr
    optional: SecretStr | None = None
    plain: str = "visible"


def test_secret_values_and_summary() -> None:
    creds = _Creds(token=SecretStr("tok-123"), url=SecretStr("https://hooks.example/T/B/xyz"))
    values = secret_values(creds)
    assert "tok-123" in values
    assert "https://hooks.example/T/B/xyz" in values
    assert "/T/B/xyz" in values  # the path alone is the secret of a webhook URL
    assert "visible" not in values
    text = "echo tok-123 and /T/B/xyz " + "x" * 1000
    summary = summarize(text, values)
    assert "tok-123" not in summary
    assert "/T/B/xyz" not in summary
    assert len(summary) <= 501


@dataclass
class Echo(ProviderServer):
    def handle(self, request: Received) -> Reply:
        return Reply.json({"ok": True})


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    async with Echo() as server:
        yield server


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "streamed"])
async def test_body_over_the_limit_is_refused(echo: Echo, chunked: bool) -> None:
    echo.script(Reply(200, b"x" * 4096, chunked=chunked))
    async with connector_context(max_response_bytes=2048) as context:
        with pytest.raises(DeliveryError) as caught:
            await request(context, "GET", echo.base_url, provider="Acme")
    assert caught.value.error_class is ErrorClass.INVALID_REQUEST
    assert "more than 2048 bytes" in caught.value.detail


async def test_body_at_the_limit_is_read(echo: Echo) -> None:
    echo.script(Reply(200, b"y" * 2048, chunked=True))
    async with connector_context(max_response_bytes=2048) as context:
        response = await request(context, "GET", echo.base_url)
    assert response.content == b"y" * 2048


async def test_compressed_body_is_decoded_and_counted_decoded(echo: Echo) -> None:
    # 4 KiB of zeros compress to a few bytes: the limit applies to what it inflates to.
    packed = gzip.compress(b"0" * 4096)
    echo.script(Reply(200, packed, headers=(("Content-Encoding", "gzip"),)))
    echo.script(Reply(200, packed, headers=(("Content-Encoding", "gzip"),)))
    async with connector_context(max_response_bytes=8192) as context:
        response = await request(context, "GET", echo.base_url)
    assert response.content == b"0" * 4096
    assert "content-encoding" not in response.headers
    async with connector_context(max_response_bytes=2048) as context:
        with pytest.raises(DeliveryError):
            await request(context, "GET", echo.base_url)


async def test_make_context_from_settings() -> None:
    settings = Settings(
        _env_file=None,
        outbound_allow_networks=["127.0.0.0/8"],
        outbound_timeout_seconds=3.5,
        outbound_max_response_bytes=4096,
    )
    context = make_context(settings)
    try:
        assert context.timeout_seconds == 3.5
        assert context.max_response_bytes == 4096
        assert context.http.timeout_seconds == 3.5
        assert context.policy.allow_networks[0].with_prefixlen == "127.0.0.0/8"
    finally:
        await context.aclose()
