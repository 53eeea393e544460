"""Connector types from installed packages, through the real mechanism: a distribution written
into a directory on `sys.path` (a module and its `.dist-info` with `METADATA` and
`entry_points.txt`), found by `importlib.metadata` under the `tidings.connectors` group.

No database: these tests take no `profile` and run once."""

from __future__ import annotations

import importlib
import logging
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tidings.delivery.connectors import registry
from tidings.delivery.connectors.base import Channel, ConnectorType
from tidings.delivery.connectors.registry import BUILTIN, ENTRY_POINT_GROUP, get_connector_type
from tidings.delivery.connectors.webhook import WebhookConnector

PLUGIN_SOURCE = '''
"""A connector type a third-party package ships (written by the test)."""

from typing import ClassVar

from tidings.delivery.connectors.base import (
    Channel,
    ConnectorSettings,
    ConnectorType,
    OutboundEnvelope,
    SendResult,
    TestResult,
)


class PagerSettings(ConnectorSettings):
    service: str


class PagerConnector(ConnectorType):
    type_name: ClassVar[str] = "{type_name}"
    channel: ClassVar[Channel] = Channel.CHAT
    title: ClassVar[str] = "Pager (test plugin)"
    Settings = PagerSettings

    async def send(self, message: OutboundEnvelope) -> SendResult:
        return SendResult(provider_message_id="pg-" + message.delivery_id)

    async def test(self) -> TestResult:
        return TestResult(ok=True, detail="pager reachable")


NOT_A_CONNECTOR = object()
'''


@dataclass(frozen=True)
class Plugin:
    """A distribution installed into a directory on sys.path."""

    distribution: str
    module: str
    type_name: str

    def imported(self) -> type[ConnectorType]:
        loaded: type[ConnectorType] = importlib.import_module(self.module).PagerConnector
        return loaded


@pytest.fixture(autouse=True)
def fresh_registry() -> Iterator[None]:
    """The registry caches what it found: start from nothing, and leave nothing behind for the
    next test in this process (the plugins' directories leave sys.path with monkeypatch)."""
    registry.connector_types.cache_clear()
    yield
    registry.connector_types.cache_clear()


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Installer]:
    installer = _Installer(tmp_path / "site-packages", monkeypatch)
    yield installer
    for module in installer.modules:
        sys.modules.pop(module, None)


class _Installer:
    def __init__(self, site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.site = site
        self.monkeypatch = monkeypatch
        self.modules: list[str] = []
        site.mkdir()
        # Also invalidates import caches, so the new module and dist-info are seen.
        monkeypatch.syspath_prepend(str(site))

    def __call__(self, entry_points: dict[str, str] | None = None) -> Plugin:
        """Install one distribution with a module defining `PagerConnector`; its entry points
        are `entry_points` (name -> "module:attribute", `{module}` filled in), by default one
        naming the class under its own type name."""
        suffix = uuid.uuid4().hex[:8]
        plugin = Plugin(
            distribution=f"tidings-pager-{suffix}",
            module=f"tidings_pager_{suffix}",
            type_name=f"pager_{suffix}",
        )
        (self.site / f"{plugin.module}.py").write_text(
            PLUGIN_SOURCE.replace("{type_name}", plugin.type_name)
        )
        dist_info = self.site / f"{plugin.module}-1.0.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {plugin.distribution}\nVersion: 1.0\n"
        )
        points = entry_points or {plugin.type_name: "{module}:PagerConnector"}
        lines = [f"[{ENTRY_POINT_GROUP}]"]
        lines += [
            f"{name} = {value.format(module=plugin.module)}" for name, value in points.items()
        ]
        (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        importlib.invalidate_caches()
        self.modules.append(plugin.module)
        return plugin


def _builtins_all_load() -> None:
    for name, path in BUILTIN.items():
        loaded = get_connector_type(name)
        assert loaded is not None, name
        assert f"{loaded.__module__}:{loaded.__qualname__}" == path


def test_an_installed_package_adds_a_connector_type(install: _Installer) -> None:
    plugin = install()
    assert plugin.module not in sys.modules  # imported by the registry, not by the test

    found = get_connector_type(plugin.type_name)

    assert found is not None
    assert found is plugin.imported()
    assert found.type_name == plugin.type_name
    assert found.channel is Channel.CHAT
    assert found.Settings.model_validate({"service": "ops"}).model_dump() == {"service": "ops"}
    assert plugin.type_name in registry.connector_types()
    _builtins_all_load()


def test_without_the_package_the_type_is_unknown(install: _Installer) -> None:
    plugin = install()
    registry.connector_types.cache_clear()
    sys.path.remove(str(install.site))
    importlib.invalidate_caches()
    assert get_connector_type(plugin.type_name) is None
    _builtins_all_load()


def test_a_broken_plugin_is_skipped_with_a_logged_error(
    install: _Installer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=registry.__name__)
    good = install()
    broken = install(
        {
            "ghost": "{module}:Missing",  # no such attribute
            "nomodule": "tidings_no_such_module_4d1e:Connector",
            "notaclass": "{module}:NOT_A_CONNECTOR",  # not a ConnectorType
        }
    )

    types = registry.connector_types()

    assert "ghost" not in types
    assert "nomodule" not in types
    assert "notaclass" not in types
    assert types[good.type_name] is good.imported()  # one bad package does not stop another
    _builtins_all_load()

    failures: dict[str, type[BaseException] | None] = {}
    for record in caplog.records:
        if isinstance(record.msg, dict) and record.msg.get("event") == "connector_plugin_failed":
            assert record.levelno == logging.ERROR
            # The traceback says what went wrong.
            failures[record.msg["entry_point"]] = record.exc_info[0] if record.exc_info else None
    assert failures == {
        f"{broken.module}:Missing": AttributeError,
        "tidings_no_such_module_4d1e:Connector": ModuleNotFoundError,
        f"{broken.module}:NOT_A_CONNECTOR": TypeError,
    }


def test_a_plugin_cannot_replace_a_builtin(install: _Installer) -> None:
    impostor = install({"webhook": "{module}:PagerConnector", "smtp": "{module}:PagerConnector"})

    assert get_connector_type("webhook") is WebhookConnector
    smtp = get_connector_type("smtp")
    assert smtp is not None
    assert smtp.__module__ == "tidings.delivery.connectors.smtp"
    # A plugin claiming a built-in name is not even imported.
    assert impostor.module not in sys.modules
    _builtins_all_load()
