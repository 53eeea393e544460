"""The long tail of providers through Apprise: one Apprise URL (a credential — it holds tokens).

Apprise is synchronous (requests underneath), so parsing the URL and notifying run in worker
threads, a bounded number at once, the notification under the connector's timeout (Apprise's
own socket timeouts are lowered to it too, so an abandoned thread ends soon after).

Outbound guard, and its limit: before sending, the host of a URL whose host *is* where Apprise
connects (json://, form://, xml://, gotify://, ntfy://host/…, mmost://, matrix://, rocket:// …)
passes `OutboundPolicy.resolve`, so a private or loopback target is refused unless allowed.
Apprise's HTTP stack is not guarded at connect time: a name that resolves differently between
the check and Apprise's own lookup (DNS rebinding) is not caught, and redirects are whatever the
plugin does. URLs of hosted services (discord://, tgram://, slack:// …) carry ids and tokens in
the host position and go to the provider's fixed public API: nothing to check. Schemes that act
on the Tidings host itself (desktop notifications, syslog, USB lights) are refused.

Apprise answers with a verdict, not a status: a failure is `server_error` (retriable; 429
`rate_limited`), with Apprise's own warning lines (scrubbed of the URL's secrets) as the
response excerpt; a URL Apprise does not understand is `configuration`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio
import anyio.to_thread
from pydantic import Field, SecretStr, field_validator

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
from tidings.delivery.connectors.http import redact, summarize
from tidings.infra.outbound import OutboundBlocked, OutboundConnectionError

if TYPE_CHECKING:
    from apprise.plugins.base import NotifyBase

# Schemes whose host part is the server Apprise connects to.
HOST_SCHEMES = frozenset(
    {
        "json", "jsons", "xml", "xmls", "form", "forms",
        "apprise", "apprises", "gotify", "gotifys", "mmost", "mmosts",
        "rocket", "rockets", "matrix", "matrixs", "ncloud", "nclouds", "nctalk", "nctalks",
        "mqtt", "mqtts", "rsyslog", "kodi", "kodis", "xbmc", "xbmcs", "emby", "embys",
        "jellyfin", "jellyfins", "enigma2", "enigma2s", "synology", "synologys",
        "ntfy", "ntfys",  # checked only for a self-hosted server (ntfy://host/topic)
    }
)  # fmt: skip
# Schemes that notify the machine Tidings runs on, not anyone on a network.
LOCAL_SCHEMES = frozenset(
    {"dbus", "kde", "qt", "glib", "gnome", "macosx", "windows", "syslog", "blink1"}
)
MAX_CONCURRENT_THREADS = 16
_SCHEME = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]{0,31})://", re.IGNORECASE)
_HTTP_STATUS = re.compile(r"error=(\d{3})\b")
_limiter: anyio.CapacityLimiter | None = None


class _ActiveSecrets(logging.Filter):
    """Masks the secrets of the Apprise URLs being sent in Apprise's and urllib3's log lines
    (Apprise logs the URLs it posts to at DEBUG, urllib3 each request line)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: Counter[str] = Counter()

    def add(self, values: list[str]) -> None:
        with self._lock:
            self._secrets.update(values)

    def remove(self, values: list[str]) -> None:
        with self._lock:
            self._secrets.subtract(values)
            self._secrets = +self._secrets

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            active = sorted(self._secrets, key=len, reverse=True)
        if not active:
            return True
        message = record.getMessage()
        cleaned = redact(message, active)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_ACTIVE = _ActiveSecrets()
for _name in (
    "apprise",
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.poolmanager",
    "requests",
):
    logging.getLogger(_name).addFilter(_ACTIVE)


class AppriseSettings(ConnectorSettings):
    notify_type: Literal["info", "success", "warning", "failure"] = "info"
    body_format: Literal["text", "markdown", "html"] = "text"
    timeout_seconds: float | None = Field(default=None, gt=0, le=120)


class AppriseCredentials(ConnectorCredentials):
    # e.g. "discord://webhook_id/webhook_token", "json://user:pass@hooks.example.com/path"
    url: SecretStr = Field(min_length=4, max_length=4000)

    @field_validator("url")
    @classmethod
    def _apprise_shaped(cls, value: SecretStr) -> SecretStr:
        # Apprise itself is asked at test and send time, off the event loop (its first parse
        # loads every plugin, seconds of work); here only the shape and the scheme.
        match = _SCHEME.match(value.get_secret_value().strip())
        if match is None:
            raise ValueError("an Apprise URL starts with a scheme, e.g. discord:// or json://")
        if match["scheme"].lower() in LOCAL_SCHEMES:
            raise ValueError("this scheme notifies the Tidings host itself and is not allowed")
        return value


class AppriseConnector(ConnectorType):
    type_name: ClassVar[str] = "apprise"
    channel: ClassVar[Channel] = Channel.CHAT
    title: ClassVar[str] = "Apprise URL"
    Settings: ClassVar[type[ConnectorSettings]] = AppriseSettings
    Credentials: ClassVar[type[ConnectorCredentials]] = AppriseCredentials
    default_max_concurrency: ClassVar[int | None] = 4

    settings: AppriseSettings
    credentials: AppriseCredentials

    @property
    def _url(self) -> str:
        return self.credentials.url.get_secret_value().strip()

    @property
    def _timeout(self) -> float:
        return self.settings.timeout_seconds or self.context.timeout_seconds

    async def send(self, message: OutboundEnvelope) -> SendResult:
        body = str(message.content.get("text") or "")
        if not body.strip():
            raise DeliveryError(ErrorClass.INVALID_REQUEST, "the message has no text")
        title = str(message.content.get("subject") or message.metadata.get("title") or "")
        secrets = url_secrets(self._url)
        _ACTIVE.add(secrets)
        try:
            plugin = await self._checked_plugin()
        except BaseException:
            _ACTIVE.remove(secrets)
            raise
        # The worker thread forgets the secrets when it ends, which may be after a timeout.
        status, lines = await self._notify(plugin, body=body, title=title, secrets=secrets)
        if status == "SUCCESS":
            return SendResult(response=summarize("\n".join(lines), secrets) or "sent")
        raise _failure(status, lines, secrets)

    async def test(self) -> TestResult:
        """Parse the URL and check its host; Apprise has no dry run, so nothing is sent."""
        secrets = url_secrets(self._url)
        _ACTIVE.add(secrets)  # Apprise logs the URL it loaded
        try:
            plugin = await self._checked_plugin()
        except DeliveryError as exc:
            return TestResult(ok=False, detail=exc.detail)
        finally:
            _ACTIVE.remove(secrets)
        return TestResult(ok=True, detail=f"Apprise understands this URL ({plugin.service_name})")

    async def _checked_plugin(self) -> NotifyBase:
        url = self._url
        scheme = url.partition("://")[0].lower()
        if scheme in LOCAL_SCHEMES:
            raise DeliveryError(
                ErrorClass.CONFIGURATION, f"{scheme}:// notifies the Tidings host itself"
            )
        plugin = await anyio.to_thread.run_sync(_parse, url, limiter=_threads())
        if plugin is None:
            raise DeliveryError(
                ErrorClass.CONFIGURATION,
                f"Apprise does not understand this {scheme}:// URL (or its plugin is unavailable)",
            )
        host = _network_host(scheme, plugin)
        if host is not None:
            port = plugin.port if isinstance(plugin.port, int) else (443 if plugin.secure else 80)
            try:
                await self.context.policy.resolve(host, port)
            except OutboundBlocked as exc:
                raise DeliveryError(ErrorClass.BLOCKED, str(exc)) from None
            except OutboundConnectionError as exc:  # the name does not resolve
                raise DeliveryError(ErrorClass.CONNECTION, str(exc)) from None
        # Apprise's own socket timeouts (4 s by default) follow the connector's.
        plugin.socket_connect_timeout = min(self._timeout, 10.0)
        plugin.socket_read_timeout = self._timeout
        return plugin

    async def _notify(
        self, plugin: NotifyBase, *, body: str, title: str, secrets: list[str]
    ) -> tuple[str, list[str]]:
        settings = self.settings
        try:
            with anyio.fail_after(self._timeout + 2):  # Apprise's own deadline comes first
                return await anyio.to_thread.run_sync(
                    _notify,
                    plugin,
                    body,
                    title,
                    settings.notify_type,
                    settings.body_format,
                    self._timeout,
                    secrets,
                    abandon_on_cancel=True,
                    limiter=_threads(),
                )
        except TimeoutError:
            return "TIMEOUT", []


def _threads() -> anyio.CapacityLimiter:
    global _limiter  # one per process, made inside the event loop
    if _limiter is None:
        _limiter = anyio.CapacityLimiter(MAX_CONCURRENT_THREADS)
    return _limiter


def _asset() -> Any:
    import apprise  # here: a second of imports, paid in a worker thread

    # Apprise may keep state per URL on disk; a server keeps it in memory.
    return apprise.AppriseAsset(storage_mode="memory")


def _parse(url: str) -> NotifyBase | None:
    import apprise  # see _asset

    return apprise.Apprise.instantiate(url, asset=_asset())


def _notify(
    plugin: NotifyBase,
    body: str,
    title: str,
    notify_type: str,
    body_format: str,
    timeout: float,
    secrets: list[str],
) -> tuple[str, list[str]]:
    import apprise  # see _asset

    try:
        notifier = apprise.Apprise(asset=_asset())
        notifier.add(plugin)
        result = notifier.notify(
            body=body,
            title=title,
            notify_type=notify_type,
            body_format=body_format,
            timeout=timeout,
            log_level=logging.WARNING,
        )
        lines = list(dict.fromkeys(entry.message for entry in result.logs()))
        return result.status.name, lines
    finally:
        _ACTIVE.remove(secrets)


def _network_host(scheme: str, plugin: NotifyBase) -> str | None:
    if scheme not in HOST_SCHEMES:
        return None
    if scheme.startswith("ntfy") and getattr(plugin, "mode", None) != "private":
        return None  # ntfy://topic goes to ntfy.sh
    host = getattr(plugin, "host", None)
    return host if isinstance(host, str) and host else None


def url_secrets(url: str) -> list[str]:
    """The parts of an Apprise URL that may be secret: the whole URL, its user and password,
    the host (a token for hosted services), each path segment and query value of some length."""
    values = {url}
    try:
        parts = urlsplit(url)
        host_is_a_server = parts.scheme.lower() in HOST_SCHEMES
        candidates = [
            parts.username or "",
            parts.password or "",
            "" if host_is_a_server else (parts.hostname or ""),
            *parts.path.split("/"),
            *(value for _, value in parse_qsl(parts.query)),
        ]
    except ValueError:
        candidates = []
    for candidate in candidates:
        for form in (candidate, unquote(candidate)):
            if len(form) >= 6:
                values.add(form)
    return sorted(values, key=len, reverse=True)


def _failure(status: str, lines: list[str], secrets: list[str]) -> DeliveryError:
    response = summarize("\n".join(lines), secrets) or None
    if status == "TIMEOUT":
        return DeliveryError(
            ErrorClass.TIMEOUT, "Apprise did not finish in time", response=response
        )
    if status == "NOMATCH":
        return DeliveryError(ErrorClass.CONFIGURATION, "Apprise had no service to notify")
    codes = [int(code) for line in lines for code in _HTTP_STATUS.findall(line)]
    code = codes[-1] if codes else None
    error_class = ErrorClass.RATE_LIMITED if code == 429 else ErrorClass.SERVER_ERROR
    reason = redact(lines[-1], secrets) if lines else "no reason given"
    return DeliveryError(
        error_class, f"Apprise could not notify: {reason}", status=code, response=response
    )
