"""Operational endpoints: liveness, readiness, metrics, cluster membership, version."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from tidings import __version__
from tidings.http.problems import problem_response
from tidings.identity.deps import AdminDep
from tidings.runtime import Runtime

router = APIRouter(tags=["system"])
READINESS_TIMEOUT_SECONDS = 2.0


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the database, Redis and the job broker answer",
    responses={503: {"description": "A dependency is unreachable (problem+json)"}},
)
async def readyz(request: Request) -> Response:
    runtime = _runtime(request)
    checks: dict[str, Any] = {"database": await _check(runtime.db.ping())}
    if runtime.redis is not None:
        checks["redis"] = await _check(runtime.redis.ping())
        checks["broker"] = checks["redis"]  # job transport and event stream live in Redis
    if not runtime.started:
        checks["runtime"] = "starting"
    if all(value == "ok" for value in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    return problem_response(
        503, "not_ready", detail="A dependency is not reachable.", checks=checks
    )


async def _check(probe: Any) -> str:
    try:
        await asyncio.wait_for(probe, READINESS_TIMEOUT_SECONDS)
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/v1/system/version", summary="Server version and profile")
async def version(request: Request) -> dict[str, str]:
    return {"version": __version__, "profile": _runtime(request).settings.profile.value}


@router.get(
    "/api/v1/system/nodes", summary="Tidings processes seen alive on the backplane (admins)"
)
async def nodes(request: Request, _: AdminDep) -> dict[str, Any]:
    runtime = _runtime(request)
    return {"self": runtime.node_id, "nodes": [asdict(node) for node in runtime.cluster.alive()]}
