"""Row ids are UUIDv7: time-ordered, so inserts go to the right edge of each index."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from tidings.db.base import new_id


def test_an_id_is_a_version_7_uuid_carrying_its_creation_time() -> None:
    before = time.time_ns() // 1_000_000
    made = new_id()
    after = time.time_ns() // 1_000_000
    assert made.version == 7
    assert made.variant == uuid.RFC_4122
    assert before <= made.int >> 80 <= after


def test_ids_made_one_after_another_sort_in_that_order_and_never_repeat() -> None:
    made = [new_id() for _ in range(50_000)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    # The text form (SQLite stores 32 hex digits) sorts the same way.
    assert [m.hex for m in made] == sorted(m.hex for m in made)


def test_ids_of_the_same_millisecond_differ_in_their_random_bits() -> None:
    stamp = datetime.now(UTC)
    made = [new_id() for _ in range(2_000)]
    random_parts = {m.int & ((1 << 62) - 1) for m in made}
    assert len(random_parts) == len(made)
    assert all(abs((m.int >> 80) - stamp.timestamp() * 1000) < 60_000 for m in made)
