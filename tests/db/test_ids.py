"""Row ids are UUIDv7: time-ordered, so inserts go to the right edge of each index."""

from __future__ import annotations

import time
import uuid

import pytest

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
    by_millisecond: dict[int, list[uuid.UUID]] = {}
    for made in (new_id() for _ in range(2_000)):
        by_millisecond.setdefault(made.int >> 80, []).append(made)
    shared = [ids for ids in by_millisecond.values() if len(ids) > 1]
    assert shared  # 2,000 ids take a few milliseconds at most
    for ids in shared:
        random_parts = {made.int & ((1 << 62) - 1) for made in ids}
        assert len(random_parts) == len(ids)


def test_ids_keep_their_order_when_the_clock_stands_still_or_goes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = time.time_ns()
    before = new_id()
    monkeypatch.setattr(time, "time_ns", lambda: now)  # a coarse clock: one reading for all
    still = [new_id() for _ in range(5_000)]  # more than a millisecond's 4,096 fractions
    monkeypatch.setattr(time, "time_ns", lambda: now - 3_600_000_000_000)  # set back an hour
    back = [new_id() for _ in range(100)]
    made = [before, *still, *back]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert all(m.version == 7 for m in made)
