"""Which connector types exist: the built-in ones, and any an installed package exposes.

A package adds a type with an entry point in the `tidings.connectors` group whose object is a
`ConnectorType` subclass, e.g. in its pyproject.toml:

    [project.entry-points."tidings.connectors"]
    pagerduty = "tidings_pagerduty:PagerDutyConnector"
"""

from __future__ import annotations

import functools
from importlib import import_module
from importlib.metadata import entry_points

from tidings.delivery.connectors.base import ConnectorType
from tidings.infra.logging import get_logger

ENTRY_POINT_GROUP = "tidings.connectors"
_log = get_logger(__name__)

# type name -> "module:Class"; imported on first use so a missing optional dependency of one
# provider never stops the others from loading.
BUILTIN: dict[str, str] = {
    "webhook": "tidings.delivery.connectors.webhook:WebhookConnector",
    "smtp": "tidings.delivery.connectors.smtp:SmtpConnector",
    "mailgun": "tidings.delivery.connectors.mailgun:MailgunConnector",
    "twilio": "tidings.delivery.connectors.twilio:TwilioSmsConnector",
    "slack_webhook": "tidings.delivery.connectors.slack:SlackWebhookConnector",
    "slack": "tidings.delivery.connectors.slack:SlackApiConnector",
    "discord": "tidings.delivery.connectors.discord:DiscordWebhookConnector",
    "telegram": "tidings.delivery.connectors.telegram:TelegramConnector",
    "messenger": "tidings.delivery.connectors.messenger:MessengerConnector",
    "apprise": "tidings.delivery.connectors.apprise:AppriseConnector",
}


def _load(path: str) -> type[ConnectorType]:
    module_name, _, attribute = path.partition(":")
    loaded = getattr(import_module(module_name), attribute)
    if not (isinstance(loaded, type) and issubclass(loaded, ConnectorType)):
        raise TypeError(f"{path} is not a ConnectorType")
    return loaded


@functools.cache
def connector_types() -> dict[str, type[ConnectorType]]:
    """Every available type by name. Built-in names are reserved: a plugin claiming one is
    skipped, even when the built-in itself cannot load (a missing optional dependency)."""
    types: dict[str, type[ConnectorType]] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        package = entry_point.dist.name if entry_point.dist is not None else None
        if entry_point.name in BUILTIN:
            _log.warning("connector_plugin_shadows_builtin", type=entry_point.name, package=package)
            continue
        try:
            types[entry_point.name] = _load(entry_point.value)
        except Exception:
            _log.exception(
                "connector_plugin_failed",
                type=entry_point.name,
                entry_point=entry_point.value,
                package=package,
            )
    for name, path in BUILTIN.items():
        try:
            types[name] = _load(path)
        except ImportError:
            _log.exception("connector_unavailable", type=name)
    return types


def get_connector_type(name: str) -> type[ConnectorType] | None:
    return connector_types().get(name)
