"""HTTP routes of message templates: parse, authorise, call `Templates`, answer."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, status

from tidings.delivery.template_schemas import (
    AdHocPreviewIn,
    PreviewIn,
    RenderedContent,
    TemplateCreateIn,
    TemplateOut,
    TemplatePage,
    TemplateReplaceIn,
    TemplateUpdateIn,
    TemplateVersionPage,
)
from tidings.delivery.templates import Templates
from tidings.identity.deps import PrincipalDep, workspace_access
from tidings.identity.policy import Action
from tidings.identity.workspaces import Access


async def get_templates(request: Request) -> Templates:
    """The process's `Templates` (one compiled-template cache per process)."""
    state = request.app.state
    templates = getattr(state, "templates", None) or getattr(state.runtime, "templates", None)
    if not isinstance(templates, Templates):
        templates = Templates(state.runtime.db)
        state.templates = templates
    return templates


TemplatesDep = Annotated[Templates, Depends(get_templates)]
ReadAccess = Annotated[Access, Depends(workspace_access(Action.TEMPLATE_READ))]
ManageAccess = Annotated[Access, Depends(workspace_access(Action.TEMPLATE_MANAGE))]
TemplateRef = Annotated[str, Path(min_length=1, max_length=80, description="name or id")]

templates_router = APIRouter(
    prefix="/api/v1/workspaces/{workspace_id}/templates", tags=["templates"]
)


@templates_router.post("", status_code=status.HTTP_201_CREATED, summary="Create a template")
async def create_template(
    workspace_id: uuid.UUID,
    body: TemplateCreateIn,
    _: ManageAccess,
    principal: PrincipalDep,
    templates: TemplatesDep,
) -> TemplateOut:
    return await templates.create(
        workspace_id,
        name=body.name,
        description=body.description,
        parts=body.parts,
        sample_variables=body.sample_variables,
        actor=principal,
    )


@templates_router.get("", summary="The workspace's templates, newest first")
async def list_templates(
    workspace_id: uuid.UUID,
    _: ReadAccess,
    templates: TemplatesDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> TemplatePage:
    return await templates.list_templates(workspace_id, limit=limit, cursor=cursor)


@templates_router.post("/preview", summary="Render ad-hoc parts with variables (nothing saved)")
async def preview_parts(
    workspace_id: uuid.UUID, body: AdHocPreviewIn, _: ReadAccess, templates: TemplatesDep
) -> RenderedContent:
    return await templates.preview(
        workspace_id, parts=body.parts, variables=body.variables, channel=body.channel
    )


@templates_router.get("/{ref}", summary="A template: its latest version, or ?version=")
async def get_template(
    workspace_id: uuid.UUID,
    ref: TemplateRef,
    _: ReadAccess,
    templates: TemplatesDep,
    version: Annotated[int | None, Query(ge=1)] = None,
) -> TemplateOut:
    return await templates.get(workspace_id, ref, version)


@templates_router.get("/{ref}/versions", summary="A template's versions, newest first")
async def list_versions(
    workspace_id: uuid.UUID,
    ref: TemplateRef,
    _: ReadAccess,
    templates: TemplatesDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> TemplateVersionPage:
    return await templates.versions(workspace_id, ref, limit=limit, cursor=cursor)


@templates_router.put("/{ref}", summary="Replace the content: a new version")
async def replace_template(
    workspace_id: uuid.UUID,
    ref: TemplateRef,
    body: TemplateReplaceIn,
    _: ManageAccess,
    principal: PrincipalDep,
    templates: TemplatesDep,
) -> TemplateOut:
    return await templates.update(
        workspace_id,
        ref,
        name=body.name,
        description=body.description,
        parts=body.parts,
        sample_variables=body.sample_variables,
        actor=principal,
    )


@templates_router.patch(
    "/{ref}", summary="Change name, description, parts or samples (content changes: new version)"
)
async def update_template(
    workspace_id: uuid.UUID,
    ref: TemplateRef,
    body: TemplateUpdateIn,
    _: ManageAccess,
    principal: PrincipalDep,
    templates: TemplatesDep,
) -> TemplateOut:
    return await templates.update(
        workspace_id,
        ref,
        name=body.name,
        description=body.description,
        parts=body.parts,
        sample_variables=body.sample_variables,
        actor=principal,
    )


@templates_router.delete(
    "/{ref}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a template"
)
async def delete_template(
    workspace_id: uuid.UUID,
    ref: TemplateRef,
    _: ManageAccess,
    principal: PrincipalDep,
    templates: TemplatesDep,
) -> None:
    await templates.delete(workspace_id, ref, actor=principal)


@templates_router.post(
    "/{ref}/preview", summary="Render a saved template over its sample variables"
)
async def preview_template(
    workspace_id: uuid.UUID,
    ref: TemplateRef,
    body: PreviewIn,
    _: ReadAccess,
    templates: TemplatesDep,
) -> RenderedContent:
    return await templates.preview(
        workspace_id,
        template=ref,
        version=body.version,
        variables=body.variables,
        channel=body.channel,
    )
