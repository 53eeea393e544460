"""Creating a workspace: a saga over the identity and messaging domains.

Each step commits on its own (each domain owns its transactions); when a step fails, it and the
steps before it are compensated in reverse order — the failing one too, since it may have failed
after its commit (ids are chosen before the steps run, and compensations are idempotent). So a
failed creation leaves no workspace, no `#general` and no membership behind. Compensation
failures are logged and the original error is raised.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tidings.db.base import new_id
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
    started: list[Step] = []
    for step in steps:
        started.append(step)
        try:
            await step.run()
        except BaseException:
            _log.warning("saga_step_failed", saga=name, step=step.name, exc_info=True)
            for undo in reversed(started):
                if undo.compensate is None:
                    continue
                try:
                    await undo.compensate()
                except Exception:
                    _log.exception("saga_compensation_failed", saga=name, step=undo.name)
            raise


class WorkspaceCreation:
    """workspace → #general → creator as owner → welcome message."""

    def __init__(self, identity: Identity, messaging: Messaging) -> None:
        self._identity = identity
        self._messaging = messaging

    async def run(self, user: UserPrincipal, name: str, client: ClientInfo) -> Workspace:
        workspace_id, general = new_id(), new_id()
        workspace: Workspace | None = None

        async def create_workspace() -> None:
            nonlocal workspace
            workspace = await self._identity.workspaces.create_record(
                user, name, client, workspace_id=workspace_id
            )

        async def discard_workspace() -> None:
            await self._identity.workspaces.discard(workspace_id, user, client)

        async def create_general() -> None:
            await self._messaging.conversations.create_default(
                workspace_id, user.user_id, conversation_id=general
            )

        async def discard_general() -> None:
            await self._messaging.conversations.discard(general)

        async def add_owner() -> None:
            await self._identity.workspaces.add_owner(workspace_id, user, client)

        async def remove_owner() -> None:
            await self._identity.workspaces.remove_owner(workspace_id, user)

        async def welcome() -> None:
            assert workspace is not None  # noqa: S101 - the first step set it
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
