"""Browser tests: Python Playwright driving Debian's Chromium against a live Tidings server.

Chromium comes from the system (`/usr/bin/chromium`, installed by `make test`); Playwright's
own browser download is never used. A missing Chromium fails the tests loudly, never skips.
Set `WEB_SCREENSHOTS_DIR=docs/screenshots` to refresh the screenshots kept in docs/.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    async_playwright,
    expect,
)

from tests.conftest import REPO_ROOT
from tests.realtime.conftest import LiveServer, live_server
from tidings.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
# The machine is shared and loaded: generous, explicit waits (never sleeps).
TIMEOUT_MS = 30_000
expect.set_options(timeout=TIMEOUT_MS)
# Typing and presence at their production values: a typing indicator lasts 5 s.
WEB_TIMINGS: dict[str, Any] = {
    "ws_heartbeat_seconds": 25.0,
    "ws_idle_timeout_seconds": 60.0,
    "typing_ttl_seconds": 5.0,
}


@dataclass
class Tab:
    """A browser context (one person) with its page and the console errors it produced."""

    context: BrowserContext
    page: Page
    errors: list[str] = field(default_factory=list)


TabFactory = Callable[..., Awaitable[Tab]]


def require_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's Chromium. "
            "`make test` installs it (apt-get install -y chromium).",
            pytrace=False,
        )


@pytest.fixture
def web_settings(settings_values: dict[str, Any]) -> Settings:
    return Settings(_env_file=None, **{**settings_values, **WEB_TIMINGS})  # type: ignore[call-arg]


@pytest.fixture
async def web_live(web_settings: Settings) -> AsyncIterator[LiveServer]:
    async with live_server(web_settings) as server:
        yield server


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    require_chromium()
    async with async_playwright() as playwright:
        # Playwright starts Chromium with a fresh, empty profile directory of its own (and
        # refuses --user-data-dir here): nothing is shared between runs.
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=120_000
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def tab(browser: Browser, web_live: LiveServer) -> AsyncIterator[TabFactory]:
    """`await tab(width=1280, height=800)`: a new person (context) with a page on the server."""
    tabs: list[Tab] = []

    async def make(width: int = 1280, height: int = 800) -> Tab:
        context = await browser.new_context(
            base_url=web_live.base_url, viewport={"width": width, "height": height}
        )
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()
        made = Tab(context, page)

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                made.errors.append(f"console: {message.text} at {message.location}")

        page.on("console", on_console)
        page.on("pageerror", lambda error: made.errors.append(f"page error: {error}"))
        tabs.append(made)
        return made

    yield make
    for made in tabs:
        await made.context.close()


async def screenshot(page: Page, name: str) -> None:
    """Keep a screenshot in WEB_SCREENSHOTS_DIR (e.g. docs/screenshots) when it is set."""
    target = os.environ.get("WEB_SCREENSHOTS_DIR")
    if not target:
        return
    directory = Path(target)
    if not directory.is_absolute():
        directory = REPO_ROOT / directory
    directory.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(directory / f"{name}.png"))
