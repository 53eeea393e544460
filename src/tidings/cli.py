"""`tidings` command line: serve, worker, migrate, check, version."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Annotated, NoReturn

import typer
import uvicorn
from rich.console import Console
from rich.table import Table

from tidings import __version__
from tidings.db import migrate as migrations
from tidings.infra.logging import configure_logging
from tidings.settings import Profile, Settings, SettingsError, load_settings

app = typer.Typer(
    name="tidings",
    help="Tidings: self-hosted messaging — chat, conversations, send API, automation, events.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
EXIT_BAD_SETTINGS = 2


def _settings() -> Settings:
    try:
        settings = load_settings()
    except SettingsError as exc:
        _die(str(exc))
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _die(message: str, code: int = EXIT_BAD_SETTINGS) -> NoReturn:
    print(f"tidings: {message}", file=sys.stderr)
    raise typer.Exit(code)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (TIDINGS_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (TIDINGS_PORT)")] = None,
) -> None:
    """Serve HTTP and WebSocket; embedded, also run the job worker in this process."""
    settings = _settings()
    from tidings.app import create_app
    from tidings.realtime.connection import WebSocketConnection

    config = uvicorn.Config(
        create_app(settings),
        # Upgrade requests go to the gateway's own protocol, not through ASGI (see
        # tidings/realtime/connection.py); plain HTTP is parsed by httptools.
        http="httptools",
        ws=WebSocketConnection,
        host=host or settings.host,
        port=port or settings.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        lifespan="on",
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except Exception as exc:  # start-up failures: say what, exit non-zero
        _die(str(exc), code=1)
    if not server.started:
        raise typer.Exit(1)


@app.command()
def worker() -> None:
    """Run jobs (and stand by as outbox dispatcher). Scaled profile: run as many as you need."""
    settings = _settings()
    if settings.profile is Profile.EMBEDDED:
        _die(
            "the embedded profile runs jobs inside `tidings serve`; "
            "set TIDINGS_DATABASE_URL and TIDINGS_REDIS_URL to run separate workers"
        )
    asyncio.run(_run_worker(settings))


async def _run_worker(settings: Settings) -> None:
    from tidings.app import prepare_database
    from tidings.runtime import Runtime

    await prepare_database(settings)
    runtime = Runtime(settings, role="worker")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await runtime.start()
    await stop.wait()
    await runtime.stop()


@app.command()
def migrate() -> None:
    """Bring the database schema to the latest revision."""
    settings = _settings()
    if settings.profile is Profile.EMBEDDED:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(settings.effective_database_url)
    console.print(f"database at revision {migrations.head_revision()}")


@app.command()
def check() -> None:
    """Validate configuration and reach every service the profile needs."""
    settings = _settings()
    results = asyncio.run(_probe(settings))
    table = Table(title=f"Tidings {__version__} — {settings.profile.value} profile")
    table.add_column("check")
    table.add_column("result")
    for key, value in settings.safe_summary().items():
        table.add_row(key, str(value))
    failed = False
    for name, outcome in results.items():
        failed |= outcome != "ok" and not outcome.startswith("ok")
        table.add_row(name, outcome)
    console.print(table)
    if failed:
        raise typer.Exit(1)


async def _probe(settings: Settings) -> dict[str, str]:
    from tidings.db.database import Database
    from tidings.infra.redis import redis_client

    results: dict[str, str] = {}
    db = Database(settings.effective_database_url, pool_size=1)
    try:
        await asyncio.wait_for(db.ping(), 5)
        current = await migrations.current_revision(settings.effective_database_url)
        head = migrations.head_revision()
        results["database"] = "ok"
        results["schema"] = (
            "ok (at head)" if current == head else f"behind: at {current}, head is {head}"
        )
    except Exception as exc:
        results["database"] = f"unreachable: {type(exc).__name__}: {exc}"
    finally:
        await db.dispose()
    if settings.redis_url:
        client = redis_client(settings.redis_url)
        try:
            await asyncio.wait_for(client.ping(), 5)
            info = await client.info("server")
            results["redis"] = f"ok (redis {info.get('redis_version')})"
        except Exception as exc:
            results["redis"] = f"unreachable: {type(exc).__name__}"
        finally:
            await client.aclose()
    return results


@app.command()
def version() -> None:
    """Print the version."""
    console.print(f"tidings {__version__}")


def main() -> None:
    app()
