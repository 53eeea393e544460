"""Test set-up shared by every domain.

Each test that takes the `profile` fixture runs twice: on the embedded profile (a fresh SQLite
file, in-process queue and backplane) and on the scaled one (PostgreSQL + Redis). Isolation:
SQLite gets a copy of a migrated template per test; PostgreSQL gets a database per xdist worker,
truncated before each test; Redis keys and channels get a prefix per test.

A missing PostgreSQL or Redis fails the run loudly; it is never skipped. `--profiles embedded`
runs only the embedded half (`make test-sqlite`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

POSTGRES_ADMIN_DSN = os.environ.get(
    "TIDINGS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TIDINGS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# A developer's own TIDINGS_* variables must not leak into tests.
for _name in [name for name in os.environ if name.startswith("TIDINGS_")]:
    del os.environ[_name]

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from asgi_lifespan import LifespanManager  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from tests.support import leaks  # noqa: E402
from tidings.app import create_app  # noqa: E402
from tidings.db import migrate  # noqa: E402
from tidings.db.database import Database  # noqa: E402
from tidings.db.models import Base  # noqa: E402
from tidings.infra.logging import configure_logging  # noqa: E402
from tidings.settings import Settings  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILES = ("embedded", "scaled")
PROFILE_LABELS = {"embedded": "SQLite, in-process", "scaled": "PostgreSQL + Redis"}
LEAK_SECTION = "where the leaked sockets were opened"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--profiles",
        default=",".join(PROFILES),
        help="comma-separated profiles to run: embedded, scaled",
    )


def _selected_profiles(config: pytest.Config) -> list[str]:
    chosen = [p.strip() for p in str(config.getoption("--profiles")).split(",") if p.strip()]
    unknown = set(chosen) - set(PROFILES)
    if unknown:
        raise pytest.UsageError(f"unknown profiles: {sorted(unknown)}")
    return chosen


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "profile" in metafunc.fixturenames:
        profiles = _selected_profiles(metafunc.config)
        marker = metafunc.definition.get_closest_marker("profiles")
        if marker is not None:  # a test that is profile-independent runs on the ones it names
            profiles = [p for p in profiles if p in marker.args]
        metafunc.parametrize("profile", profiles, scope="session")


@pytest.hookimpl(trylast=True)  # after pytest's own unraisable hook is in place
def pytest_configure(config: pytest.Config) -> None:
    leaks.install(config)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    leaks.enter(item.nodeid, "setup")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    leaks.enter(item.nodeid, "call")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    leaks.enter(item.nodeid, "teardown")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    found = leaks.origins()
    if found is not None and report.failed:
        report.sections.append((LEAK_SECTION, found))
    return report


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _json_logs() -> None:
    # The production format: plain-text tracebacks in failure reports, and fast.
    configure_logging("info", "json")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    counts = dict.fromkeys(PROFILES, 0)
    for report in terminalreporter.stats.get("passed", []):
        for profile in PROFILES:
            if f"[{profile}" in report.nodeid or f"-{profile}]" in report.nodeid:
                counts[profile] += 1
    terminalreporter.write_sep("=", "profiles exercised")
    for profile in PROFILES:
        terminalreporter.write_line(
            f"{profile} ({PROFILE_LABELS[profile]}): {counts[profile]} tests passed"
        )
    _summarize_unraisable(terminalreporter)


def _summarize_unraisable(terminalreporter: Any) -> None:
    """Names what the garbage collector found unclosed, next to the counts.

    An unraisable warning surfaces in whichever test runs when the collector finds the object,
    often not the one that leaked it, and its traceback is long: the object's repr (addresses,
    coroutine names) is what points at the culprit, so it is repeated here at the end of the log.
    """
    lines: list[str] = []
    for kind in ("failed", "error"):
        for report in terminalreporter.stats.get(kind, []):
            text = getattr(report, "longreprtext", "")
            if "unraisable" not in text.lower() and "Exception ignored" not in text:
                continue
            # Plain failures prefix the lines with "E", exception groups with "|".
            stripped = (line.lstrip("E|+ ").rstrip() for line in text.splitlines())
            found = [
                line
                for line in stripped
                if ("Warning:" in line or "Exception ignored" in line)
                and not line.startswith("warnings.warn(")
            ]
            lines.append(f"{report.nodeid} ({report.when}):")
            lines.extend(f"  {line}" for line in dict.fromkeys(found))
            for title, content in report.sections:
                if title == LEAK_SECTION:
                    lines.extend(f"  {line}" for line in content.splitlines())
    if lines:
        terminalreporter.write_sep("=", "unraisable warnings (objects left unclosed)")
        for line in lines:
            terminalreporter.write_line(line)


# -- services ------------------------------------------------------------------------------


def _worker_id(request: pytest.FixtureRequest) -> str:
    return str(getattr(request.config, "workerinput", {}).get("workerid", "main"))


def _require(service: str, address: str, probe: Callable[[], Awaitable[None]]) -> None:
    try:
        asyncio.run(probe())
    except Exception as exc:
        pytest.fail(
            f"{service} is required for the scaled profile and is not reachable at {address}: "
            f"{exc!r}. Start it (see README) or run `make test-sqlite`.",
            pytrace=False,
        )


def _require_postgres() -> None:
    async def probe() -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
        await conn.close()

    _require("PostgreSQL", POSTGRES_ADMIN_DSN, probe)


def _require_redis() -> None:
    async def probe() -> None:
        client = aioredis.from_url(REDIS_URL)
        try:
            await client.ping()
        finally:
            await client.aclose()

    _require("Redis", REDIS_URL, probe)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrate.upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_database(request: pytest.FixtureRequest) -> Iterator[str]:
    _require_postgres()
    # Unique per run: two test runs on one machine must not drop each other's databases.
    run = str(getattr(request.config, "workerinput", {}).get("testrunuid", os.getpid()))[:8]
    name = f"tidings_test_{run}_{_worker_id(request)}"

    async def admin(*statements: str) -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_DSN)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
    )
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0]
    url = f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"
    migrate.upgrade(url)
    yield url
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _truncate_postgres(url: str) -> None:
    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)

    async def truncate() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
        finally:
            await conn.close()

    asyncio.run(truncate())


def _purge_redis_prefix(prefix: str) -> None:
    async def purge() -> None:
        client = aioredis.from_url(REDIS_URL)
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    asyncio.run(purge())


@pytest.fixture
def database_url(profile: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if profile == "embedded":
        path = tmp_path / "tidings.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("postgres_database")
    _truncate_postgres(url)
    return url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A `Database` on the test's database, disposed afterwards."""
    database = Database(database_url)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
def redis_prefix(profile: str) -> Iterator[str | None]:
    if profile == "embedded":
        yield None
        return
    _require_redis()
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    _purge_redis_prefix(prefix)


FAST_TIMINGS: dict[str, Any] = {
    "job_sweep_interval_seconds": 0.1,
    "job_lease_seconds": 3.0,
    "job_backoff_base_seconds": 0.05,
    "job_backoff_max_seconds": 0.5,
    "job_republish_after_seconds": 2.0,
    "outbox_poll_interval_seconds": 0.1,
    "outbox_lease_seconds": 2.0,
    "node_heartbeat_seconds": 0.2,
    "shutdown_grace_seconds": 2.0,
    # OWASP's argon2id floor: real hashing, a few milliseconds per test account.
    "argon2_time_cost": 2,
    "argon2_memory_kib": 19_456,
    "argon2_parallelism": 1,
    # Generous limits by default; rate-limit tests set their own.
    "rate_limit_ip": "100000/minute",
    "rate_limit_user": "100000/minute",
    "rate_limit_api_key": "100000/minute",
    "rate_limit_login": "100000/minute",
    "rate_limit_register": "100000/minute",
    "rate_limit_refresh": "100000/minute",
}


@pytest.fixture
def settings_values(
    profile: str, database_url: str, redis_prefix: str | None, tmp_path: Path
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "jwt_secret": secrets.token_urlsafe(48),
        "master_key": secrets.token_urlsafe(32),
        **FAST_TIMINGS,
    }
    if profile == "scaled":
        values["redis_url"] = REDIS_URL
        values["redis_prefix"] = redis_prefix
    return values


@pytest.fixture
def settings(settings_values: dict[str, Any]) -> Settings:
    return Settings(_env_file=None, **settings_values)  # type: ignore[call-arg]


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tidings.test") as http:
        yield http


# -- subprocesses --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(values: dict[str, Any], **extra: str) -> dict[str, str]:
    """Environment for a `tidings` subprocess with the same settings as the test."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TIDINGS_")}
    for key, value in values.items():
        if value is not None:
            env[f"TIDINGS_{key.upper()}"] = str(value)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["TIDINGS_PLUGINS"] = "tests.support.plugin"
    env.update(extra)
    return env


TIDINGS_BIN = str(Path(sys.executable).parent / "tidings")
