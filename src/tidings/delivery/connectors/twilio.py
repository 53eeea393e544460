"""SMS through Twilio's Messages API.

Send: `POST {api_base}/2010-04-01/Accounts/{sid}/Messages.json`, form-encoded From/To/Body
(or MessagingServiceSid), basic auth `sid:token`, `StatusCallback` when configured. Twilio's
error bodies carry a numeric `code`; the ones that name the recipient (21211 invalid 'To' …)
are `invalid_recipient`, the ones that name the sender or the account's setup are
`configuration`. Status callbacks are verified by `X-Twilio-Signature` = base64(HMAC-SHA1(auth
token, url + each form key and value, sorted by key)); delivered → delivered, undelivered or
failed → bounced when the number cannot receive (30003/30005/30006), else failed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx
from pydantic import Field, SecretStr, model_validator

from tidings.delivery.connectors.base import (
    CallbackRejected,
    Channel,
    ConnectorCredentials,
    ConnectorSettings,
    ConnectorType,
    DeliveryError,
    ErrorClass,
    OutboundEnvelope,
    SendResult,
    StatusUpdate,
    TestResult,
)
from tidings.delivery.connectors.http import (
    ApiBase,
    HttpUrl,
    checked_request,
    json_object,
    probe,
    provider_error,
    secret_values,
    summarize,
)

PROVIDER = "Twilio"
SIGNATURE_HEADER = "x-twilio-signature"

# https://www.twilio.com/docs/api/errors
RECIPIENT_ERRORS = frozenset(
    {
        21211,  # invalid 'To' phone number
        21217,  # phone number does not appear to be valid
        21401,  # invalid phone number
        21407,  # this phone number type does not support SMS
        21421,  # PhoneNumber is invalid
        21604,  # 'To' phone number is required
        21610,  # the recipient replied STOP
        21612,  # cannot route to this number
        21614,  # 'To' is not a valid mobile number
        21635,  # 'To' cannot be a landline
    }
)
CONFIGURATION_ERRORS = frozenset(
    {
        20404,  # the account (or resource) was not found
        21212,  # invalid 'From' phone number
        21408,  # permission to send to this region is not enabled
        21606,  # the 'From' number is not a valid SMS-capable number of this account
        21603,  # 'From' phone number is required
        21659,  # 'From' is not a Twilio number
        21703,  # the messaging service has no phone numbers
        21705,  # invalid messaging service
    }
)
AUTH_ERRORS = frozenset({20003, 20005})  # authenticate; account suspended
# A 429 (20429) is classed by its status, with its Retry-After; 14107 comes as a 400.
RATE_ERRORS = frozenset({14107})
UNREACHABLE_CODES = frozenset({"30003", "30005", "30006"})


class TwilioSettings(ConnectorSettings):
    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    from_number: str | None = Field(default=None, description="E.164 sender, e.g. +15005550006")
    messaging_service_sid: str | None = Field(default=None, pattern=r"^MG[0-9a-fA-F]{32}$")
    # Where Twilio posts delivery reports: the Tidings callback URL of this connector.
    status_callback_url: HttpUrl | None = None
    api_base: ApiBase = "https://api.twilio.com"

    @model_validator(mode="after")
    def _one_sender(self) -> TwilioSettings:
        if (self.from_number is None) == (self.messaging_service_sid is None):
            raise ValueError("set exactly one of from_number and messaging_service_sid")
        return self


class TwilioCredentials(ConnectorCredentials):
    auth_token: SecretStr = Field(min_length=1)


class TwilioSmsConnector(ConnectorType):
    type_name: ClassVar[str] = "twilio"
    channel: ClassVar[Channel] = Channel.SMS
    title: ClassVar[str] = "Twilio SMS"
    Settings = TwilioSettings
    Credentials = TwilioCredentials

    settings: TwilioSettings
    credentials: TwilioCredentials

    async def _request(self, method: str, suffix: str, **kwargs: Any) -> httpx.Response:
        """A request to the account's resource, `suffix` after its URL (".json" for itself)."""
        sid = self.settings.account_sid
        return await checked_request(
            self.context,
            method,
            f"{self.settings.api_base}/2010-04-01/Accounts/{sid}{suffix}",
            provider=PROVIDER,
            redact_values=secret_values(self.credentials),
            error=_error,
            auth=(sid, self.credentials.auth_token.get_secret_value()),
            **kwargs,
        )

    async def send(self, message: OutboundEnvelope) -> SendResult:
        text = message.content.get("text")
        if not text:
            raise DeliveryError(ErrorClass.INVALID_REQUEST, "an SMS needs a text part")
        form = {"To": message.recipient, "Body": str(text)}
        if self.settings.messaging_service_sid:
            form["MessagingServiceSid"] = self.settings.messaging_service_sid
        elif self.settings.from_number:
            form["From"] = self.settings.from_number
        if self.settings.status_callback_url:
            form["StatusCallback"] = self.settings.status_callback_url
        response = await self._request("POST", "/Messages.json", data=form)
        sid = json_object(response).get("sid")
        return SendResult(
            provider_message_id=str(sid) if sid else None,
            status=response.status_code,
            response=summarize(response.text, secret_values(self.credentials)) or None,
        )

    async def test(self) -> TestResult:
        return await probe(self._request("GET", ".json"), _account_state)

    @classmethod
    def verify_status_callback(
        cls,
        settings: ConnectorSettings,
        credentials: ConnectorCredentials,
        *,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> list[StatusUpdate]:
        if not isinstance(settings, TwilioSettings) or not isinstance(
            credentials, TwilioCredentials
        ):
            raise CallbackRejected("not a Twilio connector's configuration")
        given = {k.lower(): v for k, v in headers.items()}.get(SIGNATURE_HEADER)
        if not given:
            raise CallbackRejected("the X-Twilio-Signature header is missing")
        try:
            params = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body))
        except (UnicodeDecodeError, ValueError):
            raise CallbackRejected("the callback body is not a form") from None
        token = credentials.auth_token.get_secret_value()
        if not any(
            hmac.compare_digest(signature(token, candidate, params), given)
            for candidate in _url_variants(url)
        ):
            raise CallbackRejected("the Twilio signature does not match")
        form = dict(params)
        if form.get("AccountSid") != settings.account_sid:
            raise CallbackRejected("the callback is for another Twilio account")
        sid = form.get("MessageSid") or form.get("SmsSid")
        status = form.get("MessageStatus") or form.get("SmsStatus")
        if not sid:
            return []
        error_code = form.get("ErrorCode") or None
        detail = f"Twilio error {error_code}" if error_code else None
        if status == "delivered":
            return [StatusUpdate(sid, "delivered", detail)]
        if status in ("undelivered", "failed"):
            kind = "bounced" if error_code in UNREACHABLE_CODES else "failed"
            return [StatusUpdate(sid, kind, detail or f"Twilio reports {status}")]
        return []  # queued, sending, sent, accepted …: not final


def _account_state(response: httpx.Response) -> TestResult:
    status = json_object(response).get("status")
    if status != "active":
        return TestResult(
            ok=False,
            detail=f"the Twilio account is {status or 'in an unknown state'}",
            status=response.status_code,
        )
    return TestResult(ok=True, detail="the Twilio account is active", status=200)


def signature(auth_token: str, url: str, params: list[tuple[str, str]]) -> str:
    """Twilio's request signature: base64 HMAC-SHA1 over the URL and the form pairs, sorted and
    (as Twilio's own validators do) with repeated identical pairs counted once."""
    payload = url + "".join(key + value for key, value in sorted(set(params)))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _url_variants(url: str) -> list[str]:
    """The URL as given, and with the default port added or removed: Twilio signs whichever
    form it called, and proxies in front of Tidings may change it."""
    parts = urlsplit(url)
    variants = [url]
    default = {"https": 443, "http": 80}.get(parts.scheme)
    if parts.hostname and default:
        if parts.port is None:
            netloc = f"{parts.netloc}:{default}"
        elif parts.port == default:
            netloc = parts.netloc.rsplit(":", 1)[0]
        else:
            return variants
        variants.append(urlunsplit(parts._replace(netloc=netloc)))
    return variants


def _error(response: httpx.Response, secrets: list[str]) -> DeliveryError:
    """Twilio's errors: `{"code": 21211, "message": "...", "more_info": "...", "status": 400}`."""
    status = response.status_code
    body = json_object(response)
    code = body.get("code")
    text = summarize(str(body.get("message") or ""), secrets)
    detail = f"{text} (Twilio error {code})" if code else text
    summary = summarize(response.text, secrets) or None
    error_class: ErrorClass | None = None
    if isinstance(code, int):
        if code in RECIPIENT_ERRORS:
            error_class = ErrorClass.INVALID_RECIPIENT
        elif code in CONFIGURATION_ERRORS and status != 401:
            error_class = ErrorClass.CONFIGURATION
        elif code in AUTH_ERRORS:
            error_class = ErrorClass.AUTH
        elif code in RATE_ERRORS and status != 429:
            error_class = ErrorClass.RATE_LIMITED
    if error_class is not None:
        return DeliveryError(error_class, f"{PROVIDER}: {detail}", status=status, response=summary)
    return provider_error(response, provider=PROVIDER, redact_values=secrets, detail=detail or None)
