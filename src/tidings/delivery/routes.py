"""HTTP routes of the send API, the delivery log, connectors, routes and provider callbacks."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from tidings.delivery.component import Delivery
from tidings.delivery.connectors.registry import connector_types
from tidings.delivery.idempotency import idempotency_key
from tidings.delivery.schemas import (
    AcceptedOut,
    BatchAcceptedOut,
    BatchIn,
    ConnectorIn,
    ConnectorOut,
    ConnectorStatsOut,
    ConnectorTypeOut,
    ConnectorUpdateIn,
    MessageOut,
    MessagePage,
    RouteIn,
    RouteOut,
    RouteUpdateIn,
    SendIn,
    TestOut,
)
from tidings.delivery.service import MessageFilter, Sender, SendRequest
from tidings.delivery.statuses import MessageStatus
from tidings.http.hot import BodyT, HotHandler
from tidings.http.problems import Forbidden, NotFound, Problem
from tidings.identity.accounts import ClientInfo
from tidings.identity.component import Identity
from tidings.identity.deps import (
    ClientDep,
    IdentityDep,
    PrincipalDep,
    authenticate,
    client_of,
    identity_of,
    workspace_access,
)
from tidings.identity.policy import Action, ApiKeyPrincipal, Decision, Principal, decide
from tidings.identity.workspaces import Access


async def get_delivery(request: Request) -> Delivery:
    delivery: Delivery = request.app.state.runtime.delivery
    return delivery


DeliveryDep = Annotated[Delivery, Depends(get_delivery)]
MAX_IDEMPOTENCY_KEY = 255
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key", max_length=MAX_IDEMPOTENCY_KEY, description="Replay protection"
    ),
]

send = APIRouter(prefix="/api/v1/messages", tags=["send"])
in_workspace = APIRouter(prefix="/api/v1/workspaces/{workspace_id}", tags=["connectors"])
callbacks = APIRouter(prefix="/api/v1/callbacks", tags=["callbacks"])


async def _sender(
    principal: Principal,
    workspace_id: uuid.UUID | None,
    action: Action,
    identity: IdentityDep,
    client: ClientDep,
) -> Sender:
    """Who sends, in which workspace; an API key is checked without a database round trip."""
    if isinstance(principal, ApiKeyPrincipal):
        workspace_id = workspace_id or principal.workspace_id
        verdict = decide(principal, action, workspace_id, None)
        if verdict is Decision.HIDDEN:
            raise NotFound("No such workspace.", code="workspace_not_found")
        if verdict is Decision.FORBIDDEN:
            raise Forbidden(
                f"This API key's scopes do not allow {action.value}.", action=action.value
            )
        return Sender(workspace_id, f"key:{principal.key_id}", principal.key_id)
    if workspace_id is None:
        raise Problem(
            "Name the workspace (`workspace_id`) when sending as a user.",
            code="workspace_required",
        )
    await identity.workspaces.authorize(principal, workspace_id, action, client)
    return Sender(workspace_id, f"user:{principal.actor_id}", None)


def _request_of(body: SendIn) -> SendRequest:
    return SendRequest(
        recipient=body.to,
        connector=body.connector,
        route=body.route,
        template=body.template,
        template_version=body.template_version,
        variables=body.variables,
        # The fields given, as plain values (iterating the model: no serialization pass).
        content={k: v for k, v in body.content if v is not None}
        if body.content is not None
        else None,
        metadata=body.metadata,
        send_at=body.send_at,
    )


def _replay(accepted_status: int, body: Any) -> JSONResponse:
    return JSONResponse(body, status_code=accepted_status, headers={"Idempotent-Replayed": "true"})


@send.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send a message through a connector or a route (accepted durably, delivered async)",
    response_model=AcceptedOut,
)
async def send_message(
    body: SendIn,
    principal: PrincipalDep,
    delivery: DeliveryDep,
    identity: IdentityDep,
    client: ClientDep,
    idempotency: IdempotencyKeyHeader = None,
) -> Any:
    return await _send_one(delivery, identity, client, principal, body, idempotency)


async def _send_one(
    delivery: Delivery,
    identity: Identity,
    client: ClientInfo,
    principal: Principal,
    body: SendIn,
    idempotency: str | None,
) -> AcceptedOut | JSONResponse:
    sender = await _sender(principal, body.workspace_id, Action.DELIVERY_SEND, identity, client)
    key = idempotency_key(f"send:{sender.workspace_id}:{sender.actor}", idempotency, body)
    accepted = await delivery.deliveries.accept(
        sender,
        [_request_of(body)],
        idempotency_key=key,
        answer=lambda messages: AcceptedOut.of(messages[0]).model_dump(mode="json"),
    )
    if accepted.replayed_status is not None:
        return _replay(accepted.replayed_status, accepted.replayed_body)
    return AcceptedOut.of(accepted.messages[0])


@send.post(
    "/batch",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send up to 1,000 messages in one request: all are accepted, or none",
    response_model=BatchAcceptedOut,
)
async def send_batch(
    body: BatchIn,
    principal: PrincipalDep,
    delivery: DeliveryDep,
    identity: IdentityDep,
    client: ClientDep,
    idempotency: IdempotencyKeyHeader = None,
) -> Any:
    return await _send_many(delivery, identity, client, principal, body, idempotency)


async def _send_many(
    delivery: Delivery,
    identity: Identity,
    client: ClientInfo,
    principal: Principal,
    body: BatchIn,
    idempotency: str | None,
) -> Response:
    sender = await _sender(principal, body.workspace_id, Action.DELIVERY_SEND, identity, client)
    for index, item in enumerate(body.messages):
        if item.workspace_id not in (None, sender.workspace_id):
            raise Problem(
                "Every message of a batch goes to the batch's workspace.",
                code="workspace_mismatch",
                index=index,
            )
    key = idempotency_key(f"batch:{sender.workspace_id}:{sender.actor}", idempotency, body)
    accepted = await delivery.deliveries.accept(
        sender,
        [_request_of(item) for item in body.messages],
        idempotency_key=key,
        answer=lambda messages: orjson.loads(BatchAcceptedOut.json_of(messages)),
    )
    if accepted.replayed_status is not None:
        return _replay(accepted.replayed_status, accepted.replayed_body)
    return Response(
        BatchAcceptedOut.json_of(accepted.messages),
        status_code=status.HTTP_202_ACCEPTED,
        media_type="application/json",
    )


def _hot(
    run: Callable[
        [Delivery, Identity, ClientInfo, Principal, BodyT, str | None],
        Awaitable[BaseModel | Response],
    ],
) -> HotHandler[BodyT]:
    """A send route's hot handler (tidings.http.hot), around what the route itself runs."""

    async def handle(request: Request, body: BodyT) -> Response | None:
        idempotency = request.headers.get("idempotency-key")
        if idempotency is not None and len(idempotency) > MAX_IDEMPOTENCY_KEY:
            return None  # the FastAPI route answers the header's validation error
        principal = await authenticate(request)
        delivery: Delivery = request.app.state.runtime.delivery
        answer = await run(
            delivery, identity_of(request), client_of(request), principal, body, idempotency
        )
        if isinstance(answer, Response):
            return answer
        # What FastAPI makes of the route's response model, with the route's status.
        return Response(
            answer.model_dump_json(),
            status_code=status.HTTP_202_ACCEPTED,
            media_type="application/json",
        )

    return handle


send_message_hot = _hot(_send_one)
send_batch_hot = _hot(_send_many)


@send.get("/{message_id}", summary="A message with every delivery attempt")
async def get_message(
    message_id: uuid.UUID,
    principal: PrincipalDep,
    delivery: DeliveryDep,
    identity: IdentityDep,
    client: ClientDep,
    workspace_id: uuid.UUID | None = None,
) -> MessageOut:
    sender = await _sender(principal, workspace_id, Action.DELIVERY_READ, identity, client)
    message, attempts = await delivery.deliveries.get(sender.workspace_id, message_id)
    return MessageOut.of(message, attempts)


@send.get("", summary="The delivery log, newest first, with filters")
async def list_messages(
    principal: PrincipalDep,
    delivery: DeliveryDep,
    identity: IdentityDep,
    client: ClientDep,
    workspace_id: uuid.UUID | None = None,
    status_filter: Annotated[MessageStatus | None, Query(alias="status")] = None,
    connector_id: uuid.UUID | None = None,
    to: Annotated[str | None, Query(max_length=500)] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> MessagePage:
    sender = await _sender(principal, workspace_id, Action.DELIVERY_READ, identity, client)
    for name, moment in (("created_after", created_after), ("created_before", created_before)):
        if moment is not None and moment.tzinfo is None:
            raise Problem(f"`{name}` needs a time zone.", code="validation_failed")
    rows, next_cursor = await delivery.deliveries.list_messages(
        sender.workspace_id,
        MessageFilter(
            status=status_filter.value if status_filter is not None else None,
            connector_id=connector_id,
            recipient=to,
            created_after=created_after,
            created_before=created_before,
        ),
        limit=limit,
        cursor=cursor,
    )
    return MessagePage(items=[MessageOut.of(r) for r in rows], next_cursor=next_cursor)


@send.post("/{message_id}/cancel", summary="Cancel a queued send that has not been tried yet")
async def cancel_message(
    message_id: uuid.UUID,
    principal: PrincipalDep,
    delivery: DeliveryDep,
    identity: IdentityDep,
    client: ClientDep,
    workspace_id: uuid.UUID | None = None,
) -> MessageOut:
    sender = await _sender(principal, workspace_id, Action.DELIVERY_SEND, identity, client)
    return MessageOut.of(await delivery.deliveries.cancel(sender.workspace_id, message_id))


# -- connectors ---------------------------------------------------------------------------

ReadConnectors = Annotated[Access, Depends(workspace_access(Action.CONNECTOR_READ))]
ManageConnectors = Annotated[Access, Depends(workspace_access(Action.CONNECTOR_MANAGE))]


@in_workspace.get("/connector-types", summary="Every installed connector type and its settings")
async def list_connector_types(access: ReadConnectors) -> list[ConnectorTypeOut]:
    return [
        ConnectorTypeOut(
            type=name,
            title=connector_type.title,
            channel=connector_type.channel.value,
            settings_schema=connector_type.Settings.model_json_schema(),
            credentials_schema=connector_type.Credentials.model_json_schema(),
        )
        for name, connector_type in sorted(connector_types().items())
    ]


@in_workspace.post("/connectors", status_code=status.HTTP_201_CREATED)
async def create_connector(
    workspace_id: uuid.UUID,
    body: ConnectorIn,
    access: ManageConnectors,
    delivery: DeliveryDep,
    principal: PrincipalDep,
) -> ConnectorOut:
    view = await delivery.connectors.create(
        workspace_id,
        type_name=body.type,
        name=body.name,
        settings=body.settings,
        credentials=body.credentials,
        max_concurrency=body.max_concurrency,
        rate_per_second=body.rate_per_second,
        actor=principal.actor_id,
    )
    return ConnectorOut.of(view)


@in_workspace.get("/connectors")
async def list_connectors(
    workspace_id: uuid.UUID, access: ReadConnectors, delivery: DeliveryDep
) -> list[ConnectorOut]:
    return [ConnectorOut.of(v) for v in await delivery.connectors.list_connectors(workspace_id)]


@in_workspace.get("/connectors/{connector}")
async def get_connector(
    workspace_id: uuid.UUID, connector: str, access: ReadConnectors, delivery: DeliveryDep
) -> ConnectorOut:
    return ConnectorOut.of(await delivery.connectors.get(workspace_id, connector))


@in_workspace.patch("/connectors/{connector}")
async def update_connector(
    workspace_id: uuid.UUID,
    connector: str,
    body: ConnectorUpdateIn,
    access: ManageConnectors,
    delivery: DeliveryDep,
    principal: PrincipalDep,
) -> ConnectorOut:
    view = await delivery.connectors.update(
        workspace_id,
        connector,
        name=body.name,
        settings=body.settings,
        credentials=body.credentials,
        max_concurrency=body.max_concurrency,
        rate_per_second=body.rate_per_second,
        fields_set=body.model_fields_set,
        actor=principal.actor_id,
    )
    return ConnectorOut.of(view)


@in_workspace.delete("/connectors/{connector}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_connector(
    workspace_id: uuid.UUID,
    connector: str,
    access: ManageConnectors,
    delivery: DeliveryDep,
    principal: PrincipalDep,
) -> Response:
    await delivery.connectors.delete(workspace_id, connector, actor=principal.actor_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@in_workspace.post("/connectors/{connector}/test", summary="Ask the provider if this works")
async def test_connector(
    workspace_id: uuid.UUID,
    connector: str,
    access: ManageConnectors,
    delivery: DeliveryDep,
    principal: PrincipalDep,
) -> TestOut:
    result = await delivery.connectors.test(workspace_id, connector, actor=principal.actor_id)
    return TestOut(ok=result.ok, detail=result.detail, status=result.status)


@in_workspace.get("/connectors/{connector}/stats", summary="Sent, failed by class, latency")
async def connector_stats(
    workspace_id: uuid.UUID,
    connector: str,
    access: ReadConnectors,
    delivery: DeliveryDep,
    hours: Annotated[float, Query(gt=0, le=24 * 30)] = 24,
) -> ConnectorStatsOut:
    return await delivery.stats(workspace_id, connector, hours)


# -- routes ------------------------------------------------------------------------------


@in_workspace.post("/routes", status_code=status.HTTP_201_CREATED, tags=["routes"])
async def create_route(
    workspace_id: uuid.UUID,
    body: RouteIn,
    access: ManageConnectors,
    delivery: DeliveryDep,
    principal: PrincipalDep,
) -> RouteOut:
    route, chain = await delivery.connectors.create_route(
        workspace_id, body.name, body.connectors, actor=principal.actor_id
    )
    return RouteOut.of(route, chain)


@in_workspace.get("/routes", tags=["routes"])
async def list_routes(
    workspace_id: uuid.UUID, access: ReadConnectors, delivery: DeliveryDep
) -> list[RouteOut]:
    return [RouteOut.of(r, c) for r, c in await delivery.connectors.list_routes(workspace_id)]


@in_workspace.get("/routes/{route}", tags=["routes"])
async def get_route(
    workspace_id: uuid.UUID, route: str, access: ReadConnectors, delivery: DeliveryDep
) -> RouteOut:
    return RouteOut.of(*await delivery.connectors.get_route(workspace_id, route))


@in_workspace.patch("/routes/{route}", tags=["routes"])
async def update_route(
    workspace_id: uuid.UUID,
    route: str,
    body: RouteUpdateIn,
    access: ManageConnectors,
    delivery: DeliveryDep,
    principal: PrincipalDep,
) -> RouteOut:
    updated, chain = await delivery.connectors.update_route(
        workspace_id,
        route,
        name=body.name,
        connector_refs=body.connectors,
        actor=principal.actor_id,
    )
    return RouteOut.of(updated, chain)


@in_workspace.delete("/routes/{route}", status_code=status.HTTP_204_NO_CONTENT, tags=["routes"])
async def delete_route(
    workspace_id: uuid.UUID,
    route: str,
    access: ManageConnectors,
    delivery: DeliveryDep,
    principal: PrincipalDep,
) -> Response:
    await delivery.connectors.delete_route(workspace_id, route, actor=principal.actor_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- provider status callbacks ------------------------------------------------------------


@callbacks.post(
    "/connectors/{connector_id}",
    summary="A provider's status report (delivered, bounced), verified by its signature",
)
async def provider_callback(
    connector_id: uuid.UUID, request: Request, delivery: DeliveryDep
) -> dict[str, int]:
    body = await request.body()
    moved = await delivery.deliveries.take_callback(
        connector_id,
        url=delivery.public_url_of(request),
        headers=dict(request.headers),
        body=body,
    )
    return {"updated": moved}


routers = [send, in_workspace, callbacks]
