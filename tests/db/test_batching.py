"""Group commit: who shares a write, and what each caller gets back."""

from __future__ import annotations

import asyncio

import pytest

from tidings.db.batching import GroupCommit

pytestmark = pytest.mark.profiles("embedded")


class Recorder:
    def __init__(self, *, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self._fail_on = fail_on

    async def write(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(0.01)  # the transaction
        if self._fail_on in items:
            raise RuntimeError("the transaction failed")
        return [item * 10 for item in items]


async def test_callers_arriving_during_a_write_share_the_next_one() -> None:
    recorder = Recorder()
    commit = GroupCommit(recorder.write)
    first = asyncio.create_task(commit.submit(1))
    await asyncio.sleep(0)  # the first write starts alone, at once
    rest = [asyncio.create_task(commit.submit(n)) for n in (2, 3, 4)]
    assert await first == 10
    assert [await task for task in rest] == [20, 30, 40]
    assert recorder.batches == [[1], [2, 3, 4]]


async def test_linger_gathers_callers_before_the_first_write() -> None:
    recorder = Recorder()
    commit = GroupCommit(recorder.write, linger_seconds=0.02)
    first = asyncio.create_task(commit.submit(1))
    await asyncio.sleep(0.005)  # within the linger
    second = asyncio.create_task(commit.submit(2))
    assert (await first, await second) == (10, 20)
    assert recorder.batches == [[1, 2]]


async def test_max_batch_splits_and_a_failure_reaches_only_its_batch() -> None:
    recorder = Recorder(fail_on=3)
    commit = GroupCommit(recorder.write, max_batch=2, linger_seconds=0.01)
    tasks = [asyncio.create_task(commit.submit(n)) for n in (1, 2, 3, 4, 5)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert recorder.batches == [[1, 2], [3, 4], [5]]
    assert results[:2] == [10, 20]
    assert all(isinstance(r, RuntimeError) for r in results[2:4])
    assert results[4] == 50
