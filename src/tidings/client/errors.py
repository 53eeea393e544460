"""Errors the SDK raises: a problem answer of the server, or the end of a realtime connection."""

from __future__ import annotations

import math
from typing import Any

import httpx


class TidingsError(Exception):
    """The server answered with an RFC 9457 problem (over HTTP, or as a realtime error frame).

    Switch on `code` (stable), never on `detail` (prose). `problem` is the whole document,
    including extensions such as `errors` (validation failures) or `request_id`.
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str | None = None,
        problem: dict[str, Any] | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}" + (f": {detail}" if detail else ""))
        self.status = status
        self.code = code
        self.detail = detail
        self.problem: dict[str, Any] = problem if problem is not None else {}
        #: Seconds to wait before trying again (429 and 503 answers that say so).
        self.retry_after = retry_after

    @property
    def request_id(self) -> str | None:
        value = self.problem.get("request_id")
        return value if isinstance(value, str) else None

    @classmethod
    def from_problem(cls, problem: dict[str, Any], *, status: int | None = None) -> TidingsError:
        code = problem.get("code")
        detail = problem.get("detail")
        return cls(
            int(status if status is not None else problem.get("status") or 0),
            str(code) if code else "unknown",
            str(detail) if detail else None,
            problem,
        )

    @classmethod
    def from_response(cls, response: httpx.Response) -> TidingsError:
        problem: dict[str, Any]
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "code" in body:
            problem = body
        else:  # not one of ours (a proxy in between, for instance)
            problem = {
                "status": response.status_code,
                "code": f"http_{response.status_code}",
                "detail": response.text[:500] or None,
            }
        error = cls.from_problem(problem, status=response.status_code)
        error.retry_after = _retry_after(response.headers.get("retry-after"))
        return error


class RealtimeClosed(Exception):  # noqa: N818 - reads as what happened
    """The realtime connection ended for good: closed by the server and not resumable
    (session ended, policy violation without a way to refresh, reconnect attempts exhausted),
    or closed by the application while a command waited for its reply."""

    def __init__(self, close_code: int, reason: str = "", cause: BaseException | None = None):
        super().__init__(
            f"realtime connection closed ({close_code}{': ' + reason if reason else ''})"
        )
        self.close_code = close_code
        self.reason = reason
        self.cause = cause


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date; Tidings sends seconds
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


__all__ = ["RealtimeClosed", "TidingsError"]
