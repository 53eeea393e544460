"""The web app in a real browser: first run, sign in, workspaces, channels and live chat
between two people (typing, presence, edits, reactions, deletes), a reconnect that loses and
duplicates nothing, sessions, history on scroll, a phone-sized screen and no console errors."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Locator, Page, expect

from tests.realtime.conftest import LiveServer
from tests.support.users import PASSWORD, Account
from tests.web.conftest import Tab, TabFactory, screenshot

pytestmark = [pytest.mark.profiles("embedded"), pytest.mark.xdist_group("browser")]


async def login_api(live: LiveServer, email: str) -> Account:
    response = await live.http.post(
        "/api/v1/auth/login", json={"email": email, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    tokens = response.json()
    me = await live.http.get(
        "/api/v1/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    return Account(
        id=me.json()["id"],
        email=email,
        access_token=tokens["access_token"],
        refresh_token=tokens["refresh_token"],
        session_id=tokens["session_id"],
    )


async def invite_new_member(live: LiveServer, owner: Account, workspace_id: str) -> Account:
    """A second person, registered and joined through the API (faster than the screens)."""
    registered = await live.http.post(
        "/api/v1/auth/register",
        json={"email": "bob@example.com", "password": PASSWORD, "display_name": "Bob"},
    )
    assert registered.status_code == 201, registered.text
    invited = await live.http.post(
        f"/api/v1/workspaces/{workspace_id}/invitations",
        json={"role": "member"},
        headers=owner.headers,
    )
    assert invited.status_code == 201, invited.text
    body = registered.json()
    accepted = await live.http.post(
        "/api/v1/invitations/accept",
        json={"token": invited.json()["token"]},
        headers={"Authorization": f"Bearer {body['tokens']['access_token']}"},
    )
    assert accepted.status_code == 200, accepted.text
    return Account(
        id=body["user"]["id"],
        email="bob@example.com",
        access_token=body["tokens"]["access_token"],
        refresh_token=body["tokens"]["refresh_token"],
        session_id=body["tokens"]["session_id"],
    )


async def sign_in(page: Page, email: str) -> None:
    await page.goto("/")
    await expect(page.get_by_role("heading", name="Sign in to Tidings")).to_be_visible()
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()


def messages(page: Page, text: str | None = None) -> Locator:
    rows = page.locator("ol.messages > li.message:not(.pending)")
    return rows.filter(has_text=text) if text is not None else rows


async def send(page: Page, text: str, shown: str | None = None) -> None:
    """Send with the composer (Enter) and wait for the message (its rendered text `shown`)."""
    composer = page.get_by_role("textbox", name=re.compile(r"^Message "))
    await composer.fill(text)
    await composer.press("Enter")
    await expect(messages(page, shown or text)).to_have_count(1)


def assert_no_console_errors(*tabs: Tab) -> None:
    errors = [error for tab in tabs for error in tab.errors]
    assert errors == []


async def test_first_run_to_live_chat_between_two_people(
    tab: TabFactory, web_live: LiveServer
) -> None:
    alice = await tab()
    page = alice.page

    # First run: no account yet, so the welcome screen offers to create the admin account.
    await page.goto("/")
    await expect(page).to_have_url(re.compile(r"/welcome$"))
    await expect(page.get_by_role("heading", name="Welcome to Tidings")).to_be_visible()
    await screenshot(page, "first-run")
    await page.get_by_label("Display name").fill("Alice")
    await page.get_by_label("Email").fill("alice@example.com")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Create account").click()

    # No workspace yet: create one; it opens on #general.
    await expect(page.get_by_role("heading", name="Create a workspace")).to_be_visible()
    await page.get_by_label("Workspace name").fill("Acme")
    await page.get_by_role("button", name="Create workspace").click()
    await expect(page.get_by_role("heading", name="# general")).to_be_visible()
    await expect(page.locator("body")).to_have_attribute("data-realtime", "live")

    # A channel.
    await page.get_by_role("button", name="Create channel").click()
    await page.get_by_label("Channel name").fill("design")
    await page.get_by_role("button", name="Create", exact=True).click()
    await expect(page.get_by_role("heading", name="# design")).to_be_visible()
    await send(page, "Design reviews go **here**", "Design reviews go here")
    await page.get_by_role("link", name="# general").click()
    await expect(page.get_by_role("heading", name="# general")).to_be_visible()

    # Bob joins through the API and signs in with the form in a second browser context.
    owner = await login_api(web_live, "alice@example.com")
    workspaces = await web_live.http.get("/api/v1/workspaces", headers=owner.headers)
    workspace_id = workspaces.json()[0]["id"]
    bob_account = await invite_new_member(web_live, owner, workspace_id)
    bob = await tab()
    await sign_in(bob.page, "bob@example.com")
    await expect(bob.page.get_by_role("heading", name="# general")).to_be_visible()
    await expect(bob.page.locator("body")).to_have_attribute("data-realtime", "live")

    # Presence: Alice sees Bob online (he joined after her page loaded), and Bob sees Alice.
    bob_in_alice = page.locator(f'button[data-user-id="{bob_account.id}"]')
    await expect(bob_in_alice.locator(".presence")).to_have_attribute("data-presence", "online")
    alice_in_bob = bob.page.locator(f'button[data-user-id="{owner.id}"]')
    await expect(alice_in_bob.locator(".presence")).to_have_attribute("data-presence", "online")

    # Typing, then the message, live on the other side.
    composer = page.get_by_role("textbox", name="Message # general")
    await composer.press_sequentially("Hello Bob")
    await expect(bob.page.locator(".typing")).to_have_text("Alice is typing…")
    await composer.press("Enter")
    await expect(messages(bob.page, "Hello Bob")).to_have_count(1)
    await expect(bob.page.locator(".typing")).to_have_text("")
    await send(bob.page, "Hi Alice, *welcome* to `Tidings`", "Hi Alice, welcome to Tidings")
    reply = messages(page, "Hi Alice")
    await expect(reply).to_have_count(1)
    await expect(reply.locator("em")).to_have_text("welcome")
    await expect(reply.locator("code")).to_have_text("Tidings")

    # Markdown is safe: markup in a message stays text, unsafe links stay text.
    await send(page, 'Try <img src=x onerror="window.pwned=1"> and [this](javascript:alert(1))')
    hostile = messages(bob.page, "Try <img src=x")
    await expect(hostile).to_have_count(1)
    assert await hostile.locator("img").count() == 0
    assert await hostile.locator("a").count() == 0
    assert await bob.page.evaluate("window.pwned") is None

    # Edit and delete own messages, react to someone else's, all seen live.
    own_id = await messages(page, "Hello Bob").get_attribute("data-id")
    own = page.locator(f'li.message[data-id="{own_id}"]')
    await own.hover()
    await own.get_by_role("button", name="Edit").click()
    editor = own.get_by_role("textbox", name="Edit message")
    await editor.fill("Hello Bob, edited")
    await editor.press("Enter")
    await expect(messages(bob.page, "Hello Bob, edited").locator(".edited")).to_be_visible()
    await reply.hover()
    await reply.get_by_role("button", name="Add reaction").click()
    await reply.get_by_role("button", name="React with 👍").click()
    await expect(messages(bob.page, "Hi Alice").get_by_role("button", name="👍 1")).to_be_visible()
    doomed_id = await messages(page, "Try <img").get_attribute("data-id")
    doomed = page.locator(f'li.message[data-id="{doomed_id}"]')
    await doomed.hover()
    await doomed.get_by_role("button", name="Delete", exact=True).click()
    await doomed.get_by_role("button", name="Delete message").click()
    await expect(bob.page.locator(".tombstone")).to_have_count(1)
    await screenshot(page, "chat")

    # A forced reconnect: Bob goes offline, Alice writes, Bob comes back and sees every
    # message exactly once (resumed from his last positions).
    reconnects = int(await bob.page.locator("body").get_attribute("data-reconnects") or 0)
    await bob.context.set_offline(True)
    await expect(bob.page.locator("body")).to_have_attribute("data-realtime", "offline")
    missed = [f"While you were away {n}" for n in range(1, 4)]
    for text in missed:
        await send(page, text)
    await bob.context.set_offline(False)
    await expect(bob.page.locator("body")).to_have_attribute("data-realtime", "live")
    await expect(bob.page.locator("body")).to_have_attribute("data-reconnects", str(reconnects + 1))
    for text in missed:
        await expect(messages(bob.page, text)).to_have_count(1)
    await send(bob.page, "Back online")
    await expect(messages(page, "Back online")).to_have_count(1)
    alice_ids = await messages(page).evaluate_all("rows => rows.map(r => r.dataset.id)")
    bob_ids = await messages(bob.page).evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert bob_ids == alice_ids
    assert len(set(bob_ids)) == len(bob_ids)

    # A direct message: opened from the people list, unread badge on the other side.
    await bob_in_alice.click()
    await expect(page.get_by_role("heading", name="Bob")).to_be_visible()
    await expect(page.locator(".header-presence .presence")).to_have_attribute(
        "data-presence", "online"
    )
    await send(page, "Psst, a DM")
    await expect(alice_in_bob.locator(".badge.unread")).to_have_text("1")
    await screenshot(bob.page, "unread-badge")
    await alice_in_bob.click()
    await expect(messages(bob.page, "Psst, a DM")).to_have_count(1)
    await expect(alice_in_bob.locator(".badge")).to_have_count(0)

    assert_no_console_errors(alice, bob)


async def test_sessions_history_and_phone_width(tab: TabFactory, web_live: LiveServer) -> None:
    # An account and a busy channel made through the API.
    registered = await web_live.http.post(
        "/api/v1/auth/register",
        json={"email": "carol@example.com", "password": PASSWORD, "display_name": "Carol"},
    )
    assert registered.status_code == 201, registered.text
    headers = {"Authorization": f"Bearer {registered.json()['tokens']['access_token']}"}
    created = await web_live.http.post("/api/v1/workspaces", json={"name": "Busy"}, headers=headers)
    assert created.status_code == 201, created.text
    conversations = await web_live.http.get(
        f"/api/v1/workspaces/{created.json()['id']}/conversations", headers=headers
    )
    general = conversations.json()[0]["id"]
    for n in range(1, 81):
        sent = await web_live.http.post(
            f"/api/v1/conversations/{general}/messages",
            json={"body": f"Backlog message {n}"},
            headers=headers,
        )
        assert sent.status_code == 201, sent.text

    carol = await tab(width=375, height=740)
    page = carol.page
    await sign_in(page, "carol@example.com")
    await expect(page.get_by_role("heading", name="# general")).to_be_visible()
    await expect(messages(page, "Backlog message 80")).to_be_visible()
    # The latest page only (50 of 81); scrolling to the top loads the rest (keyset `before`).
    first = page.locator("ol.messages .text").filter(has_text=re.compile(r"^Backlog message 1$"))
    await expect(messages(page)).to_have_count(50)
    await expect(first).to_have_count(0)
    assert await page.evaluate("document.documentElement.scrollWidth") <= 375
    await screenshot(page, "phone")
    await page.locator("ol.messages").evaluate("list => { list.scrollTop = 0; }")
    await expect(messages(page)).to_have_count(81)  # the welcome message and the 80
    await expect(first).to_have_count(1)
    await expect(page.get_by_role("button", name="Load older messages")).to_be_hidden()
    seqs = await messages(page).evaluate_all("rows => rows.map(r => Number(r.dataset.seq))")
    assert seqs == list(range(1, 82))

    # Phone: back to the list, then the sessions page (this browser and the API's session).
    await page.get_by_role("link", name="← Conversations").click()
    await expect(page.get_by_role("navigation", name="Conversations")).to_be_visible()
    await page.get_by_role("link", name="Sessions").click()
    await expect(page.get_by_role("heading", name="Your sessions")).to_be_visible()
    sessions = page.locator("li.session")
    await expect(sessions).to_have_count(2)
    await screenshot(page, "sessions")
    await sessions.filter(has_not_text="this browser").get_by_role("button", name="Revoke").click()
    await expect(sessions).to_have_count(1)
    revoked = await web_live.http.get("/api/v1/me", headers=headers)
    assert revoked.status_code == 401

    # Sign out ends this session; a reload stays signed out.
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in to Tidings")).to_be_visible()
    await page.reload()
    await expect(page.get_by_role("heading", name="Sign in to Tidings")).to_be_visible()

    assert_no_console_errors(carol)


async def test_the_api_and_system_paths_are_untouched(web_live: LiveServer) -> None:
    http = web_live.http
    shell = await http.get("/")
    assert shell.status_code == 200
    assert shell.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in shell.headers["content-security-policy"]
    assert '"first_run": true' in shell.text
    assert (await http.get("/w/anything/c/else")).status_code == 200
    assert (await http.get("/web/app.js")).headers["content-type"].startswith("text/javascript")
    missing = await http.get("/api/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    assert (await http.get("/openapi.json")).status_code == 200
    paths = (await http.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if not p.startswith(("/api/", "/healthz", "/readyz", "/metrics"))]
