"""The chat features of the web app in a real browser: threads in a side panel (live between
two people, one of them on a phone), the "New" line above unread messages, and search with
filters whose results open the message (or its thread)."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from playwright.async_api import Page, Response, Route, expect

from tests.realtime.conftest import LiveServer
from tests.support.users import PASSWORD, Account
from tests.web.conftest import TabFactory, screenshot
from tests.web.test_web import (
    assert_no_console_errors,
    invite_new_member,
    login_api,
    messages,
    send,
    sign_in,
)

pytestmark = [pytest.mark.profiles("embedded"), pytest.mark.xdist_group("browser")]


async def alice_and_bob(live: LiveServer) -> tuple[Account, Account, str, str]:
    """Alice owns workspace Acme, Bob is a member: (alice, bob, workspace id, #general id)."""
    registered = await live.http.post(
        "/api/v1/auth/register",
        json={"email": "alice@example.com", "password": PASSWORD, "display_name": "Alice"},
    )
    assert registered.status_code == 201, registered.text
    alice = await login_api(live, "alice@example.com")
    created = await live.http.post(
        "/api/v1/workspaces", json={"name": "Acme"}, headers=alice.headers
    )
    assert created.status_code == 201, created.text
    workspace_id = created.json()["id"]
    bob = await invite_new_member(live, alice, workspace_id)
    listed = await live.http.get(
        f"/api/v1/workspaces/{workspace_id}/conversations", headers=alice.headers
    )
    general = next(c["id"] for c in listed.json() if c["is_default"])
    return alice, bob, workspace_id, general


async def post(
    live: LiveServer, who: Account, conversation_id: str, body: str, root: str | None = None
) -> dict[str, Any]:
    payload: dict[str, Any] = {"body": body}
    if root:
        payload["thread_root_id"] = root
    sent = await live.http.post(
        f"/api/v1/conversations/{conversation_id}/messages", json=payload, headers=who.headers
    )
    assert sent.status_code == 201, sent.text
    message: dict[str, Any] = sent.json()
    return message


async def signed_in(page: Page, email: str) -> None:
    await sign_in(page, email)
    await expect(page.get_by_role("heading", name="# general")).to_be_visible()
    await expect(page.locator("body")).to_have_attribute("data-realtime", "live")


async def test_threads_in_a_side_panel_live_between_two_people(
    tab: TabFactory, web_live: LiveServer
) -> None:
    alice_account, _, _, general = await alice_and_bob(web_live)
    alice = await tab()
    bob = await tab(width=375, height=740)  # Bob is on a phone: the panel takes the screen
    page = alice.page
    await signed_in(page, "alice@example.com")
    await signed_in(bob.page, "bob@example.com")
    await send(page, "Plan for the launch")
    bob_root = messages(bob.page, "Plan for the launch")
    await expect(bob_root).to_have_count(1)

    # Bob opens the thread: the panel covers his screen and the focus is in its composer.
    await bob_root.get_by_role("button", name="Reply in thread").click()
    bob_panel = bob.page.get_by_role("complementary", name="Thread")
    await expect(bob_panel.locator(".thread-root")).to_contain_text("Plan for the launch")
    await expect(bob_panel.get_by_role("textbox", name="Reply in thread")).to_be_focused()
    box = await bob_panel.bounding_box()
    assert box is not None
    assert (box["x"], box["width"]) == (0, 375)
    assert await bob.page.evaluate("document.documentElement.scrollWidth") <= 375

    # Alice opens it too and replies from the panel's composer (Enter sends).
    root = messages(page, "Plan for the launch")
    await root.hover()
    await root.get_by_role("button", name="Reply in thread").click()
    panel = page.get_by_role("complementary", name="Thread")
    reply_box = panel.get_by_role("textbox", name="Reply in thread")
    await expect(reply_box).to_be_focused()
    await reply_box.fill("I'll write the **release notes**")
    await reply_box.press("Enter")
    await expect(panel.locator("li.reply:not(.pending)", has_text="release notes")).to_have_count(1)

    # Bob sees the reply arrive live in his open panel, with the count.
    await expect(
        bob_panel.locator("li.reply", has_text="I'll write the release notes")
    ).to_have_count(1)
    await expect(bob_panel.locator("li.reply strong")).to_have_text("release notes")
    await expect(bob_panel.locator(".thread-count")).to_have_text("1 reply")
    await bob_panel.get_by_role("textbox", name="Reply in thread").fill("I'll test the build")
    await bob_panel.get_by_role("button", name="Reply", exact=True).click()

    # Alice: Bob's reply live in her panel; the main list shows "2 replies", never the replies.
    await expect(panel.locator("li.reply", has_text="I'll test the build")).to_have_count(1)
    await expect(root.get_by_role("button", name="2 replies")).to_be_visible()
    await expect(messages(page, "release notes")).to_have_count(0)
    await expect(messages(page, "test the build")).to_have_count(0)
    replies = await panel.locator("li.reply").evaluate_all("rows => rows.map(r => r.textContent)")
    assert len(replies) == 2
    assert "release notes" in replies[0]
    assert "test the build" in replies[1]
    await screenshot(page, "thread")

    # Escape closes Bob's panel; the focus goes back to the thread's link under the root.
    await expect(bob_root.get_by_role("button", name="2 replies")).to_have_count(1)
    await bob_panel.get_by_role("textbox", name="Reply in thread").press("Escape")
    await expect(bob_panel).to_have_count(0)
    await expect(bob_root.get_by_role("button", name="2 replies")).to_be_focused()

    # Follow / unfollow (Alice replied, so she follows); the server has it.
    await panel.get_by_role("button", name="Unfollow thread", exact=True).click()
    await expect(panel.get_by_role("button", name="Follow thread", exact=True)).to_be_visible()
    root_id = await root.get_attribute("data-id")
    thread = await web_live.http.get(
        f"/api/v1/conversations/{general}/messages/{root_id}/thread",
        headers=alice_account.headers,
    )
    assert thread.json()["following"] is False
    assert len(thread.json()["replies"]) == 2

    # "2 replies" reopens the thread from the list; the close button closes it.
    await panel.get_by_role("button", name="Close thread").click()
    await expect(panel).to_have_count(0)
    await expect(root.get_by_role("button", name="2 replies")).to_be_focused()
    await root.get_by_role("button", name="2 replies").press("Enter")
    await expect(panel.locator("li.reply")).to_have_count(2)
    await expect(panel.get_by_role("button", name="Follow thread", exact=True)).to_be_visible()

    assert_no_console_errors(alice, bob)


async def test_a_slow_thread_load_does_not_undo_the_follow_of_a_reply(
    tab: TabFactory, web_live: LiveServer
) -> None:
    """The thread's page was asked for before Alice replied and answers after: its
    `following: false` is older than the reply's follow and must not win."""
    await alice_and_bob(web_live)
    alice = await tab()
    page = alice.page
    await signed_in(page, "alice@example.com")
    await send(page, "Slow thread")
    root = messages(page, "Slow thread")
    await expect(root).to_have_count(1)
    answered_late = asyncio.Event()

    async def late(route: Route) -> None:
        response = await route.fetch()
        await reply_sent.wait()
        await route.fulfill(response=response)
        answered_late.set()

    reply_sent = asyncio.Event()
    await page.route(re.compile(r".*/messages/[^/]+/thread(\?.*)?$"), late)
    await root.hover()
    await root.get_by_role("button", name="Reply in thread").click()
    panel = page.get_by_role("complementary", name="Thread")
    reply_box = panel.get_by_role("textbox", name="Reply in thread")
    await reply_box.fill("replying before the thread loaded")
    await reply_box.press("Enter")
    await expect(panel.locator("li.reply:not(.pending)", has_text="replying before")).to_have_count(
        1
    )
    reply_sent.set()
    await asyncio.wait_for(answered_late.wait(), timeout=10)
    await expect(panel.get_by_role("button", name="Unfollow thread", exact=True)).to_be_visible()
    await page.unroute(re.compile(r".*/messages/[^/]+/thread(\?.*)?$"))
    assert_no_console_errors(alice)


async def test_new_line_and_search_with_filters(tab: TabFactory, web_live: LiveServer) -> None:
    alice_account, bob_account, workspace_id, general = await alice_and_bob(web_live)
    design = await web_live.http.post(
        f"/api/v1/workspaces/{workspace_id}/conversations",
        json={"kind": "public", "name": "design"},
        headers=alice_account.headers,
    )
    assert design.status_code == 201, design.text
    design_id = design.json()["id"]
    alice = await tab()
    page = alice.page
    await signed_in(page, "alice@example.com")
    await page.get_by_role("link", name="# design").click()
    await expect(page.get_by_role("heading", name="# design")).to_be_visible()

    # While Alice is in #design, Bob writes in #general: unread, then the "New" line.
    done = await post(web_live, bob_account, general, "Deploy is done")
    notes = await post(web_live, bob_account, general, 'Deploy <b>notes</b> & "quotes"')
    await post(web_live, bob_account, general, "Rollback plan ready", root=done["id"])
    await post(web_live, alice_account, design_id, "Deploy checklist for design")
    general_link = page.locator(f'a[data-conversation-id="{general}"]')
    await expect(general_link.locator(".badge.unread")).to_have_text("2")

    def read_to_notes(response: Response) -> bool:
        request = response.request
        return request.url.endswith(f"/conversations/{general}/read") and (
            json.loads(request.post_data or "{}").get("seq", 0) >= notes["seq"]
        )

    async with page.expect_response(read_to_notes) as read:
        await general_link.click()
        divider = page.get_by_role("separator", name="New messages")
        await expect(divider).to_be_visible()
        await expect(divider).to_have_text("New")
        after = page.locator("ol.messages > li.new-divider + li.message")
        await expect(after).to_contain_text("Deploy is done")
        await expect(general_link.locator(".badge")).to_have_count(0)
    assert (await read.value).ok
    # Read now: coming back later shows no line, and the server has the read position.
    await page.get_by_role("link", name="# design").click()
    await expect(page.get_by_role("heading", name="# design")).to_be_visible()
    await general_link.click()
    await expect(messages(page, "Deploy is done")).to_have_count(1)
    await expect(page.locator("li.new-divider")).to_have_count(0)
    listed = await web_live.http.get(
        f"/api/v1/workspaces/{workspace_id}/conversations", headers=alice_account.headers
    )
    assert next(c for c in listed.json() if c["id"] == general)["unread_count"] == 0

    # The search box in the top bar: every "deploy", newest first, the word highlighted.
    search_box = page.get_by_role("searchbox", name="Search messages")
    await search_box.fill("deploy")
    await search_box.press("Enter")
    await expect(page).to_have_url(re.compile(r"/search\?q=deploy$"))
    results = page.locator("li.search-result")
    await expect(results).to_have_count(3)
    await expect(page.locator(".search-status")).to_have_text("3 results")
    await expect(results.first).to_contain_text("Deploy checklist for design")
    await expect(results.locator("mark").first).to_have_text("Deploy")
    # Markup in a message is text in its snippet.
    hostile = results.filter(has_text="notes")
    await expect(hostile.locator(".snippet")).to_contain_text('<b>notes</b> & "quotes"')
    assert await hostile.locator(".snippet b").count() == 0

    # Filters: in #general, sent by Bob, dates; then only threads.
    await page.get_by_label("In", exact=True).select_option(label="# general")
    await page.get_by_label("Sent by").select_option(label="Bob")
    today = datetime.now(UTC).date()
    await page.get_by_label("On or after").fill(today.isoformat())
    await page.get_by_role("button", name="Search", exact=True).last.click()
    await expect(page).to_have_url(re.compile(rf"in={general}"))
    await expect(results).to_have_count(2)
    await expect(results.filter(has_text="Deploy checklist")).to_have_count(0)
    await screenshot(page, "search")
    await page.get_by_label("On or before").fill((today - timedelta(days=1)).isoformat())
    await page.get_by_label("Words").press("Enter")
    await expect(page.locator(".search-status")).to_have_text("No messages found.")
    await page.get_by_role("button", name="Clear filters").click()
    await page.get_by_label("Words").fill("rollback")
    await page.get_by_label("Threads only").check()
    await page.get_by_label("Words").press("Enter")
    await expect(results).to_have_count(1)
    await expect(results.first).to_contain_text("in a thread")

    # A reply opens its thread, highlighted; a message opens its conversation at the message.
    await results.first.get_by_role("link").click()
    panel = page.get_by_role("complementary", name="Thread")
    await expect(panel.locator(".thread-root")).to_contain_text("Deploy is done")
    await expect(panel.locator("li.reply.target")).to_contain_text("Rollback plan ready")
    await page.go_back()
    await expect(page.get_by_label("Words")).to_have_value("rollback")
    await page.get_by_label("Words").fill("checklist")
    await page.get_by_label("Threads only").uncheck()
    await page.get_by_label("Words").press("Enter")
    checklist = results.filter(has_text="Deploy checklist for design")
    await expect(checklist).to_have_count(1)
    await expect(results).to_have_count(1)
    await checklist.get_by_role("link").press("Enter")
    await expect(page).to_have_url(re.compile(rf"/c/{design_id}$"))
    target = messages(page, "Deploy checklist for design")
    await expect(target).to_have_class(re.compile(r"\btarget\b"))
    await expect(target).to_be_focused()

    assert_no_console_errors(alice)
