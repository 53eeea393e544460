"""`POST /api/v1/workspaces`: the workspace-creation saga behind one request."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from tidings.identity.deps import ClientDep, UserDep
from tidings.identity.roles import Role
from tidings.identity.routes import workspace_out
from tidings.identity.schemas import WorkspaceIn, WorkspaceOut
from tidings.identity.workspaces import Access
from tidings.onboarding.saga import WorkspaceCreation

router = APIRouter(prefix="/api/v1/workspaces", tags=["workspaces"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a workspace (with #general, you as owner and a welcome message)",
)
async def create_workspace(
    body: WorkspaceIn, user: UserDep, client: ClientDep, request: Request
) -> WorkspaceOut:
    runtime = request.app.state.runtime
    workspace = await WorkspaceCreation(runtime.identity, runtime.messaging).run(
        user, body.name, client
    )
    return workspace_out(workspace, Access(workspace, role=Role.OWNER))
