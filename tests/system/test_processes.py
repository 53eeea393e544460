"""Real processes: SIGKILL mid-job, a crash between commit and dispatch, two servers on Redis,
and `make run` answering /healthz."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select

from tests.conftest import REPO_ROOT, TIDINGS_BIN, child_env, free_port
from tests.support.helpers import eventually
from tests.support.processes import kill9, spawn, wait_for, wait_http_ok
from tidings.db.database import Database
from tidings.events.models import Event
from tidings.events.service import NewEvent, emit_many
from tidings.jobs import service
from tidings.jobs.models import Job, JobStatus

pytestmark = pytest.mark.slow


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _serve_args(port: int) -> list[str]:
    return [TIDINGS_BIN, "serve", "--port", str(port)]


def _role_args(profile: str, port: int) -> list[str]:
    # Embedded, jobs run inside `serve`; scaled, in a separate `tidings worker`.
    return _serve_args(port) if profile == "embedded" else [TIDINGS_BIN, "worker"]


async def _enqueue(url: str, name: str, payload: dict[str, Any]) -> uuid.UUID:
    # Committed by a process that has no transport: the worker's sweeper must find it.
    db = Database(url)
    try:
        async with db.transaction() as session:
            return await service.enqueue(session, name, payload, max_attempts=5)
    finally:
        await db.dispose()


async def _job(url: str, job_id: uuid.UUID) -> Job:
    db = Database(url)
    try:
        async with db.read() as session:
            job = await session.get(Job, job_id)
            assert job is not None
            return job
    finally:
        await db.dispose()


async def _finished(url: str, job_id: uuid.UUID) -> Job | None:
    job = await _job(url, job_id)
    return job if job.status != JobStatus.RUNNING.value else None


async def test_worker_killed_mid_job_runs_it_again(
    profile: str, settings_values: dict[str, Any], tmp_path: Path
) -> None:
    env = child_env(settings_values)
    url = settings_values["database_url"]
    work_log = tmp_path / "work.log"
    job_id = await _enqueue(url, "test.file_log", {"path": str(work_log), "sleep": 4})

    first_log = tmp_path / "first.log"
    with spawn(_role_args(profile, free_port()), env, first_log) as first:
        await asyncio.to_thread(
            wait_for, lambda: any(line.startswith("start") for line in _lines(work_log)), 30
        )
        kill9(first)
    assert first.returncode == -9
    assert not any(line.startswith("done") for line in _lines(work_log))

    with spawn(_role_args(profile, free_port()), env, tmp_path / "second.log"):
        await asyncio.to_thread(
            wait_for, lambda: any(line.startswith("done") for line in _lines(work_log)), 40
        )
        # Completions are written in batches after the handler returns (they wait up to
        # 10 ms for company): the row says `succeeded` a moment after the handler's last line.
        job = await eventually(lambda: _finished(url, job_id))
        assert job is not None
    starts = [line.split() for line in _lines(work_log) if line.startswith("start")]
    dones = [line.split() for line in _lines(work_log) if line.startswith("done")]
    assert [s[2] for s in starts] == ["1", "2"]  # attempt 1 died with the worker, 2 ran
    assert len(dones) == 1
    assert dones[0][2] == "2"
    assert starts[0][3] != dones[0][3]  # a different process finished it
    assert job.status == JobStatus.SUCCEEDED.value
    assert job.attempts == 2


async def test_dispatcher_killed_after_commit_loses_nothing(
    profile: str, settings_values: dict[str, Any], tmp_path: Path
) -> None:
    url = settings_values["database_url"]
    streams = ["conversation:1", "conversation:2", "conversation:3"]
    db = Database(url)
    try:
        for index in range(10):
            async with db.transaction() as session:
                await emit_many(
                    session, [NewEvent("message.created", s, {"i": index}) for s in streams]
                )
    finally:
        await db.dispose()

    record = tmp_path / "received.jsonl"
    crash_env = child_env(
        settings_values, TIDINGS_TEST_RECORD=str(record), TIDINGS_TEST_DIE_ON_DISPATCH="1"
    )
    crash_log = tmp_path / "crash.log"
    with spawn(_serve_args(free_port()), crash_env, crash_log) as crashing:
        await asyncio.to_thread(crashing.wait, 30)
    assert crashing.returncode == -9, crash_log.read_text()
    first_delivery = len(_lines(record))
    assert first_delivery > 0  # the recorder saw the batch before the crash: it will repeat

    env = child_env(settings_values, TIDINGS_TEST_RECORD=str(record))
    with spawn(_serve_args(free_port()), env, tmp_path / "restart.log"):
        await asyncio.to_thread(
            wait_for, lambda: len(_lines(record)) >= first_delivery + 30, 30, "redelivery"
        )
        # Marks are written just after the hand-off to consumers: wait for them to land.
        all_marked = await eventually(_all_marked(url), within=20)
    received = [orjson.loads(line) for line in _lines(record)]
    unique: dict[str, dict[str, Any]] = {}
    for event in received:
        unique.setdefault(event["id"], event)
    assert len(unique) == 30  # every committed event arrived
    assert all_marked
    by_stream: dict[str, list[int]] = defaultdict(list)
    for event in unique.values():
        by_stream[event["stream"]].append(event["seq"])
    assert dict(by_stream) == {s: list(range(1, 11)) for s in streams}  # in order, once each


def _all_marked(url: str) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return await _count_undispatched(url) == 0

    return probe


async def _count_undispatched(url: str) -> int:
    db = Database(url)
    try:
        async with db.read() as session:
            return int(
                await session.scalar(
                    select(func.count()).select_from(Event).where(Event.dispatched_at.is_(None))
                )
                or 0
            )
    finally:
        await db.dispose()


@pytest.mark.profiles("scaled")
def test_two_servers_reach_each_other_over_redis(
    profile: str, settings_values: dict[str, Any], tmp_path: Path
) -> None:
    env = child_env(settings_values)
    port_a, port_b = free_port(), free_port()
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    with spawn(_serve_args(port_a), env, log_a) as a, spawn(_serve_args(port_b), env, log_b) as b:
        wait_http_ok(f"http://127.0.0.1:{port_a}/healthz", a, log_a)
        wait_http_ok(f"http://127.0.0.1:{port_b}/healthz", b, log_b)

        # The first account of the install is its administrator; its token works on both.
        registered = httpx.post(
            f"http://127.0.0.1:{port_a}/api/v1/auth/register",
            json={
                "email": "ops@example.com",
                "password": "correct horse battery",
                "display_name": "ops",
            },
            timeout=10,
        )
        assert registered.status_code == 201, registered.text
        admin = {"Authorization": f"Bearer {registered.json()['tokens']['access_token']}"}

        def nodes(port: int) -> dict[str, Any]:
            response = httpx.get(
                f"http://127.0.0.1:{port}/api/v1/system/nodes", headers=admin, timeout=2
            )
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        wait_for(lambda: len(nodes(port_a)["nodes"]) == 2 and len(nodes(port_b)["nodes"]) == 2)
        seen_by_a = {n["node_id"] for n in nodes(port_a)["nodes"]}
        assert nodes(port_b)["self"] in seen_by_a
        assert httpx.get(f"http://127.0.0.1:{port_a}/readyz", timeout=2).json()["checks"] == {
            "database": "ok",
            "redis": "ok",
            "broker": "ok",
        }
        kill9(b)
        # A dead process drops out after three missed heartbeats.
        wait_for(lambda: len(nodes(port_a)["nodes"]) == 1, 10, "dead node forgotten")


@pytest.mark.profiles("embedded")
def test_make_run_answers_healthz_within_10_seconds(profile: str, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(TIDINGS_PORT=str(port), TIDINGS_DATA_DIR=str(tmp_path / "data"))
    log = tmp_path / "make-run.log"
    with spawn(["make", "-s", "-C", str(REPO_ROOT), "run"], env, log) as process:
        elapsed = wait_http_ok(f"http://127.0.0.1:{port}/healthz", process, log, within=10)
    assert elapsed < 10
    assert (tmp_path / "data" / "tidings.db").exists()
    assert (tmp_path / "data" / "secrets.json").exists()


def test_cli_check_reports_what_it_found(profile: str, settings_values: dict[str, Any]) -> None:
    result = subprocess.run(
        [TIDINGS_BIN, "check"],
        env=child_env(settings_values),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{profile} profile" in result.stdout
    assert "ok (at head)" in result.stdout
    if profile == "scaled":
        assert "ok (redis" in result.stdout
    assert settings_values["jwt_secret"] not in result.stdout


@pytest.mark.profiles("embedded")
def test_the_uvicorn_factory_serves_and_writes_its_access_log(
    settings_values: dict[str, Any], tmp_path: Path
) -> None:
    # Nothing has configured logging before uvicorn calls the factory (as `tidings serve`
    # does): a request must still be answered and logged as one JSON line.
    port = free_port()
    log = tmp_path / "uvicorn.log"
    args = [sys.executable, "-m", "uvicorn", "--factory", "tidings.app:create_app_from_env"]
    with spawn([*args, "--port", str(port)], child_env(settings_values), log) as process:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", process, log)
        answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/nowhere", timeout=5)
        assert answer.status_code == 404
        request_id = answer.headers["x-request-id"]

        def logged() -> list[dict[str, Any]]:
            return [
                orjson.loads(line)
                for line in _lines(log)
                if line.startswith("{") and request_id in line
            ]

        wait_for(logged, 10, "the access log line")
    [line] = logged()
    assert line["event"] == "request"
    assert line["status"] == 404
    assert "unhandled_exception" not in log.read_text()
