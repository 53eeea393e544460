"""The ASGI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.middleware.cors import CORSMiddleware

from tidings import __version__
from tidings.audit.routes import router as audit_router
from tidings.db import migrate
from tidings.delivery.routes import routers as delivery_routers
from tidings.delivery.routes import send as send_router
from tidings.delivery.routes import send_batch_hot
from tidings.delivery.routes import send_message_hot as send_one_hot
from tidings.delivery.schemas import BatchIn, SendIn
from tidings.delivery.template_routes import templates_router
from tidings.http.hot import add_hot_post
from tidings.http.middleware import BodyGuardMiddleware, RequestContextMiddleware
from tidings.http.problems import install_problem_handlers
from tidings.identity.routes import routers as identity_routers
from tidings.infra.logging import configure_logging, get_logger
from tidings.messaging.routes import messages as messages_router
from tidings.messaging.routes import routers as messaging_routers
from tidings.messaging.routes import send_message_hot
from tidings.messaging.schemas import MessageIn
from tidings.onboarding.routes import router as onboarding_router
from tidings.realtime.routes import presence_router
from tidings.realtime.routes import router as realtime_router
from tidings.runtime import Runtime, settle_heap
from tidings.search.routes import router as search_router
from tidings.settings import Profile, Settings, load_settings
from tidings.system.routes import router as system_router
from tidings.web import mount_web

_log = get_logger(__name__)


class SchemaOutOfDateError(RuntimeError):
    pass


async def prepare_database(settings: Settings) -> None:
    """Embedded: migrate on start. Scaled: refuse to serve an unmigrated database."""
    url = settings.effective_database_url
    if settings.profile is Profile.EMBEDDED:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        await migrate.upgrade_async(url)
        return
    current, head = await migrate.current_revision(url), migrate.head_revision()
    if current != head:
        raise SchemaOutOfDateError(
            f"database schema is at {current or 'nothing'}, code expects {head}: "
            "run `tidings migrate` first"
        )


def _add_routes(app: FastAPI, router: APIRouter) -> None:
    """Put a router's routes in the app's own list, once. FastAPI (since 0.137) keeps an
    included router as a node that every request walks with its own bookkeeping: matching a
    chat send behind a dozen routers took 150 µs, 15 % of the request's CPU; a flat list
    halves it. Our routers carry only a prefix and tags, which their routes already hold."""
    app.router.routes.extend(router.routes)


def create_app(
    settings: Settings | None = None,
    *,
    routers: Sequence[APIRouter] = (),
    settle_heap_after_start: bool = False,
) -> FastAPI:
    """The ASGI app. `settle_heap_after_start`: for a long-lived server process (`tidings
    serve`), not for tests that build many apps in one process."""
    settings = settings or load_settings()
    runtime = Runtime(settings, role="serve")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        await prepare_database(settings)
        await runtime.start()
        if settle_heap_after_start:
            settle_heap()
        try:
            # Lifespan state: uvicorn hands it to the WebSocket protocol (`realtime`).
            yield {"realtime": runtime.realtime}
        finally:
            await runtime.stop()

    app = FastAPI(
        title="Tidings",
        version=__version__,
        summary="Self-hosted messaging: chat, conversations, send API, automation, events.",
        lifespan=lifespan,
        # Tidings reports through Prometheus metrics and its logs and ships no OpenTelemetry
        # SDK, so FastAPI's native telemetry could only find the no-op providers: asking costs
        # two environment lookups per request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.runtime = runtime
    app.state.settings = settings
    install_problem_handlers(app)
    # Routes are matched in order, one by one: after the probes, the busiest, the send API and
    # a chat send (no route shadows another: tests/http/test_routing.py).
    busiest = [send_router, messages_router]
    rest = [r for r in [*delivery_routers, *messaging_routers] if r not in busiest]
    for router in [
        system_router,
        *busiest,
        *rest,
        onboarding_router,
        *identity_routers,
        audit_router,
        search_router,
        templates_router,
        realtime_router,
        presence_router,
        *routers,
    ]:
        _add_routes(app, router)
    # The busiest POSTs skip FastAPI's per-request machinery for a valid body (http/hot.py).
    add_hot_post(app, "/api/v1/messages", SendIn, send_one_hot)
    add_hot_post(app, "/api/v1/messages/batch", BatchIn, send_batch_hot)
    add_hot_post(
        app, "/api/v1/conversations/{conversation_id:uuid}/messages", MessageIn, send_message_hot
    )
    # The web app last: its shell routes and static files never shadow an API path.
    mount_web(app)
    # Added last = outermost: request ids wrap everything, including CORS preflights.
    app.add_middleware(
        BodyGuardMiddleware,
        max_body_bytes=settings.max_body_bytes,
        # Providers post their status reports as forms (Twilio, Mailgun), not JSON.
        other_media_prefixes=("/api/v1/callbacks/",),
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(RequestContextMiddleware)
    return app


def create_app_from_env() -> FastAPI:
    """Entry point for `uvicorn --factory tidings.app:create_app_from_env`: logs as `tidings
    serve` does."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
