"""The ordering rules of the realtime client, fed directly (the live tests prove them end to end):
each (stream, seq) once, in order, gaps held until filled or skipped by a resync."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from tidings.client.models import Event
from tidings.client.realtime import StreamTracker

STREAM = "conversation:c1"


def event(seq: int, stream: str = STREAM) -> Event:
    return Event(
        type="event",
        stream=stream,
        seq=seq,
        event="message.created",
        id=uuid.uuid4(),
        at=datetime.now(UTC),
        data={},
    )


def seqs(events: list[Event]) -> list[int]:
    return [e.seq for e in events]


def test_duplicates_are_dropped_and_gaps_held_until_filled() -> None:
    tracker = StreamTracker()
    tracker.start(STREAM, 10)
    assert seqs(tracker.accept(event(11))) == [11]
    assert seqs(tracker.accept(event(11))) == []
    assert seqs(tracker.accept(event(10))) == []
    assert seqs(tracker.accept(event(14))) == []
    assert seqs(tracker.accept(event(13))) == []
    assert tracker.gaps() == {STREAM: 11}
    assert seqs(tracker.accept(event(12))) == [12, 13, 14]
    assert tracker.gaps() == {}
    assert tracker.last[STREAM] == 14


def test_a_new_stream_starts_at_its_first_event() -> None:
    tracker = StreamTracker()
    assert seqs(tracker.accept(event(7, "conversation:new"))) == [7]
    assert seqs(tracker.accept(event(8, "conversation:new"))) == [8]


def test_resync_continues_from_where_the_connection_began() -> None:
    tracker = StreamTracker()
    tracker.start(STREAM, 5)
    # Reconnected at position 20: live events 21, 22 arrive before the resume answer.
    assert tracker.accept(event(21)) == []
    assert tracker.accept(event(22)) == []
    assert seqs(tracker.resync(STREAM, "too_many", 20)) == [21, 22]
    assert tracker.last[STREAM] == 22


def test_resync_never_goes_back_over_what_was_handed_out() -> None:
    tracker = StreamTracker()
    tracker.start(STREAM, 5)
    assert seqs(tracker.accept(event(6))) == [6]
    assert tracker.accept(event(9)) == []
    # A gap on a live connection that cannot be replayed: skip to what is held.
    assert seqs(tracker.resync(STREAM, "expired", 3)) == [9]
    assert seqs(tracker.accept(event(6))) == []


def test_an_unknown_position_moves_back_to_the_servers() -> None:
    tracker = StreamTracker()
    tracker.start(STREAM, 500)
    assert tracker.resync(STREAM, "unknown_position", 2) == []
    assert seqs(tracker.accept(event(3))) == [3]


def test_not_subscribed_forgets_the_stream() -> None:
    tracker = StreamTracker()
    tracker.start(STREAM, 5)
    tracker.accept(event(8))
    assert tracker.resync(STREAM, "not_subscribed", None) == []
    assert not tracker.knows(STREAM)
    assert tracker.gaps() == {}
