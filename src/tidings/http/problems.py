"""RFC 9457 problem details: every error leaves Tidings as `application/problem+json`.

Each problem has a stable machine `code` (clients switch on it, never on `title` or `detail`).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from tidings.infra.logging import get_logger

PROBLEM_JSON = "application/problem+json"
_log = get_logger(__name__)

# Codes for errors raised by the framework itself rather than by our services.
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class Problem(Exception):  # noqa: N818 - named after RFC 9457 problem details
    """Raise from a service or route to answer with a problem document."""

    status: int = 400
    code: str = "bad_request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        status: int | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or "")
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions


class NotFound(Problem):
    status, code = 404, "not_found"


class Unauthenticated(Problem):
    status, code = 401, "unauthenticated"


class Forbidden(Problem):
    status, code = 403, "forbidden"


class Conflict(Problem):
    status, code = 409, "conflict"


class RateLimited(Problem):
    status, code = 429, "rate_limited"

    def __init__(self, retry_after: int, detail: str | None = None) -> None:
        super().__init__(
            detail or "Too many requests; retry later.",
            headers={"Retry-After": str(max(1, retry_after))},
        )


def problem_response(
    status: int,
    code: str,
    *,
    detail: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": f"https://tidings.dev/problems/{code.replace('_', '-')}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "code": code,
    }
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update(extensions)
    return Response(
        orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


def _request_id(request: Request) -> str | None:
    value = getattr(request.state, "request_id", None)
    return value if isinstance(value, str) else None


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)  # noqa: S101 - registered for Problem only
    return problem_response(
        exc.status,
        exc.code,
        detail=exc.detail,
        instance=request.url.path,
        headers=exc.headers,
        request_id=_request_id(request),
        **exc.extensions,
    )


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)  # noqa: S101
    errors = [
        {
            "field": ".".join(str(part) for part in error["loc"]),
            "message": error["msg"],
            "type": error["type"],
        }
        for error in exc.errors()
    ]
    return problem_response(
        400,
        "validation_failed",
        detail="The request is not valid; see `errors`.",
        instance=request.url.path,
        errors=errors,
        request_id=_request_id(request),
    )


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101
    status = exc.status_code
    detail = exc.detail if exc.detail != HTTPStatus(status).phrase else None
    return problem_response(
        status,
        _STATUS_CODES.get(status, f"http_{status}"),
        detail=detail,
        instance=request.url.path,
        headers=dict(exc.headers) if exc.headers else None,
        request_id=_request_id(request),
    )


async def _on_unhandled(request: Request, exc: Exception) -> Response:
    # The trace goes to the log (with the request id), never to the client.
    _log.error("unhandled_exception", path=request.url.path, exc_info=exc)
    return problem_response(
        500,
        "internal_error",
        detail="Something went wrong on our side; quote the request id when reporting it.",
        request_id=_request_id(request),
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_unhandled)
