"""HTTP side of the realtime gateway: connect tickets, the SSE stream and presence.

The WebSocket itself is served at `/api/v1/realtime` by `connection.WebSocketConnection`,
which uvicorn runs for upgrade requests (see `tidings serve`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from tidings.http.problems import Problem, Unauthenticated
from tidings.identity.deps import UserDep, workspace_access
from tidings.identity.policy import Action
from tidings.identity.workspaces import Access
from tidings.realtime.gateway import Gateway, parse_positions
from tidings.realtime.sse import SseSubscriber
from tidings.realtime.tickets import TICKET_SECONDS

router = APIRouter(prefix="/api/v1/realtime", tags=["realtime"])
presence_router = APIRouter(prefix="/api/v1/workspaces/{workspace_id}", tags=["realtime"])


async def get_gateway(request: Request) -> Gateway:
    gateway: Gateway | None = request.app.state.runtime.realtime
    if gateway is None:  # pragma: no cover - every `serve` process has one
        raise Problem("This process serves no realtime gateway.", status=503, code="unavailable")
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


class TicketOut(BaseModel):
    ticket: str
    expires_in: int
    url: str


@router.post("/tickets", summary="A one-time ticket to open the WebSocket or SSE stream")
async def issue_ticket(user: UserDep, gateway: GatewayDep) -> TicketOut:
    ticket = await gateway.tickets.issue(user.user_id, user.session_id)
    return TicketOut(
        ticket=ticket, expires_in=TICKET_SECONDS, url=f"/api/v1/realtime?ticket={ticket}"
    )


@router.get(
    "/events",
    summary="Server-Sent Events: the WebSocket's frames, receive-only",
    response_class=StreamingResponse,
)
async def events(
    request: Request,
    gateway: GatewayDep,
    ticket: str | None = None,
    resume: Annotated[str | None, Query(description="JSON object {stream: seq}")] = None,
) -> StreamingResponse:
    try:
        positions = parse_positions(resume)
    except ValueError:
        raise Problem("`resume` is a JSON object of stream → seq.", code="invalid_resume") from None
    params = {"ticket": [ticket]} if ticket else {}
    client = request.client.host if request.client else None
    who = await gateway.authenticate(request.headers.get("authorization"), params, client)
    if who is None:
        raise Unauthenticated("Send a ticket or `Authorization: Bearer <access token>`.")
    subscriber = SseSubscriber(*who)
    await gateway.open(subscriber, positions)

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in subscriber.stream(gateway.heartbeat_seconds):
                yield chunk
        finally:
            if subscriber.opened:
                subscriber.opened = False
            gateway.disconnected(subscriber)

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@presence_router.get("/presence", summary="Who is online or away in a workspace")
async def workspace_presence(
    gateway: GatewayDep,
    access: Annotated[Access, Depends(workspace_access(Action.MEMBER_LIST))],
) -> dict[str, str]:
    online = gateway.presence.online_in([access.workspace.id])
    return {str(user_id): status for user_id, status in online.items()}
