"""Provider status callbacks: SMS through Twilio's API shapes, then Twilio's signed report."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.delivery.providers.twilio import ACCOUNT_SID, AUTH_TOKEN, TwilioServer, signed_callback
from tests.delivery.send.conftest import Team
from tests.delivery.send.test_send_api import send, settled, stream_types
from tests.support.messaging import problem

pytestmark = pytest.mark.anyio


@pytest.fixture
async def twilio() -> AsyncIterator[TwilioServer]:
    async with TwilioServer() as server:
        yield server


async def _sms_sent(client: httpx.AsyncClient, team: Team, twilio: TwilioServer) -> dict[str, Any]:
    created = await client.post(
        f"/api/v1/workspaces/{team.workspace_id}/connectors",
        json={
            "type": "twilio",
            "name": "sms",
            "settings": {
                "account_sid": ACCOUNT_SID,
                "from_number": "+15005550006",
                "api_base": twilio.base_url,
            },
            "credentials": {"auth_token": AUTH_TOKEN},
        },
        headers=team.owner.headers,
    )
    assert created.status_code == 201, created.text
    accepted = await send(
        client,
        team,
        {"to": "+15551234567", "connector": "sms", "content": {"text": "Your code: 42"}},
    )
    assert accepted.status_code == 202, accepted.text
    message = await settled(client, team, accepted.json()["id"])
    assert message["status"] == "sent", message
    assert message["provider_message_id"].startswith("SM")
    [request] = twilio.received
    assert request.form_value("To") == "+15551234567"
    assert request.form_value("Body") == "Your code: 42"
    return {**message, "connector": created.json()}


async def _callback(
    client: httpx.AsyncClient, connector_id: str, signed: tuple[dict[str, str], bytes]
) -> httpx.Response:
    headers, body = signed
    return await client.post(
        f"/api/v1/callbacks/connectors/{connector_id}", content=body, headers=headers
    )


async def test_a_signed_delivery_report_moves_the_message_to_delivered(
    client: httpx.AsyncClient, team: Team, twilio: TwilioServer, app: FastAPI
) -> None:
    message = await _sms_sent(client, team, twilio)
    connector_id = message["connector"]["id"]
    url = f"http://tidings.test/api/v1/callbacks/connectors/{connector_id}"
    params = {
        "AccountSid": ACCOUNT_SID,
        "MessageSid": message["provider_message_id"],
        "MessageStatus": "delivered",
    }
    # A forged report (wrong token) is refused and changes nothing.
    forged = await _callback(
        client, connector_id, signed_callback(url, params, auth_token="not-the-token")
    )
    problem(forged, 401, "callback_rejected")
    assert (await settled(client, team, message["id"]))["status"] == "sent"

    accepted = await _callback(client, connector_id, signed_callback(url, params))
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == {"updated": 1}
    delivered = await settled(client, team, message["id"])
    assert delivered["status"] == "delivered"
    # A late "undelivered" for a delivered message is applied (bounces win); a replay of the
    # delivered report afterwards does not undo it.
    undelivered = {**params, "MessageStatus": "undelivered", "ErrorCode": "30003"}
    await _callback(client, connector_id, signed_callback(url, undelivered))
    again = await _callback(client, connector_id, signed_callback(url, params))
    assert again.json() == {"updated": 0}
    final = await settled(client, team, message["id"])
    assert final["status"] == "bounced"
    types = await stream_types(app, message["id"])
    assert types[-2:] == ["delivery.delivered", "delivery.bounced"]


async def test_callbacks_for_unknown_or_unsigned_connectors_are_refused(
    client: httpx.AsyncClient, team: Team, twilio: TwilioServer
) -> None:
    message = await _sms_sent(client, team, twilio)
    connector_id = message["connector"]["id"]
    unsigned = await client.post(
        f"/api/v1/callbacks/connectors/{connector_id}",
        content="MessageSid=SM1&MessageStatus=delivered",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    problem(unsigned, 401, "callback_rejected")
    unknown = await client.post(
        "/api/v1/callbacks/connectors/00000000-0000-4000-8000-000000000000", content=b""
    )
    problem(unknown, 404, "connector_not_found")
    problem(await client.post("/api/v1/callbacks/connectors/not-a-uuid"), 400, "validation_failed")
