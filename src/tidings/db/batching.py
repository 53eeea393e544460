"""Group commit for independent writes: callers that arrive while a batch is being written
share the next transaction.

By default there is no timer: the first caller's batch goes at once (alone, when the system is
idle), and everyone arriving during that write forms the next batch. Under load the batch grows
by itself and the per-transaction cost (BEGIN, COMMIT, the fsync, the session) is paid once per
batch. Writes nobody waits on to make progress (a delivery's outcome, written after the
provider answered) can `linger`: the first caller waits that long for company, which at a few
hundred writes a second turns batches of one into batches of several (bench.delivery: server
CPU per delivery 2.3 → 1.0 ms with 2 ms).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """`await submit(item)` returns what `write(batch)` answered for that item.

    `write` gets up to `max_batch` items and returns one answer per item, in order; if it
    raises, every caller of that batch gets the exception (the transaction was one).
    """

    def __init__(
        self,
        write: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = 256,
        linger_seconds: float = 0.0,
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._linger = linger_seconds
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            if self._linger:
                await asyncio.sleep(self._linger)
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                live = [(item, future) for item, future in batch if not future.done()]
                if not live:
                    continue
                try:
                    answers = await self._write([item for item, _ in live])
                except BaseException as exc:  # handed to every caller of the batch
                    for _, future in live:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, future), answer in zip(live, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
        finally:
            self._writer = None
            for _, future in self._pending:  # only left behind when cancelled
                if not future.done():
                    future.cancel()
            self._pending.clear()
