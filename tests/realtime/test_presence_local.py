"""A user's status on one process: the best of its connections, whatever their number."""

from __future__ import annotations

import uuid

from tidings.infra.backplane import InProcessBackplane
from tidings.realtime.presence import AWAY, OFFLINE, ONLINE, Presence


def test_status_follows_the_best_connection_as_connections_come_and_go() -> None:
    changes: list[tuple[uuid.UUID, str]] = []
    presence = Presence(
        InProcessBackplane(), node_id="n1", on_change=lambda u, s, _: changes.append((u, s))
    )
    user, workspace = uuid.uuid4(), uuid.uuid4()

    assert presence.set(user, "c0", AWAY, [workspace]) is True
    assert presence.status(user) == AWAY
    # A thousand more connections, online: one change, and the status is found without
    # walking them.
    flips = [presence.set(user, f"c{i}", ONLINE, [workspace]) for i in range(1, 1001)]
    assert flips.count(True) == 1
    assert presence.status(user) == ONLINE
    # The same connection again, now away: still online through the others.
    assert presence.set(user, "c1", AWAY) is False
    for i in range(2, 1000):
        assert presence.set(user, f"c{i}", OFFLINE) is False
    # The last online connection leaves: c0 and c1 are away.
    assert presence.set(user, "c1000", OFFLINE) is True
    assert presence.status(user) == AWAY
    assert presence.set(user, "c0", OFFLINE) is False
    assert presence.set(user, "c1", OFFLINE) is True
    assert presence.status(user) == OFFLINE
    assert [status for _, status in changes] == [AWAY, ONLINE, AWAY, OFFLINE]
    # Nothing is kept for a user without connections.
    assert presence.set(user, "c1", OFFLINE) is False
