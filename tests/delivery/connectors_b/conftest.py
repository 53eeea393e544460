"""What the SMTP, Telegram, Messenger and Apprise connector tests share: a throwaway CA, the
outbound policy (loopback allowed, as an operator would for a relay on the same host, or not),
connector contexts, and a check that a secret appears in no error, summary or log line."""

from __future__ import annotations

import logging
import warnings
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import trustme

from tidings.delivery.connectors.base import DeliveryError
from tidings.delivery.connectors.http import HttpConnectorContext
from tidings.infra.outbound import OutboundClient, OutboundPolicy

LOOPBACK = OutboundPolicy.from_strings(["127.0.0.0/8", "::1/128"])
GUARDED = OutboundPolicy()  # the default: nothing private allowed

ContextFactory = Callable[..., AbstractAsyncContextManager[HttpConnectorContext]]


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@asynccontextmanager
async def connector_context(
    policy: OutboundPolicy = LOOPBACK, seconds: float = 5.0, max_response_bytes: int = 65_536
) -> AsyncIterator[HttpConnectorContext]:
    client = OutboundClient(policy, timeout_seconds=seconds)
    context = HttpConnectorContext(
        http=client,
        policy=policy,
        timeout_seconds=seconds,
        max_response_bytes=max_response_bytes,
    )
    try:
        yield context
    finally:
        await context.aclose()


@pytest.fixture
def make_context() -> ContextFactory:
    return connector_context


def assert_secret_absent(
    secret: str,
    *,
    errors: Iterable[DeliveryError | BaseException | str | None] = (),
    caplog: pytest.LogCaptureFixture | None = None,
) -> None:
    """`secret` is in none of the errors (text, detail, response) nor any captured log line."""
    assert secret
    for error in errors:
        if error is None:
            continue
        texts = [str(error), repr(error)]
        if isinstance(error, DeliveryError):
            texts += [error.detail, error.response or ""]
        for text in texts:
            assert secret not in text, text
    if caplog is not None:
        for record in caplog.records:
            if record.name.startswith("mail.log"):  # the test relay's own log, not ours
                continue
            line = record.getMessage()
            assert secret not in line, f"{record.name}: {line}"


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every log record, down to DEBUG, from every library."""
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.fixture(scope="session")
def apprise_plugins() -> None:
    """Load Apprise's plugins once, before any test's timeout runs (several seconds, once per
    process). Its e-mail plugin imports `imghdr`, deprecated since Python 3.11; outside tests
    that DeprecationWarning is ignored by default, here every warning is an error."""
    import apprise

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'imghdr' is deprecated", DeprecationWarning)
        apprise.Apprise.instantiate("json://localhost/")
