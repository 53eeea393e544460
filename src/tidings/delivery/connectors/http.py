"""What every HTTP connector shares: one guarded request, provider statuses mapped to error classes.

`request` goes through the context's guarded client (SSRF guard, no redirects), bounds the whole
exchange by the outbound timeout, reads at most `max_response_bytes` of the (decoded) body and
turns transport failures into `DeliveryError`s. `raise_for_provider_status` classes an HTTP
status the way the delivery service needs it (429 → rate_limited with Retry-After, 401/403 →
auth, 5xx → server_error …). Neither puts a URL into an error: webhook URLs carry their secret in
the path. Texts that may echo a secret are scrubbed with `redact`.
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import httpx
from pydantic import AfterValidator, BaseModel, SecretStr

from tidings.delivery.connectors.base import (
    ConnectorContext,
    DeliveryError,
    ErrorClass,
    TestResult,
)
from tidings.infra.logging import get_logger
from tidings.infra.outbound import (
    OutboundBlocked,
    OutboundClient,
    OutboundConnectionError,
    OutboundPolicy,
    OutboundTooLarge,
)

if TYPE_CHECKING:
    from tidings.settings import Settings

_log = get_logger(__name__)
# The level is asked of the standard library's logger: structlog's logger only has
# `isEnabledFor` once `configure_logging` has run (a script or test using a connector may not).
_level_of = logging.getLogger(__name__)
DEFAULT_MAX_RESPONSE_BYTES = 1_048_576
SUMMARY_CHARS = 500
REDACTED = "***"
_T = TypeVar("_T")


@dataclass(frozen=True)
class HttpConnectorContext(ConnectorContext):
    """A connector context that also carries the response size limit."""

    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES


def make_context(settings: Settings) -> HttpConnectorContext:
    """A context from Tidings settings; the caller closes it (`await context.aclose()`) when done."""
    policy = OutboundPolicy.from_strings(settings.outbound_allow_networks)
    timeout = settings.outbound_timeout_seconds
    return HttpConnectorContext(
        http=OutboundClient(policy, timeout_seconds=timeout),
        policy=policy,
        timeout_seconds=timeout,
        max_response_bytes=settings.outbound_max_response_bytes,
    )


def max_response_bytes(context: ConnectorContext) -> int:
    limit = getattr(context, "max_response_bytes", None)
    return limit if isinstance(limit, int) and limit > 0 else DEFAULT_MAX_RESPONSE_BYTES


def secret_values(credentials: BaseModel) -> list[str]:
    """Every secret of a credentials model, to scrub from texts that leave the connector; for a
    secret URL (a Slack or Discord webhook) its path too, which alone is the secret."""
    values: list[str] = []
    for name in type(credentials).model_fields:
        value = getattr(credentials, name)
        if isinstance(value, SecretStr):
            plain = value.get_secret_value()
            values.append(plain)
            if "://" in plain:
                path = httpx.URL(plain).path
                if len(path) > 1:
                    values.append(path)
    # Longest first, so a secret containing another is replaced whole.
    return sorted((v for v in values if v), key=len, reverse=True)


def validate_http_url(value: str) -> str:
    """`value` if it is an absolute http(s) URL with a host and no user:password part."""
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an absolute http:// or https:// URL")
    if url.userinfo:
        raise ValueError("must not contain a user name or password")
    return value


def _api_base(value: str) -> str:
    return validate_http_url(value).rstrip("/")


#: A settings field holding an http(s) URL (`validate_http_url`).
HttpUrl = Annotated[str, AfterValidator(validate_http_url)]
#: A provider's API base: an http(s) URL, kept without a trailing slash.
ApiBase = Annotated[str, AfterValidator(_api_base)]


def secret_check(valid: Callable[[str], bool], message: str) -> AfterValidator:
    """A validator for a SecretStr field (`Annotated[SecretStr, secret_check(...)]`): the
    value is refused with `message` unless `valid(value)`; `valid` may also raise ValueError
    with a message of its own."""

    def check(value: SecretStr) -> SecretStr:
        if not valid(value.get_secret_value()):
            raise ValueError(message)
        return value

    return AfterValidator(check)


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every non-empty secret replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def summarize(text: str, secrets: Iterable[str] = (), limit: int = SUMMARY_CHARS) -> str:
    """A short, secret-free excerpt of a provider's answer for error details and results."""
    cleaned = redact(text, secrets).strip()
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "…"


async def request(
    context: ConnectorContext,
    method: str,
    url: str,
    *,
    provider: str = "provider",
    redact_values: Iterable[str] = (),
    **kwargs: Any,
) -> httpx.Response:
    """One HTTP exchange with a provider, its body fully read (and bounded).

    Raises DeliveryError: timeout (the whole exchange, not each read, is bounded by the
    client's timeout), connection (refused, reset, DNS, a dropped connection mid-answer),
    blocked (the SSRF guard refused the address) or invalid_request (an answer larger than the
    limit: no real provider answers like that, and retrying would send the message again).
    The status is not checked here: see `raise_for_provider_status`.
    """
    limit = max_response_bytes(context)
    secrets = list(redact_values)
    try:
        built = context.http.build_request(method, url, **kwargs)
        response = await context.http.send(built, max_bytes=limit)  # bounded by the client
    except TimeoutError:
        raise DeliveryError(
            ErrorClass.TIMEOUT,
            f"{provider} did not answer within {context.http.timeout_seconds:g}s",
        ) from None
    except OutboundBlocked as exc:
        raise DeliveryError(ErrorClass.BLOCKED, redact(str(exc), secrets)) from None
    except OutboundTooLarge as exc:
        raise _too_large(provider, exc.status, exc.limit) from None
    except OutboundConnectionError as exc:
        reason = redact(str(exc), secrets)
        raise DeliveryError(ErrorClass.CONNECTION, f"{provider}: {reason}") from None
    except (ValueError, httpx.InvalidURL) as exc:
        # Settings are validated on save; this is an address only a template or a provider's
        # answer could have made (a bot token with a slash, say), and retrying changes nothing.
        raise DeliveryError(
            ErrorClass.CONFIGURATION,
            f"{provider}: the address cannot be used ({redact(str(exc), secrets)})",
        ) from None
    if _level_of.isEnabledFor(logging.DEBUG):
        # The host only: a path or query may be the secret (webhook URLs, bot tokens).
        _log.debug(
            "outbound_request",
            provider=provider,
            method=method,
            host=built.url.host,
            status=response.status_code,
        )
    return response


async def checked_request(
    context: ConnectorContext,
    method: str,
    url: str,
    *,
    provider: str,
    redact_values: list[str],
    error: Callable[[httpx.Response, list[str]], DeliveryError],
    **kwargs: Any,
) -> httpx.Response:
    """`request`, raising `error(response, redact_values)` for an answer of HTTP 300 or more:
    for connectors that read their provider's error bodies themselves."""
    response = await request(
        context, method, url, provider=provider, redact_values=redact_values, **kwargs
    )
    if response.status_code >= 300:
        raise error(response, redact_values)
    return response


async def probe(
    call: Awaitable[_T],
    verdict: Callable[[_T], TestResult],
    *,
    classed: bool = True,
) -> TestResult:
    """A connector's `test()`: await the provider `call` (a guarded request that raises
    DeliveryError) and judge its answer with `verdict`; a DeliveryError becomes a failed
    result (`failed_test`)."""
    try:
        answer = await call
    except DeliveryError as exc:
        return failed_test(exc, classed=classed)
    return verdict(answer)


def failed_test(error: DeliveryError, *, classed: bool = True) -> TestResult:
    """The failed TestResult of a DeliveryError: its detail, after its error class when
    `classed`, and its HTTP status."""
    detail = f"{error.error_class}: {error.detail}" if classed else error.detail
    return TestResult(ok=False, detail=detail, status=error.status)


def _too_large(provider: str, status: int, limit: int) -> DeliveryError:
    return DeliveryError(
        ErrorClass.INVALID_REQUEST,
        f"{provider} answered with more than {limit} bytes; refused",
        status=status,
    )


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value: delta-seconds or an HTTP-date; None if absent
    or unreadable. Never negative; a date in the past gives 0."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if math.isnan(seconds) or math.isinf(seconds):
            return None
        return max(seconds, 0.0)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT
        return None
    current = time.time() if now is None else now
    return max(when.timestamp() - current, 0.0)


def error_for_status(
    status: int,
    *,
    provider: str,
    detail: str | None = None,
    response: str | None = None,
    retry_after: float | None = None,
) -> DeliveryError | None:
    """The DeliveryError a provider's HTTP status means, or None for 1xx-3xx."""
    if status == 429:
        error_class = ErrorClass.RATE_LIMITED
        text = "rate limited"
    elif status in (401, 403):
        error_class, text = ErrorClass.AUTH, "refused the credentials"
    elif status == 408:
        error_class, text = ErrorClass.TIMEOUT, "timed out reading the request"
    elif status >= 500:
        error_class, text = ErrorClass.SERVER_ERROR, "server error"
    elif status >= 400:
        error_class, text = ErrorClass.INVALID_REQUEST, "refused the request"
    else:
        return None
    message = f"{provider} {text} (HTTP {status})"
    if detail:
        message = f"{message}: {detail}"
    return DeliveryError(
        error_class, message, status=status, retry_after=retry_after, response=response
    )


def raise_for_provider_status(
    response: httpx.Response,
    *,
    provider: str,
    redact_values: Iterable[str] = (),
    detail: str | None = None,
) -> None:
    """Raise the DeliveryError a non-2xx answer means (3xx too: redirects are not followed).

    429 → rate_limited with `retry_after` from Retry-After; 401/403 → auth; 408 → timeout;
    5xx → server_error; other 4xx → invalid_request. The error keeps the status and a short,
    redacted excerpt of the body. Connectors that know their provider's error bodies check
    those first and call this for the rest.
    """
    status = response.status_code
    if 200 <= status < 300:
        return
    summary = summarize(response.text, redact_values)
    retry_after = None
    if status in (429, 503):
        retry_after = parse_retry_after(response.headers.get("retry-after"))
    error = error_for_status(
        status,
        provider=provider,
        detail=detail,
        response=summary or None,
        retry_after=retry_after,
    )
    if error is None:  # 3xx: the address moved, and redirects are not followed (SSRF)
        error = DeliveryError(
            ErrorClass.CONFIGURATION,
            f"{provider} answered HTTP {status}; redirects are not followed, "
            "configure the final address",
            status=status,
            response=summary or None,
        )
    raise error


def provider_error(
    response: httpx.Response,
    *,
    provider: str,
    redact_values: Iterable[str] = (),
    detail: str | None = None,
) -> DeliveryError:
    """The DeliveryError `raise_for_provider_status` raises for this answer; for a 2xx (which
    callers that checked the status first never pass) a server_error."""
    try:
        raise_for_provider_status(
            response, provider=provider, redact_values=redact_values, detail=detail
        )
    except DeliveryError as exc:
        return exc
    return DeliveryError(
        ErrorClass.SERVER_ERROR, f"{provider} answered HTTP {response.status_code}"
    )


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object, or {} when it is not one (providers answer HTML on errors)."""
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
