"""The send API's answers written without pydantic models are the models' JSON, byte for byte."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tidings.db.base import new_id
from tidings.delivery.schemas import AcceptedOut, BatchAcceptedOut
from tidings.delivery.service import MessageView
from tidings.delivery.statuses import MessageStatus


def _queued(send_at: datetime | None) -> MessageView:
    return MessageView(
        id=new_id(),
        workspace_id=new_id(),
        status=MessageStatus.QUEUED,
        recipient="ada@example.com",
        connector_id=new_id(),
        route_id=None,
        message_metadata={},
        attempts=0,
        send_at=send_at,
    )


@pytest.mark.parametrize(
    "send_at",
    [
        None,
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),  # no fraction of a second
        datetime(2026, 1, 2, 3, 4, 5, 120, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
    ],
)
def test_a_batch_answer_is_the_models_json(send_at: datetime | None) -> None:
    messages = [_queued(send_at), _queued(None)]
    model = BatchAcceptedOut(messages=[AcceptedOut.of(m) for m in messages])
    assert BatchAcceptedOut.json_of(messages) == model.model_dump_json().encode()
