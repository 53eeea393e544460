"""Workspace settings in a real browser: connectors (made from their schemas, credentials
write-only, test connection, broken shown with its reason), templates with a live preview
rendered by the server, and the delivery log with each attempt of a message that a local
webhook receiver first refused (503) and then took."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from playwright.async_api import Page, expect

from tests.delivery.providers.base import Reply
from tests.delivery.providers.webhook import WebhookReceiver
from tests.realtime.conftest import LiveServer
from tests.support.users import Account, create_workspace, register
from tests.web.conftest import Tab, TabFactory, screenshot
from tests.web.test_web import sign_in

pytestmark = [pytest.mark.profiles("embedded"), pytest.mark.xdist_group("browser")]

SECRET = "whsec_" + "r" * 32  # WebhookReceiver's default signing secret
# For a failure message: the elements that stick out past a 375 px screen.
WIDER_THAN_SCREEN = """() => [...document.querySelectorAll("*")]
  .filter((e) => e.getBoundingClientRect().right > 376).slice(0, 12)
  .map((e) => `${e.tagName}.${e.className} ${Math.round(e.getBoundingClientRect().right)}`)"""


@pytest.fixture
def settings_values(settings_values: dict[str, Any]) -> dict[str, Any]:
    return {
        **settings_values,
        # The receiver listens on loopback, which the outbound guard refuses by default.
        "outbound_allow_networks": ["127.0.0.0/8"],
        "outbound_timeout_seconds": 5.0,
        # A retry after a 503 comes within a fraction of a second, not 2 s and more.
        "delivery_backoff_base_seconds": 0.1,
        "delivery_backoff_max_seconds": 0.3,
        "delivery_max_attempts": 4,
        "serve_runs_worker": True,
    }


def assert_no_console_errors(*tabs: Tab, expected_400: str | None = None) -> None:
    """No console or page errors; Chromium logs every 4xx answer as one, so the 400s of a
    deliberately broken template preview (`expected_400` in the URL) are the only exception."""
    errors = [
        error
        for tab in tabs
        for error in tab.errors
        if not (
            expected_400 is not None
            and "the server responded with a status of 400" in error
            and expected_400 in error
        )
    ]
    assert errors == []


async def owner_with_workspace(live: LiveServer) -> tuple[Account, str]:
    owner = await register(live.http, "owner@example.com")
    return owner, await create_workspace(live.http, owner)


async def open_section(page: Page, workspace_id: str, section: str, heading: str) -> None:
    await page.goto(f"/w/{workspace_id}/admin/{section}")
    await expect(page.get_by_role("heading", name=f"Acme · {heading}")).to_be_visible()


async def test_connector_test_send_retry_and_broken(tab: TabFactory, web_live: LiveServer) -> None:
    _, workspace_id = await owner_with_workspace(web_live)
    async with WebhookReceiver() as receiver:
        owner = await tab(width=1280, height=900)
        page = owner.page
        await sign_in(page, "owner@example.com")
        await expect(page.locator("body")).to_have_attribute("data-realtime", "live")
        await open_section(page, workspace_id, "connectors", "Connectors")

        # A webhook connector, its form generated from the type's schemas.
        await page.get_by_role("button", name="New connector").click()
        await page.get_by_label("Type").select_option("webhook")
        await page.get_by_label("Name", exact=True).fill("hook")
        await page.get_by_label("URL (required)", exact=True).fill(receiver.url)
        secret = page.get_by_label("Signing secret (required)", exact=True)
        await expect(secret).to_have_attribute("type", "password")
        await expect(page.get_by_label("Previous signing secret")).to_have_attribute(
            "type", "password"
        )
        await secret.fill(SECRET)
        await page.get_by_role("button", name="Create connector").click()
        row = page.locator("tr.connector", has_text="hook")
        await expect(row).to_have_attribute("data-status", "active")
        # Write-only: the answer shows the masked form, never the secret.
        await expect(row).to_contain_text("Signing secret ••••rrrr")
        assert SECRET not in await page.content()
        await page.get_by_role("button", name="Edit hook").click()
        secret = page.get_by_label("Signing secret", exact=True)
        await expect(secret).to_have_attribute("type", "password")
        await expect(secret).to_have_value("")
        await expect(page.get_by_label("URL (required)", exact=True)).to_have_value(receiver.url)
        await expect(page.get_by_text("Current: ••••rrrr.")).to_be_visible()
        # Blank credentials keep the current ones: a rename only.
        await page.get_by_label("Name", exact=True).fill("hook-1")
        await page.get_by_role("button", name="Save connector").click()
        row = page.locator("tr.connector", has_text="hook-1")
        await expect(row).to_contain_text("Signing secret ••••rrrr")

        # Test connection: the receiver verifies the signature (so the secret was kept) and
        # answers 200; the page shows the provider's answer.
        await page.get_by_role("button", name="Test connection of hook-1").click()
        await expect(row.locator(".last-test")).to_contain_text(
            "✓ OK: the receiver answered HTTP 200"
        )
        assert receiver.last().headers["tidings-event"] == "ping"
        await page.get_by_role("button", name="Statistics of hook-1").click()
        await expect(page.locator("dl.stats")).to_contain_text("closed")

        # A test message from the delivery log: the receiver answers 503 once, then 200.
        receiver.script(Reply.json({"error": "down for a moment"}, 503))
        await page.get_by_role("link", name="Delivery log").click()
        await expect(page.get_by_role("heading", name="Acme · Delivery log")).to_be_visible()
        await page.get_by_text("Send a test message", exact=True).click()
        await page.get_by_label("Connector or route").select_option(label="hook-1 (webhook)")
        await page.get_by_label("Recipient address").fill("ops@example.com")
        await page.get_by_label("Message text").fill("Hello from the browser")
        await page.get_by_role("button", name="Send test message").click()

        detail = page.locator("section.message-detail")
        await expect(
            detail.get_by_role("heading", name="Message to ops@example.com")
        ).to_be_visible()
        await expect(detail).to_have_attribute("data-status", "sent")
        await expect(detail).to_have_attribute("data-polling", "no")
        attempts = detail.locator("tr.attempt")
        await expect(attempts).to_have_count(2)
        await expect(attempts.nth(0)).to_have_attribute("data-outcome", "retry")
        await expect(attempts.nth(0)).to_contain_text("server_error")
        await expect(attempts.nth(0)).to_contain_text("503")
        await expect(attempts.nth(0)).to_contain_text("down for a moment")
        await expect(attempts.nth(1)).to_have_attribute("data-outcome", "sent")
        await expect(attempts.nth(1)).to_contain_text("200")
        await expect(attempts.nth(1)).to_contain_text("hook-1")
        await screenshot(page, "admin-delivery-log")
        messages = [r for r in receiver.received if r.headers.get("tidings-event") == "message"]
        assert len(messages) == 2
        assert messages[-1].json()["content"] == {"text": "Hello from the browser"}
        assert messages[-1].json()["recipient"] == "ops@example.com"

        # Back in the log: the row, and the filters.
        await detail.get_by_role("button", name="← Back to the log").click()
        rows = page.locator("tr.delivery")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_have_attribute("data-status", "sent")
        await page.get_by_label("Status").select_option("failed")
        await expect(page.get_by_text("No messages match.")).to_be_visible()
        await page.get_by_label("Status").select_option("")
        await expect(rows).to_have_count(1)

        # A receiver that refuses the credentials (401) makes the connector broken.
        receiver.script(Reply.json({"error": "who are you"}, 401))
        await page.get_by_text("Send a test message", exact=True).click()
        await page.get_by_label("Message text").fill("This one is refused")
        await page.get_by_role("button", name="Send test message").click()
        await expect(detail).to_have_attribute("data-status", "failed")
        await expect(detail).to_contain_text("auth")
        await page.get_by_role("link", name="Connectors").click()
        row = page.locator("tr.connector", has_text="hook-1")
        await expect(row).to_have_attribute("data-status", "broken")
        await expect(row.locator(".status-badge")).to_have_text("Broken")
        await expect(row.locator(".status-reason")).to_contain_text(
            "refused the credentials (HTTP 401)"
        )
        await screenshot(page, "admin-connectors")
        # A successful test puts it back in service.
        await page.get_by_role("button", name="Test connection of hook-1").click()
        await expect(row).to_have_attribute("data-status", "active")

    assert_no_console_errors(owner)


async def test_template_live_preview_errors_and_versions(
    tab: TabFactory, web_live: LiveServer
) -> None:
    _, workspace_id = await owner_with_workspace(web_live)
    person = await tab(width=1280, height=900)
    page = person.page
    await sign_in(page, "owner@example.com")
    await expect(page.locator("body")).to_have_attribute("data-realtime", "live")
    await open_section(page, workspace_id, "templates", "Templates")

    await page.get_by_role("button", name="New template").click()
    await page.get_by_label("Name", exact=True).fill("welcome")
    preview = page.locator(".preview-output")
    subject = preview.locator('pre[data-channel="email"][data-part="subject"]')
    await expect(subject).to_have_text("Welcome, Ada")

    # The preview follows the variables and the parts as they are typed.
    await page.get_by_label("Variables (JSON)").fill(json.dumps({"name": "Grace"}))
    await expect(subject).to_have_text("Welcome, Grace")
    subject_input = page.get_by_label("Email subject")
    await subject_input.click()
    await subject_input.press("End")
    await subject_input.press_sequentially(" and friends")
    await expect(subject).to_have_text("Welcome, Grace and friends")
    await page.get_by_label("SMS", exact=True).check()
    await page.get_by_label("SMS text").fill("{{ name }}: {{ name | upper }}")
    await expect(preview.locator('pre[data-channel="sms"]')).to_have_text("Grace: GRACE")

    # Render errors come back from the server and show inline.
    email_text = page.get_by_label("Email text")
    await email_text.fill("Hello {{ name }}, your code is {{ code }}.")
    error = preview.get_by_role("alert")
    await expect(error).to_contain_text("Variable 'code' is missing")
    await expect(error).to_contain_text("email.text")
    await email_text.fill("Hello {% if name %}{{ name }}")
    await expect(error).to_contain_text("Unexpected end of template")
    await expect(preview).to_have_attribute("data-state", "error")
    await page.get_by_label("Variables (JSON)").fill('{"name": ')
    await expect(error).to_contain_text("Variables: not valid JSON.")
    await page.get_by_label("Variables (JSON)").fill(json.dumps({"name": "Grace", "code": "42"}))
    await email_text.fill("Hello {{ name }}, your code is {{ code }}.")
    await expect(preview.locator('pre[data-part="text"][data-channel="email"]')).to_have_text(
        "Hello Grace, your code is 42."
    )
    await expect(preview).to_have_attribute("data-state", "ok")
    await page.get_by_label("Email subject").scroll_into_view_if_needed()
    await page.evaluate("window.scrollBy(0, 200)")
    await screenshot(page, "admin-template-preview")

    # Saved: version 1; a change of the subject saves version 2; both are listed.
    await page.get_by_role("button", name="Create template").click()
    await expect(page.get_by_role("heading", name="Edit welcome (v1 of 1)")).to_be_visible()
    await page.get_by_label("Email subject").fill("Hi {{ name }}")
    await page.get_by_role("button", name="Save as new version").click()
    await expect(page.get_by_role("heading", name="Edit welcome (v2 of 2)")).to_be_visible()
    versions = page.locator(".template-versions li")
    await expect(versions).to_have_count(2)
    await page.get_by_role("button", name="Load version 1").click()
    await expect(page.get_by_role("heading", name="Edit welcome (v1 of 2)")).to_be_visible()
    await expect(page.get_by_label("Email subject")).to_have_value(
        "Welcome, {{ name }} and friends"
    )
    await expect(page.locator("table.templates tbody tr")).to_have_count(1)
    await expect(page.locator("table.templates")).to_contain_text("v2")

    # Every section is usable at 375 px: nothing wider than the screen.
    await page.set_viewport_size({"width": 375, "height": 740})
    for section, heading in (
        ("templates", "Templates"),
        ("connectors", "Connectors"),
        ("deliveries", "Delivery log"),
    ):
        await page.get_by_role("link", name=heading, exact=True).click()
        await expect(page.get_by_role("heading", name=f"Acme · {heading}")).to_be_visible()
        await expect(page.locator(f'.admin-content[data-section="{section}"]')).to_be_visible()
        width = await page.evaluate("document.documentElement.scrollWidth")
        wide = await page.evaluate(WIDER_THAN_SCREEN) if width > 375 else []
        assert width <= 375, f"{section} is {width} px wide: {wide}"
    await page.get_by_text("Send a test message", exact=True).click()
    await expect(page.get_by_label("Recipient address")).to_be_visible()
    assert await page.evaluate("document.documentElement.scrollWidth") <= 375
    assert re.search(r"/admin/deliveries$", page.url)

    assert_no_console_errors(person, expected_400="/templates/preview")
