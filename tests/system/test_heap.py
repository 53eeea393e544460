"""A server process freezes its start-up heap, so full collections stop walking it."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from asgi_lifespan import LifespanManager

from tidings.app import create_app
from tidings.runtime import GC_YOUNG_THRESHOLD, settle_heap
from tidings.settings import Settings


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    threshold = gc.get_threshold()
    yield
    # The test process keeps collecting everything, as before.
    gc.unfreeze()
    gc.set_threshold(*threshold)


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_settle_heap_collects_garbage_then_freezes_what_lives(unfrozen: None) -> None:
    survivor = _Cycle()
    garbage = _Cycle()
    garbage_ref = weakref.ref(garbage)
    del garbage
    settle_heap()
    assert garbage_ref() is None  # collected first: garbage is never frozen
    frozen = gc.get_freeze_count()
    assert frozen > 0
    assert not any(o is survivor for o in gc.get_objects())  # out of the collector's sight
    # What is created afterwards is still collected.
    late = _Cycle()
    late_ref = weakref.ref(late)
    del late
    gc.collect()
    assert late_ref() is None
    assert gc.get_freeze_count() == frozen


def test_settle_heap_collects_the_young_generation_less_often(unfrozen: None) -> None:
    older = gc.get_threshold()[1:]
    settle_heap()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *older)


async def test_the_server_app_settles_its_heap_after_start(
    settings: Settings, unfrozen: None
) -> None:
    app = create_app(settings, settle_heap_after_start=True)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD


async def test_apps_for_tests_leave_the_heap_alone(settings: Settings, unfrozen: None) -> None:
    threshold = gc.get_threshold()
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == threshold
