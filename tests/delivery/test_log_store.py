"""The delivery log's hand-written statements name the same columns as the models."""

from __future__ import annotations

from tidings.delivery.log_store import ATTEMPT_FIELDS
from tidings.delivery.models import DeliveryAttempt
from tidings.delivery.service import AttemptRecord


def test_attempt_fields_are_the_attempt_columns() -> None:
    assert tuple(AttemptRecord.__dataclass_fields__) == ATTEMPT_FIELDS
    assert set(ATTEMPT_FIELDS) == set(DeliveryAttempt.__table__.columns.keys())
