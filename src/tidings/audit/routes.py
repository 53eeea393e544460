"""Reading the audit log: workspace admins page through theirs; instance admins export all."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from starlette.responses import StreamingResponse

from tidings.audit.service import AuditFilter, entry_dict
from tidings.identity.deps import AdminDep, IdentityDep, workspace_access
from tidings.identity.policy import Action
from tidings.identity.workspaces import Access

router = APIRouter(tags=["audit"])


async def _filters(
    action: Annotated[list[str] | None, Query(max_length=20)] = None,
    actor_id: Annotated[str | None, Query(max_length=64)] = None,
    target_id: Annotated[str | None, Query(max_length=64)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> AuditFilter:
    return AuditFilter(
        actions=action or (), actor_id=actor_id, target_id=target_id, since=since, until=until
    )


@router.get("/api/v1/workspaces/{workspace_id}/audit", summary="The workspace's audit log")
async def workspace_audit(
    access: Annotated[Access, Depends(workspace_access(Action.AUDIT_READ))],
    filters: Annotated[AuditFilter, Depends(_filters)],
    identity: IdentityDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    entries, next_cursor = await identity.audit.page(
        access.workspace.id, filters, limit=limit, cursor=cursor
    )
    return {"items": [entry_dict(e) for e in entries], "next_cursor": next_cursor}


@router.get(
    "/api/v1/admin/audit/export",
    summary="Export the whole audit log as JSON lines (instance admins)",
    response_class=StreamingResponse,
)
async def export_audit(
    _: AdminDep,
    filters: Annotated[AuditFilter, Depends(_filters)],
    identity: IdentityDep,
) -> StreamingResponse:
    return StreamingResponse(
        identity.audit.export(filters),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="tidings-audit.jsonl"'},
    )
