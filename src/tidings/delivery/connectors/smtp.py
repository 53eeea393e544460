"""Email over SMTP (aiosmtplib), to a relay the workspace names.

The relay's host name passes the outbound guard like any user-supplied address: it is resolved
once, every address checked, and the socket opened to a checked address — while TLS (implicit or
STARTTLS) still verifies the certificate against the host name and sends it as SNI.

Replies map onto error classes by stage and code: 4xx is retriable (421, 452 and 4.7.x policy
replies are throttling, the rest a server error), a refused recipient (550/551/553…) is
`invalid_recipient`, a refused login is `auth`, any other 5xx `invalid_request`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import ssl
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate
from enum import StrEnum
from typing import ClassVar, TypeVar

import aiosmtplib
from email_validator import EmailNotValidError, validate_email
from pydantic import EmailStr, Field, SecretStr, field_validator, model_validator

from tidings.delivery.connectors.base import (
    Channel,
    ConnectorCredentials,
    ConnectorSettings,
    ConnectorType,
    DeliveryError,
    ErrorClass,
    OutboundEnvelope,
    SendResult,
    TestResult,
)
from tidings.infra.outbound import OutboundBlocked, OutboundConnectionError

_E = TypeVar("_E", bound=BaseException)

DELIVERY_ID_HEADER = "X-Tidings-Delivery-Id"
DEFAULT_PORTS = {"none": 25, "starttls": 587, "tls": 465}
_HOST_NAME = re.compile(
    r"^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$"
)
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9._-]")
_LINE_BREAKS = re.compile(r"[\r\n]+\s*")
# Recipient refused at RCPT: unknown mailbox, relay denied, bad address, mailbox full/disabled.
_RECIPIENT_REFUSED = frozenset({501, 511, 550, 551, 552, 553})
_AUTH_REFUSED = frozenset({530, 534, 535, 538})
_THROTTLED = frozenset({421, 450, 452})


class SmtpSecurity(StrEnum):
    NONE = "none"  # plain text; no opportunistic STARTTLS either
    STARTTLS = "starttls"  # plain connect, STARTTLS required before anything else
    TLS = "tls"  # implicit TLS from the first byte (port 465)


class SmtpSettings(ConnectorSettings):
    host: str = Field(min_length=1, max_length=253)
    port: int | None = Field(default=None, ge=1, le=65535)
    security: SmtpSecurity = SmtpSecurity.STARTTLS
    from_address: EmailStr
    from_name: str | None = Field(default=None, max_length=200)
    reply_to: EmailStr | None = None
    verify_tls: bool = True
    # PEM of the CA(s) a private relay's certificate chains to; replaces the system store.
    ca_pem: str | None = Field(default=None, max_length=100_000)
    timeout_seconds: float | None = Field(default=None, gt=0, le=300)
    helo_name: str | None = Field(default=None, max_length=253, pattern=r"^[A-Za-z0-9.-]+$")

    @field_validator("host")
    @classmethod
    def _plain_host(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value[1:-1] if value.startswith("[") else value)
        except ValueError:
            if not _HOST_NAME.match(value):
                raise ValueError(
                    "host must be a bare host name or IP address (no scheme, port or path)"
                ) from None
        return value

    @field_validator("from_name")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and ("\r" in value or "\n" in value):
            raise ValueError("from_name must be one line")
        return value

    @field_validator("ca_pem")
    @classmethod
    def _parsable_ca(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ssl.create_default_context(cadata=value)
            except (ssl.SSLError, ValueError) as exc:
                raise ValueError(f"ca_pem is not a PEM certificate: {exc}") from exc
        return value

    @property
    def effective_port(self) -> int:
        return self.port or DEFAULT_PORTS[self.security.value]


class SmtpCredentials(ConnectorCredentials):
    username: str | None = Field(default=None, min_length=1, max_length=512)
    password: SecretStr | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> SmtpCredentials:
        if (self.username is None) != (self.password is None):
            raise ValueError("give both username and password, or neither")
        return self


class SmtpConnector(ConnectorType):
    type_name: ClassVar[str] = "smtp"
    channel: ClassVar[Channel] = Channel.EMAIL
    title: ClassVar[str] = "Email (SMTP)"
    Settings: ClassVar[type[ConnectorSettings]] = SmtpSettings
    Credentials: ClassVar[type[ConnectorCredentials]] = SmtpCredentials
    default_max_concurrency: ClassVar[int | None] = 10

    settings: SmtpSettings
    credentials: SmtpCredentials
    _tls: ssl.SSLContext | None = None

    @property
    def _timeout(self) -> float:
        return self.settings.timeout_seconds or self.context.timeout_seconds

    async def send(self, message: OutboundEnvelope) -> SendResult:
        recipient = _checked_recipient(message.recipient)
        mime = self._build(message, recipient)
        try:
            smtp = await self._open()
            try:
                _, reply = await smtp.send_message(
                    mime, sender=self.settings.from_address, recipients=[recipient]
                )
            finally:
                await _quit(smtp)
        except DeliveryError:
            raise
        except Exception as exc:
            raise _classify(exc) from None
        return SendResult(provider_message_id=mime["Message-ID"], status=250, response=reply)

    async def test(self) -> TestResult:
        try:
            smtp = await self._open()
            try:
                reply = await smtp.noop()
            finally:
                await _quit(smtp)
        except DeliveryError as exc:
            return TestResult(ok=False, detail=exc.detail, status=exc.status)
        except Exception as exc:
            try:
                error = _classify(exc)
            except Exception:  # not an SMTP or network failure; test() still answers
                return TestResult(ok=False, detail=f"unexpected failure: {type(exc).__name__}")
            return TestResult(ok=False, detail=error.detail, status=error.status)
        security = self.settings.security.value
        who = f", logged in as {self.credentials.username}" if self.credentials.username else ""
        return TestResult(
            ok=True,
            detail=f"{self.settings.host}:{self.settings.effective_port} answered ({security}{who})",
            status=reply.code,
        )

    # -- connection --------------------------------------------------------------------------

    async def _open(self) -> aiosmtplib.SMTP:
        settings = self.settings
        port = settings.effective_port
        addresses = await self.context.policy.resolve(settings.host, port)
        sock = await _connect(addresses, port, self._timeout)
        tls_context = None if settings.security is SmtpSecurity.NONE else await self._tls_context()
        smtp = aiosmtplib.SMTP(
            # The socket goes to a checked address; the name is what TLS verifies and sends.
            hostname=settings.host.strip("[]"),
            sock=sock,
            use_tls=settings.security is SmtpSecurity.TLS,
            start_tls=settings.security is SmtpSecurity.STARTTLS,
            tls_context=tls_context,
            timeout=self._timeout,
            local_hostname=settings.helo_name,
        )
        try:
            # From here the socket belongs to the transport aiosmtplib makes of it: closing the
            # transport closes it (closing it directly would pull the descriptor from under the
            # event loop, which may already have handed the number to the next connection).
            await smtp.connect()
            if self.credentials.username is not None and self.credentials.password is not None:
                await smtp.login(
                    self.credentials.username, self.credentials.password.get_secret_value()
                )
        except BaseException:
            await _close(smtp)
            raise
        return smtp

    async def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            # Loading the system store reads files: off the event loop, once per connector.
            self._tls = await asyncio.to_thread(_tls_context, self.settings)
        return self._tls

    # -- message -----------------------------------------------------------------------------

    def _build(self, envelope: OutboundEnvelope, recipient: str) -> EmailMessage:
        settings = self.settings
        content = envelope.content
        subject = _LINE_BREAKS.sub(" ", str(content.get("subject") or "")).strip()
        text = content.get("text")
        html = content.get("html")
        if not text and not html:
            raise DeliveryError(ErrorClass.INVALID_REQUEST, "the email has neither text nor html")
        domain = settings.from_address.rpartition("@")[2]
        mime = EmailMessage(policy=SMTP_POLICY)
        try:
            mime["From"] = Address(
                display_name=settings.from_name or "", addr_spec=settings.from_address
            )
            mime["To"] = Address(addr_spec=recipient)
            if settings.reply_to:
                mime["Reply-To"] = Address(addr_spec=settings.reply_to)
            mime["Subject"] = subject
            mime["Date"] = formatdate(usegmt=True)
            # Stable across retries, so a receiver that saw an earlier attempt can drop a copy.
            safe_id = _UNSAFE_ID.sub("-", envelope.delivery_id)[:128]
            mime["Message-ID"] = f"<{safe_id}.tidings@{domain}>"
            mime[DELIVERY_ID_HEADER] = safe_id
            if text:
                mime.set_content(str(text))
                if html:
                    mime.add_alternative(str(html), subtype="html")
            else:
                mime.set_content(str(html), subtype="html")
        except (ValueError, TypeError) as exc:
            raise DeliveryError(
                ErrorClass.INVALID_REQUEST, f"cannot build the email: {exc}"
            ) from None
        return mime


def _checked_recipient(recipient: str) -> str:
    try:
        return validate_email(recipient, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise DeliveryError(ErrorClass.INVALID_RECIPIENT, f"not an email address: {exc}") from None


def _tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    if settings.ca_pem is not None:
        context = ssl.create_default_context(cadata=settings.ca_pem)
    else:
        context = ssl.create_default_context()
    if not settings.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def _connect(addresses: list[str], port: int, seconds: float) -> socket.socket:
    loop = asyncio.get_running_loop()
    last_error: OSError | None = None
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(seconds):
                await loop.sock_connect(sock, (address, port))
        except OSError as exc:  # TimeoutError included
            sock.close()
            last_error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    assert last_error is not None  # noqa: S101 - resolve() never returns an empty list
    raise last_error


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    transport = smtp.transport
    if smtp.is_connected:
        try:
            await smtp.quit()
        except aiosmtplib.SMTPException:
            smtp.close()
    await _closed(transport)


async def _close(smtp: aiosmtplib.SMTP) -> None:
    transport = smtp.transport
    smtp.close()
    await _closed(transport)


async def _closed(transport: asyncio.BaseTransport | None, seconds: float = 2.0) -> None:
    """Wait (briefly) until a closed connection's socket is really closed: asyncio closes it
    a loop turn later, or after the TLS goodbye, and a connection left half-closed holds its
    descriptor (and warns) if nothing else runs on the loop."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while sock.fileno() != -1:  # noqa: ASYNC110 - no event says a socket closed
                await asyncio.sleep(0.001)


def _reply_class(code: int, *, recipient_stage: bool) -> ErrorClass:
    if 400 <= code < 500:
        return ErrorClass.RATE_LIMITED if code in _THROTTLED else ErrorClass.SERVER_ERROR
    if code in _AUTH_REFUSED:
        return ErrorClass.AUTH
    if recipient_stage and code in _RECIPIENT_REFUSED:
        return ErrorClass.INVALID_RECIPIENT
    return ErrorClass.INVALID_REQUEST


def _reply_error(
    exc: aiosmtplib.SMTPResponseException, what: str, *, recipient_stage: bool = False
) -> DeliveryError:
    reply = f"{exc.code} {exc.message}".strip()
    error_class = _reply_class(exc.code, recipient_stage=recipient_stage)
    # Enhanced status 4.7.x is policy: throttling, greylisting, reputation — try later.
    if error_class is ErrorClass.SERVER_ERROR and re.match(r"4\.7\.\d", exc.message):
        error_class = ErrorClass.RATE_LIMITED
    return DeliveryError(error_class, f"{what}: {reply}", status=exc.code, response=reply)


def _classify(exc: BaseException) -> DeliveryError:
    if isinstance(exc, OutboundBlocked):
        return DeliveryError(ErrorClass.BLOCKED, str(exc))
    if isinstance(exc, OutboundConnectionError):  # the name did not resolve
        return DeliveryError(ErrorClass.CONNECTION, str(exc))
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        first = exc.recipients[0]
        return _reply_error(first, "the server refused the recipient", recipient_stage=True)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        error = _reply_error(exc, "the server refused the login")
        if error.error_class is ErrorClass.INVALID_REQUEST:  # a 5xx other than 53x
            error.error_class = ErrorClass.AUTH
        return error
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        error = _reply_error(exc, "the server refused the sender")
        if exc.code in _RECIPIENT_REFUSED:  # this from address may not send through this relay
            error.error_class = ErrorClass.CONFIGURATION
        return error
    if isinstance(exc, aiosmtplib.SMTPDataError):
        return _reply_error(exc, "the server refused the message")
    if isinstance(exc, aiosmtplib.SMTPResponseException):  # greeting, HELO, STARTTLS, NOOP
        return _reply_error(exc, "the server answered")
    if isinstance(exc, TimeoutError):  # aiosmtplib's timeouts are TimeoutErrors too
        return DeliveryError(ErrorClass.TIMEOUT, f"the SMTP server did not answer in time: {exc}")
    certificate = _cause(exc, ssl.SSLCertVerificationError)
    if certificate is not None:
        return DeliveryError(
            ErrorClass.CONFIGURATION,
            f"the server's TLS certificate was not accepted: {certificate.verify_message}; "
            "set ca_pem for a private CA",
        )
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return DeliveryError(ErrorClass.CONFIGURATION, f"the server lacks a feature: {exc}")
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPConnectError | OSError):
        return DeliveryError(ErrorClass.CONNECTION, f"SMTP connection failed: {exc}")
    if isinstance(exc, aiosmtplib.SMTPException):  # e.g. no AUTH offered on this connection
        return DeliveryError(ErrorClass.CONFIGURATION, f"SMTP: {exc}")
    raise exc


def _cause(exc: BaseException, kind: type[_E]) -> _E | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
