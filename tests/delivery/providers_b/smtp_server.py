"""A real SMTP relay on 127.0.0.1 (aiosmtpd in its own thread): plain, STARTTLS or implicit TLS
with a certificate from a throwaway CA (trustme), AUTH LOGIN/PLAIN against one user, mailboxes
it knows and refuses, and replies a test scripts per stage (421/450/550/…, late, dropped)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import socket
import ssl
import threading
from collections import deque
from dataclasses import dataclass
from email.message import EmailMessage
from enum import StrEnum
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

# The relay logs every command it reads; tests need its answers, not its chatter.
logging.getLogger("mail.log").setLevel(logging.WARNING)

USERNAME = "mailer@example.org"
PASSWORD = "smtp-pa55word-7f3c"


class SmtpMode(StrEnum):
    PLAIN = "none"
    STARTTLS = "starttls"
    TLS = "tls"


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool  # the transaction ran over TLS
    login: str | None  # the account that was logged in, if any

    def message(self) -> EmailMessage:
        # As a mailbox stores it: the wire's CRLF line ends become LF.
        unix = self.content.replace(b"\r\n", b"\n")
        parsed = email.message_from_bytes(unix, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass(frozen=True)
class Scripted:
    """The answer to the next command of a stage ("mail", "rcpt", "data")."""

    reply: str
    delay: float = 0.0
    drop: bool = False  # close the connection instead of answering


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _Handler:
    def __init__(self, relay: SmtpRelay) -> None:
        self.relay = relay

    async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        scripted = await self.relay._play("mail", server)
        if scripted is not None:
            return scripted
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        scripted = await self.relay._play("rcpt", server)
        if scripted is not None:
            return scripted
        if address.lower() in self.relay.unknown_mailboxes:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        scripted = await self.relay._play("data", server)
        if scripted is not None:
            return scripted
        login = session.auth_data if session.authenticated else None
        content = envelope.original_content or b""
        mail = ReceivedMail(
            mail_from=str(envelope.mail_from),
            rcpt_tos=list(envelope.rcpt_tos),
            content=content,
            # STARTTLS records itself in the session; implicit TLS is the transport's.
            tls=session.ssl is not None
            or (
                server.transport is not None
                and server.transport.get_extra_info("sslcontext") is not None
            ),
            login=login if isinstance(login, str) else None,
        )
        with self.relay._lock:
            self.relay.received.append(mail)
            number = len(self.relay.received)
        return f"250 2.0.0 Ok: queued as Q{number:05d}"


class SmtpRelay:
    """Start with `start()`, stop with `stop()`; `received` holds the accepted mail."""

    def __init__(
        self, mode: SmtpMode, ca: trustme.CA, *, auth: bool = False, hostname: str = "localhost"
    ) -> None:
        self.mode = mode
        self.port = free_port()
        self.received: list[ReceivedMail] = []
        self.logins: list[tuple[str, bool]] = []  # (user, accepted)
        self.unknown_mailboxes = {"nobody@example.com"}
        self._scripts: dict[str, deque[Scripted]] = {}
        self._lock = threading.Lock()
        server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(hostname).configure_cert(server_tls)
        options: dict[str, Any] = {"server_hostname": "mx.test.invalid"}
        if auth:
            options["authenticator"] = self._authenticate
            options["auth_require_tls"] = mode is not SmtpMode.PLAIN
        if mode is SmtpMode.STARTTLS:
            options["tls_context"] = server_tls
            options["require_starttls"] = True
        elif mode is SmtpMode.TLS:
            options["ssl_context"] = server_tls
        self._controller = Controller(
            _Handler(self), hostname="127.0.0.1", port=self.port, **options
        )

    def start(self) -> SmtpRelay:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def script(self, stage: str, *answers: Scripted | str) -> None:
        with self._lock:
            queue = self._scripts.setdefault(stage, deque())
            queue.extend(a if isinstance(a, Scripted) else Scripted(a) for a in answers)

    async def _play(self, stage: str, server: SMTP) -> str | None:
        with self._lock:
            queue = self._scripts.get(stage)
            scripted = queue.popleft() if queue else None
        if scripted is None:
            return None
        if scripted.delay:
            await asyncio.sleep(scripted.delay)
        if scripted.drop:
            assert server.transport is not None
            server.transport.abort()
        return scripted.reply

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = data.login.decode(), data.password.decode()
        accepted = user == USERNAME and password == PASSWORD
        with self._lock:
            self.logins.append((user, accepted))
        return AuthResult(success=accepted, handled=False, auth_data=user)
