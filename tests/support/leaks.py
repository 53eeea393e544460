"""Where a leaked socket came from: a test's unclosed socket is found by the garbage collector
in some later test, so the warning alone names neither the test nor the code that opened it.

Every socket's file descriptor is recorded with the test (and phase) that opened it and the
innermost frame of ours on the stack; the fd stays taken until the collector closes the
socket, so when "unclosed <socket.socket fd=N …>" is reported the record for N is still the
leaked socket's. The origins are attached to the failing test's report.
"""

from __future__ import annotations

import re
import socket
import sys
import traceback
from typing import Any

import pytest

_OURS = ("/tests/", "/src/tidings/", "/bench/")
_FD = re.compile(r"<socket\.socket fd=(\d+)")
_current = ["(between tests)"]
_opened: dict[int, str] = {}
_found: list[str] = []


def _where() -> str:
    stack = traceback.extract_stack()[:-2]
    how = (
        "accepted"
        if any(f.name == "accept" and f.filename.endswith("socket.py") for f in stack)
        else "opened"
    )
    for frame in reversed(stack):
        if any(part in frame.filename for part in _OURS) and not frame.filename.endswith(
            "leaks.py"
        ):
            where = "/".join(frame.filename.rsplit("/", 2)[-2:])
            return f"{how}, under {where}:{frame.lineno} {frame.name}"
    return f"{how} outside the project (an event loop callback)"


def install(config: pytest.Config) -> None:
    original_init = socket.socket.__init__

    def init(self: socket.socket, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        _opened[self.fileno()] = f"{_current[0]}, {_where()}"

    socket.socket.__init__ = init  # type: ignore[method-assign]

    # pytest's own hook keeps the unraisable for the next test phase; look the fd up now,
    # while no other socket can have taken it.
    pytest_hook = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        text = f"{unraisable.exc_value!r} {unraisable.object!r}"
        _found.extend(
            f"fd={fd}: during {_opened.get(int(fd), 'an unknown test')}" for fd in _FD.findall(text)
        )
        pytest_hook(unraisable)

    sys.unraisablehook = hook
    config.add_cleanup(lambda: setattr(sys, "unraisablehook", pytest_hook))


def enter(nodeid: str, phase: str) -> None:
    _current[0] = f"{nodeid} ({phase})"


def origins() -> str | None:
    """What was found since the last call, for the report of the test now failing."""
    if not _found:
        return None
    text = "\n".join(dict.fromkeys(_found))
    _found.clear()
    return text
