"""Workspace settings in a real browser: members and roles, invitations through the invite link
page, API keys used with the SDK until revoked, the audit log, and what a plain member sees."""

from __future__ import annotations

import contextlib
import re

import pytest
from playwright.async_api import Locator, Page, expect

from tests.realtime.conftest import LiveServer
from tests.support.users import PASSWORD, Account
from tests.web.conftest import Tab, TabFactory, screenshot
from tests.web.test_web import assert_no_console_errors, sign_in
from tidings.client import SendClient, TidingsError

pytestmark = [pytest.mark.profiles("embedded"), pytest.mark.xdist_group("browser")]

# Chromium reports every non-2xx fetch as a console error ("Failed to load resource: …
# status of 409"). A test that makes the server refuse on purpose allows exactly that line for
# exactly that status; any other console or page error still fails it.
REFUSED = re.compile(
    r"^console: Failed to load resource: the server responded with a status of (\d+)"
)


async def register(live: LiveServer, email: str, name: str) -> Account:
    response = await live.http.post(
        "/api/v1/auth/register",
        json={"email": email, "password": PASSWORD, "display_name": name},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return Account(
        id=body["user"]["id"],
        email=email,
        access_token=body["tokens"]["access_token"],
        refresh_token=body["tokens"]["refresh_token"],
        session_id=body["tokens"]["session_id"],
    )


async def owner_with_workspace(live: LiveServer) -> tuple[Account, str]:
    owner = await register(live, "alice@example.com", "Alice")
    created = await live.http.post(
        "/api/v1/workspaces", json={"name": "Acme"}, headers=owner.headers
    )
    assert created.status_code == 201, created.text
    return owner, created.json()["id"]


async def open_settings(page: Page, section: str) -> None:
    """From the chat, through the top bar and the section navigation (no reload)."""
    await page.get_by_role("link", name="Workspace settings").click()
    nav = page.get_by_role("navigation", name="Workspace settings")
    await nav.get_by_role("link", name=section, exact=True).click()
    await expect(nav.get_by_role("link", name=section, exact=True)).to_have_attribute(
        "aria-current", "page"
    )


async def section(page: Page, name: str) -> None:
    nav = page.get_by_role("navigation", name="Workspace settings")
    await nav.get_by_role("link", name=name, exact=True).click()
    await expect(nav.get_by_role("link", name=name, exact=True)).to_have_attribute(
        "aria-current", "page"
    )


async def until_listed(page: Page, rows: Locator) -> None:
    """Audit entries are written by the outbox, a moment after the change: ask again
    ("Apply filters") until the entry is there. Every wait is an explicit condition."""
    for _ in range(30):
        with contextlib.suppress(AssertionError):
            await expect(rows.first).to_be_visible(timeout=1_000)
            return
        await page.get_by_role("button", name="Apply filters").click()
    await expect(rows.first).to_be_visible()


def assert_only_refused(tab: Tab, *statuses: int) -> None:
    unexpected = [
        error
        for error in tab.errors
        if not ((match := REFUSED.match(error)) and int(match.group(1)) in statuses)
    ]
    assert unexpected == []


async def test_api_key_made_in_the_browser_works_with_the_sdk_until_revoked(
    tab: TabFactory, web_live: LiveServer
) -> None:
    owner, workspace_id = await owner_with_workspace(web_live)
    # 50 invitations, so the audit log has more than one page (50 entries a page).
    for _ in range(50):
        invited = await web_live.http.post(
            f"/api/v1/workspaces/{workspace_id}/invitations", json={}, headers=owner.headers
        )
        assert invited.status_code == 201, invited.text
    alice = await tab()
    page = alice.page
    await sign_in(page, "alice@example.com")
    await expect(page.get_by_role("heading", name="# general")).to_be_visible()
    await open_settings(page, "API keys")
    await expect(page.get_by_text("No API keys yet.")).to_be_visible()

    # Create: name and scopes (messages:send is ticked by default, messages:read added).
    await page.get_by_label("Key name").fill("billing mailer")
    await page.get_by_label("messages:read").check()
    await page.get_by_role("button", name="Create API key").click()
    secret_box = page.get_by_label("API key secret")
    await expect(secret_box).to_be_visible()
    await expect(page.get_by_text("you won't see this again")).to_be_visible()
    secret = await secret_box.input_value()
    assert secret.startswith("tdk_")
    row = page.locator("tbody tr", has_text="billing mailer")
    await expect(row).to_contain_text("messages:read, messages:send")
    await expect(row).to_contain_text("active")
    # The list shows the public prefix only; nothing is kept in the browser's storage.
    assert secret not in await page.locator("table").inner_text()
    stored = await page.evaluate("JSON.stringify(localStorage) + JSON.stringify(sessionStorage)")
    assert secret not in stored
    await screenshot(page, "admin-api-keys")

    # The SDK, authenticated with the key read from the page, reads the delivery log.
    async with SendClient(web_live.base_url, api_key=secret) as sdk:
        log = await sdk.list(limit=5)
        assert log.items == []

    # Done: the secret leaves the page.
    await page.get_by_role("button", name="Done, I have stored it").click()
    await expect(secret_box).to_have_count(0)
    assert secret not in await page.content()

    # Revoke (asked once): the SDK's next call is refused with 401.
    await row.get_by_role("button", name="Revoke billing mailer").click()
    await row.get_by_role("button", name="Revoke key").click()
    await expect(row).to_contain_text("revoked")
    await expect(row.get_by_role("button", name="Revoke billing mailer")).to_have_count(0)
    async with SendClient(web_live.base_url, api_key=secret) as sdk:
        with pytest.raises(TidingsError) as refused:
            await sdk.list(limit=5)
    assert refused.value.status == 401

    # The audit log shows who created the key, by name, with its scopes.
    await section(page, "Audit log")
    created = page.locator('tbody tr[data-action="API_KEY_CREATED"]')
    await until_listed(page, created)
    await expect(created).to_have_count(1)
    await expect(created).to_contain_text("Alice")
    await expect(created).to_contain_text("API key created")
    await expect(created).to_contain_text("API key “billing mailer”")
    await expect(created).to_contain_text("scopes")
    # Filter by action: only key creations remain.
    await page.get_by_label("Action").select_option(label="API key created")
    await page.get_by_role("button", name="Apply filters").click()
    await expect(page.locator("tbody tr")).to_have_count(1)
    await expect(page.get_by_role("status").filter(has_text="1 entry")).to_be_visible()
    await page.get_by_role("button", name="Clear filters").click()
    await until_listed(page, page.locator('tbody tr[data-action="API_KEY_REVOKED"]'))
    await screenshot(page, "admin-audit")
    # Paging: the 50 newest, then "Load more" brings the rest and goes away; the page then
    # holds exactly the API's entries, in its order, each once.
    audit = await web_live.http.get(
        f"/api/v1/workspaces/{workspace_id}/audit", params={"limit": 200}, headers=owner.headers
    )
    expected = [entry["id"] for entry in audit.json()["items"]]
    assert len(expected) > 50
    entries = page.locator("tbody tr")
    await expect(entries).to_have_count(50)
    await page.get_by_role("button", name="Load more").click()
    await expect(entries).to_have_count(len(expected))
    await expect(page.get_by_role("button", name="Load more")).to_be_hidden()
    shown = await entries.evaluate_all("rows => rows.map(row => row.dataset.entryId)")
    assert shown == expected
    await expect(page.locator('tbody tr[data-action="MEMBER_INVITED"]')).to_have_count(50)

    keys = await web_live.http.get(
        f"/api/v1/workspaces/{workspace_id}/api-keys", headers=owner.headers
    )
    assert [key["revoked_at"] is not None for key in keys.json()] == [True]
    assert_no_console_errors(alice)


async def test_invite_link_members_roles_and_what_a_plain_member_sees(
    tab: TabFactory, web_live: LiveServer
) -> None:
    owner, workspace_id = await owner_with_workspace(web_live)
    alice = await tab()
    page = alice.page
    await alice.context.grant_permissions(["clipboard-read", "clipboard-write"])
    await sign_in(page, "alice@example.com")
    await expect(page.get_by_role("heading", name="# general")).to_be_visible()
    await open_settings(page, "Invitations")
    await expect(page.get_by_text("No open invitations.")).to_be_visible()

    # An invitation for anyone, as a member; the link is shown once, and Copy copies it.
    await page.get_by_label("Role").select_option("member")
    await page.get_by_role("button", name="Create invitation").click()
    link_box = page.get_by_label("Invite link")
    await expect(link_box).to_be_visible()
    link = await link_box.input_value()
    assert re.fullmatch(rf"{re.escape(web_live.base_url)}/invite#tdi_\S+", link), link
    await page.get_by_role("button", name="Copy", exact=True).click()
    await expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert await page.evaluate("navigator.clipboard.readText()") == link
    await expect(page.locator("tbody tr")).to_have_count(1)

    # A second invitation, bound to an email, revoked (asked once).
    await page.get_by_label("Email (optional)").fill("carol@example.com")
    await page.get_by_role("button", name="Create invitation").click()
    carol_row = page.locator("tbody tr", has_text="carol@example.com")
    await expect(carol_row).to_have_count(1)
    # With the keyboard: Enter asks, Escape takes it back, Enter asks again, Enter confirms.
    revoke = carol_row.get_by_role("button", name=re.compile("^Revoke the member invitation"))
    confirm = carol_row.get_by_role("button", name="Revoke invitation")
    await revoke.focus()
    await page.keyboard.press("Enter")
    await expect(confirm).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(revoke).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(confirm).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(carol_row).to_have_count(0)
    await expect(page.locator("tbody tr")).to_have_count(1)

    # Bob, on a phone, opens the link: sign in or create an account, then he is in.
    bob = await tab(width=375, height=740)
    bob_page = bob.page
    await bob_page.goto(link)
    await expect(bob_page.get_by_role("heading", name="Sign in to Tidings")).to_be_visible()
    await expect(bob_page.get_by_text("You have been invited to a workspace")).to_be_visible()
    await bob_page.get_by_role("link", name="Create an account").click()
    await expect(bob_page.get_by_role("heading", name="Create your account")).to_be_visible()
    await expect(bob_page.get_by_text("You have been invited to a workspace")).to_be_visible()
    await bob_page.get_by_label("Display name").fill("Bob")
    await bob_page.get_by_label("Email").fill("bob@example.com")
    await bob_page.get_by_label("Password").fill(PASSWORD)
    await bob_page.get_by_role("button", name="Create account").click()
    await expect(bob_page).to_have_url(re.compile(rf"/w/{workspace_id}"))
    await expect(bob_page.get_by_text("You joined Acme.")).to_be_visible()
    # (At 375 px the workspace opens on its list or on #general: the switcher is in both.)
    await expect(bob_page.get_by_role("combobox", name="Workspace")).to_contain_text("Acme")

    # The invitation is used: no longer open. Bob is in Members, as a member.
    await page.reload()
    await expect(page.get_by_text("No open invitations.")).to_be_visible()
    await section(page, "Members")
    bob_row = page.locator("tbody tr", has_text="Bob")
    await expect(bob_row).to_contain_text("bob@example.com")
    role_of_bob = page.get_by_label("Role of Bob", exact=True)
    await expect(role_of_bob).to_have_value("member")

    # Bob, a plain member: Members read-only, the other sections a polite denial.
    await bob_page.goto(f"/w/{workspace_id}/admin/members")
    await expect(bob_page.locator("tbody tr")).to_have_count(2)
    await expect(bob_page.get_by_text("Only owners and admins can change roles")).to_be_visible()
    await expect(bob_page.locator("tbody select")).to_have_count(0)
    await expect(bob_page.get_by_role("button", name=re.compile("^Remove"))).to_have_count(0)
    for name in ("Invitations", "API keys", "Audit log"):
        await section(bob_page, name)
        await expect(
            bob_page.get_by_role("status").filter(has_text="Not available to you")
        ).to_be_visible()
        await expect(bob_page.get_by_text("Your role in this workspace is member.")).to_be_visible()
        assert await bob_page.locator("form").count() == 0
        assert await bob_page.evaluate("document.documentElement.scrollWidth") <= 375
    # The server agrees with what the page shows.
    login = await web_live.http.post(
        "/api/v1/auth/login", json={"email": "bob@example.com", "password": PASSWORD}
    )
    bob_headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    for path in ("invitations", "api-keys", "audit"):
        refused = await web_live.http.get(
            f"/api/v1/workspaces/{workspace_id}/{path}", headers=bob_headers
        )
        assert refused.status_code == 403, (path, refused.text)

    # The owner makes Bob an admin.
    save_bob = page.get_by_role("button", name="Save the role of Bob")
    await expect(save_bob).to_be_hidden()
    await role_of_bob.select_option("admin")
    await save_bob.click()
    await expect(page.get_by_text("Bob is now admin.")).to_be_visible()
    members = await web_live.http.get(
        f"/api/v1/workspaces/{workspace_id}/members", headers=owner.headers
    )
    assert {m["display_name"]: m["role"] for m in members.json()} == {
        "Alice": "owner",
        "Bob": "admin",
    }
    await screenshot(page, "admin-members")

    # The last owner cannot step down: the server's detail is shown, the select goes back.
    await page.get_by_label("Role of Alice", exact=True).select_option("member")
    await page.get_by_role("button", name="Save the role of Alice").click()
    await expect(page.get_by_role("alert")).to_have_text(
        "A workspace needs an owner: make someone else owner first."
    )
    await expect(page.get_by_label("Role of Alice", exact=True)).to_have_value("owner")

    # Now an admin, Bob manages members (owners aside) and opens the API keys.
    await section(bob_page, "Members")
    await expect(bob_page.get_by_label("Role of Bob", exact=True)).to_have_value("admin")
    await expect(bob_page.get_by_label("Role of Alice", exact=True)).to_have_count(0)
    await section(bob_page, "API keys")
    await expect(bob_page.get_by_role("button", name="Create API key")).to_be_visible()
    assert await bob_page.evaluate("document.documentElement.scrollWidth") <= 375
    await section(bob_page, "Audit log")
    await expect(bob_page.locator('tbody tr[data-action="MEMBER_JOINED"]').first).to_be_visible()
    assert await bob_page.evaluate("document.documentElement.scrollWidth") <= 375

    # The owner removes Bob (asked once); he disappears from the list.
    await bob_row.get_by_role("button", name="Remove Bob").click()
    await bob_row.get_by_role("button", name="Remove member").click()
    await expect(bob_row).to_have_count(0)
    await expect(page.locator("tbody tr")).to_have_count(1)

    assert_only_refused(alice, 409)
    assert_no_console_errors(bob)
