"""`tidings` command line: serve, worker, migrate, check, keys, version."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
import uvicorn
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from tidings import __version__
from tidings.db import migrate as migrations
from tidings.infra.logging import configure_logging
from tidings.settings import Profile, Settings, SettingsError, decode_master_key, load_settings

if TYPE_CHECKING:
    from tidings.infra.crypto import KeyInfo, Keyring, RewrapReport, RotationReport

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
        create_app(settings, settle_heap_after_start=True),
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
    # The same event loop as `serve` (uvicorn's "auto"): uvloop when it is installed.
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_run_worker(settings))


async def _run_worker(settings: Settings) -> None:
    from tidings.app import prepare_database
    from tidings.runtime import Runtime, settle_heap

    await prepare_database(settings)
    runtime = Runtime(settings, role="worker")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await runtime.start()
    settle_heap()
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


keys_app = typer.Typer(
    help="The keyring that encrypts stored credentials (see docs/security.md).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
BatchSize = Annotated[int, typer.Option(min=1, max=10_000, help="Records per transaction")]


@keys_app.command("rotate")
def keys_rotate(batch_size: BatchSize = 200) -> None:
    """Add a keyring key, make it primary, re-wrap every record to it; no downtime."""
    settings = _settings()

    async def run() -> RotationReport:
        from tidings.infra.crypto import rotate_keys

        async with _keyring(settings) as keyring:
            return await rotate_keys(keyring, batch_size=batch_size)

    report = asyncio.run(run())
    console.print(f"new primary key {report.new_key_id}")
    _print_rewrap(report.rewrap, report.elapsed_ms)


@keys_app.command("rewrap")
def keys_rewrap(batch_size: BatchSize = 200) -> None:
    """Finish re-wrapping records to the current primary key (after an interrupted rotate)."""
    settings = _settings()

    async def run() -> RewrapReport:
        from tidings.infra.crypto import rewrap_all

        async with _keyring(settings) as keyring:
            return await rewrap_all(keyring, batch_size=batch_size)

    report = asyncio.run(run())
    _print_rewrap(report, report.elapsed_ms)


@keys_app.command("list")
def keys_list() -> None:
    """Keyring keys: id, primary, created, retired, how many records each one wraps."""
    settings = _settings()

    async def run() -> list[KeyInfo]:
        from tidings.infra.crypto import list_keys

        async with _keyring(settings) as keyring:
            return await list_keys(keyring.db)

    # Plain columns, never truncated: ids are copied from here.
    row = "{:<20}  {:<7}  {:<16}  {:<16}  {:>7}"
    typer.echo(row.format("id", "primary", "created (UTC)", "retired (UTC)", "records"))
    for key in asyncio.run(run()):
        typer.echo(
            row.format(
                key.id,
                "yes" if key.is_primary else "",
                f"{key.created_at:%Y-%m-%d %H:%M}",
                f"{key.retired_at:%Y-%m-%d %H:%M}" if key.retired_at else "",
                key.records,
            )
        )


@keys_app.command("rewrap-root")
def keys_rewrap_root(
    old_key_file: Annotated[
        Path,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="File holding the previous TIDINGS_MASTER_KEY (base64url)",
        ),
    ],
) -> None:
    """Re-wrap the keyring from the old root key (file) to TIDINGS_MASTER_KEY (the new one)."""
    settings = _settings()
    try:
        old_root = decode_master_key(SecretStr(old_key_file.read_text(encoding="utf-8")))
    except ValueError as exc:
        _die(f"{old_key_file}: {str(exc).replace('TIDINGS_MASTER_KEY', 'the old key')}")

    async def run() -> int:
        from tidings.infra.crypto import change_root_key

        async with _keyring(settings) as keyring:
            return await change_root_key(keyring.db, old_root, _root_key(settings))

    changed = asyncio.run(run())
    console.print(f"{changed} keyring keys re-wrapped under the new root key")


def _root_key(settings: Settings) -> bytes:
    assert settings.master_key is not None  # noqa: S101 - load_settings fills or requires it
    return decode_master_key(settings.master_key)


@asynccontextmanager
async def _keyring(settings: Settings) -> AsyncIterator[Keyring]:
    """A keyring on its own small engine; a refusal (wrong root key …) exits 1 with its reason."""
    from tidings.db.database import Database
    from tidings.infra.crypto import Keyring, SecretUnavailable

    db = Database(settings.effective_database_url, pool_size=2)
    try:
        yield Keyring(db, _root_key(settings))
    except SecretUnavailable as exc:
        _die(str(exc), code=1)
    finally:
        await db.dispose()


def _print_rewrap(report: RewrapReport, elapsed_ms: float) -> None:
    plural = "" if report.rewrapped == 1 else "s"
    console.print(
        f"{report.rewrapped} record{plural} re-wrapped to {report.primary} in {elapsed_ms:.0f} ms"
    )
    if report.changed_meanwhile:
        console.print(f"{report.changed_meanwhile} replaced meanwhile (already sealed afresh)")
    if report.retired:
        console.print(f"retired: {', '.join(report.retired)}")
    if report.failed:
        console.print(f"{len(report.failed)} records could not be opened:")
        for record in report.failed:
            console.print(f"  {record}")
        raise typer.Exit(1)
    if report.remaining:
        console.print(
            f"{report.remaining} records still on older keys "
            "(sealed meanwhile by a process that had not seen the new key): "
            "run `tidings keys rewrap` in a minute"
        )


@app.command()
def version() -> None:
    """Print the version."""
    console.print(f"tidings {__version__}")


def main() -> None:
    app()
