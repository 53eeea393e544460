"""Accounts and a workspace made through the SDK itself."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from tests.support.helpers import eventually
from tidings.client import TidingsClient
from tidings.client.models import ConversationOut, UserOut, WorkspaceOut

PASSWORD = "correct horse battery staple"
SdkFactory = Callable[..., TidingsClient]
_emails = itertools.count(1)


def new_email(name: str = "user") -> str:
    return f"{name}.sdk{next(_emails)}@example.com"


@dataclass
class Person:
    client: TidingsClient
    user: UserOut


@dataclass
class Team:
    ada: Person
    bob: Person
    workspace: WorkspaceOut
    general: ConversationOut


async def person(sdk: SdkFactory, name: str, **options: object) -> Person:
    client = sdk(**options)
    registered = await client.register(new_email(name), PASSWORD, name.title())
    return Person(client, registered.user)


async def team(sdk: SdkFactory, **options: object) -> Team:
    """Ada (owner) and Bob (member) of one workspace, both in #general."""
    ada = await person(sdk, "ada", **options)
    workspace = await ada.client.create_workspace("Acme")
    invitation = await ada.client.create_invitation(workspace.id)
    bob = await person(sdk, "bob", **options)
    await bob.client.accept_invitation(invitation.token)

    async def general_with_bob() -> ConversationOut | None:
        found = [c for c in await bob.client.conversations(workspace.id) if c.is_default]
        return found[0] if found else None

    general = await eventually(general_with_bob)
    assert general is not None
    return Team(ada, bob, workspace, general)


class GatedTransport(httpx.AsyncBaseTransport):
    """The real HTTP transport, except that realtime ticket requests wait while the gate is
    closed: a client that cannot reconnect until the test says so."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/realtime/tickets") and not self.gate.is_set():
            self.held += 1
            await self.gate.wait()
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
