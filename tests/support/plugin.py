"""A Tidings plugin used by subprocess tests (loaded through TIDINGS_PLUGINS).

Behaviour is chosen by environment variables so one module serves several scenarios:
- TIDINGS_TEST_RECORD=path: a live consumer appends every event it receives, as JSON lines;
- TIDINGS_TEST_DIE_ON_DISPATCH=1: a live consumer SIGKILLs the process on its first batch,
  i.e. after the events were committed and before they are marked dispatched.
Jobs: `test.file_log` appends "start"/"done" lines to a file, sleeping in between.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tidings.events.dispatcher import DispatchedEvent
from tidings.jobs.registry import JobContext, registry
from tidings.runtime import Runtime


class FileRecorder:
    name = "test-file-recorder"

    def __init__(self, path: Path) -> None:
        self._path = path

    async def handle(self, events: Sequence[DispatchedEvent]) -> None:
        with self._path.open("ab") as handle:
            for event in events:
                handle.write(event.json + b"\n")
            handle.flush()
            os.fsync(handle.fileno())


class DieOnDispatch:
    name = "test-die-on-dispatch"

    async def handle(self, events: Sequence[DispatchedEvent]) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


async def file_log(context: JobContext, payload: dict[str, Any]) -> None:
    path = Path(payload["path"])
    with path.open("a") as handle:
        handle.write(f"start {context.job_id} {context.attempt} {os.getpid()}\n")
    await asyncio.sleep(float(payload.get("sleep", 0)))
    with path.open("a") as handle:
        handle.write(f"done {context.job_id} {context.attempt} {os.getpid()}\n")


registry.register("test.file_log", file_log)


def setup(runtime: Runtime) -> None:
    record = os.environ.get("TIDINGS_TEST_RECORD")
    if record:
        runtime.dispatcher.add_live(FileRecorder(Path(record)))
    if os.environ.get("TIDINGS_TEST_DIE_ON_DISPATCH") == "1":
        runtime.dispatcher.add_live(DieOnDispatch())
