"""HTTP route of message search: parse, authenticate, call the service, answer."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from tidings.identity.deps import PrincipalDep
from tidings.search.schemas import SearchPage
from tidings.search.service import MAX_PAGE, Search

MAX_QUERY_CHARS = 500


async def get_search(request: Request) -> Search:
    search: Search = request.app.state.runtime.search
    return search


SearchDep = Annotated[Search, Depends(get_search)]

router = APIRouter(prefix="/api/v1/workspaces/{workspace_id}", tags=["search"])


@router.get(
    "/search",
    summary='Search the messages you may read: words, "phrases", prefix*, in: from: '
    "before: after: on: has:thread; newest first",
)
async def search_messages(
    workspace_id: uuid.UUID,
    principal: PrincipalDep,
    search: SearchDep,
    q: Annotated[str, Query(max_length=MAX_QUERY_CHARS)] = "",
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
) -> SearchPage:
    return await search.messages(principal, workspace_id, q=q, cursor=cursor, limit=limit)
