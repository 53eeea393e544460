"""Creating a workspace: a saga over the identity and messaging domains.

Each step commits on its own (each domain owns its transactions); when a step fails, the steps
that already committed are compensated in reverse order, so a failed creation leaves no
workspace, no `#general` and no membership behind. Compensation failures are logged and the
original error is raised.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tidings.identity.accounts import ClientInfo
from tidings.identity.component import Identity
from tidings.identity.models import Workspace
from tidings.identity.policy import UserPrincipal
from tidings.infra.logging import get_logger
from tidings.messaging.component import Messaging

_log = get_logger(__name__)


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[], Awaitable[None]]
    compensate: Callable[[], Awaitable[None]] | None = None


async def run_saga(name: str, steps: list[Step]) -> None:
    done: list[Step] = []
    for step in steps:
        try:
            await step.run()
        except BaseException:
            _log.warning("saga_step_failed", saga=name, step=step.name, exc_info=True)
            for finished in reversed(done):
                if finished.compensate is None:
                    continue
                try:
                    await finished.compensate()
                except Exception:
                    _log.exception("saga_compensation_failed", saga=name, step=finished.name)
            raise
        done.append(step)


class WorkspaceCreation:
    """workspace → #general → creator as owner → welcome message."""

    def __init__(self, identity: Identity, messaging: Messaging) -> None:
        self._identity = identity
        self._messaging = messaging

    async def run(self, user: UserPrincipal, name: str, client: ClientInfo) -> Workspace:
        workspace: Workspace | None = None
        general: uuid.UUID | None = None

        async def create_workspace() -> None:
            nonlocal workspace
            workspace = await self._identity.workspaces.create_record(user, name, client)

        async def discard_workspace() -> None:
            assert workspace is not None  # noqa: S101 - compensations follow their step
            await self._identity.workspaces.discard(workspace.id, user, client)

        async def create_general() -> None:
            nonlocal general
            assert workspace is not None  # noqa: S101
            general = await self._messaging.conversations.create_default(workspace.id, user.user_id)

        async def discard_general() -> None:
            assert general is not None  # noqa: S101
            await self._messaging.conversations.discard(general)

        async def add_owner() -> None:
            assert workspace is not None  # noqa: S101
            await self._identity.workspaces.add_owner(workspace.id, user, client)

        async def remove_owner() -> None:
            assert workspace is not None  # noqa: S101
            await self._identity.workspaces.remove_owner(workspace.id, user)

        async def welcome() -> None:
            assert workspace is not None  # noqa: S101
            assert general is not None  # noqa: S101
            await self._messaging.conversations.add_members(user, general, [user.user_id])
            await self._messaging.messages.post_system(
                general, f"Welcome to {workspace.name}! This is #general, for everyone here."
            )

        steps = [
            Step("workspace", create_workspace, discard_workspace),
            Step("general", create_general, discard_general),
            Step("owner", add_owner, remove_owner),
            Step("welcome", welcome),
        ]
        await run_saga("workspace_creation", steps)
        assert workspace is not None  # noqa: S101
        return workspace
