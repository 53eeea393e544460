"""The process runtime: engines and background machinery built from Settings.

`serve` and `worker` each build one Runtime. Embedded, everything is in-process; scaled, the
database is PostgreSQL and Redis carries the backplane, the job transport and the event stream.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import socket
import uuid
from typing import Any, Literal

import redis.asyncio as aioredis

from tidings.audit.service import AuditConsumer
from tidings.db.database import Database
from tidings.delivery import jobs as delivery_jobs
from tidings.delivery.component import Delivery
from tidings.delivery.templates import Templates
from tidings.events.dispatcher import OutboxDispatcher
from tidings.events.sinks import RedisEventStream
from tidings.identity.component import Identity
from tidings.infra.backplane import Backplane, InProcessBackplane, RedisBackplane
from tidings.infra.crypto import Keyring
from tidings.infra.logging import get_logger
from tidings.infra.redis import redis_client
from tidings.jobs.registry import JobRegistry, registry
from tidings.jobs.transport import InProcessTransport, JobTransport, RedisStreamTransport
from tidings.jobs.worker import Worker, WorkerConfig
from tidings.messaging.component import Messaging
from tidings.messaging.consumers import WorkspaceMembershipConsumer
from tidings.realtime.gateway import Gateway, RealtimePublisher
from tidings.search.service import Search
from tidings.settings import Profile, Settings, decode_master_key
from tidings.system import maintenance
from tidings.system.cluster import ClusterMembership

Role = Literal["serve", "worker", "cli"]
OUTBOX_POKE_CHANNEL = "outbox"
_log = get_logger(__name__)


class Runtime:
    def __init__(
        self, settings: Settings, *, role: Role, job_registry: JobRegistry | None = None
    ) -> None:
        self.settings = settings
        self.role = role
        self.node_id = f"{role}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.registry = job_registry or registry
        maintenance.register(self.registry)
        delivery_jobs.register(self.registry)
        self.db = Database(settings.effective_database_url, pool_size=settings.database_pool_size)
        self.redis: aioredis.Redis | None = None
        self.backplane: Backplane
        self.transport: JobTransport
        if settings.profile is Profile.SCALED:
            assert settings.redis_url is not None  # noqa: S101 - enforced by Settings
            self.redis = redis_client(settings.redis_url)
            prefix = settings.redis_prefix
            self.backplane = RedisBackplane(self.redis, prefix=prefix)
            self.transport = RedisStreamTransport(
                self.redis, stream=f"{prefix}jobs", consumer=self.node_id
            )
        else:
            self.backplane = InProcessBackplane()
            self.transport = InProcessTransport()
        self.dispatcher = OutboxDispatcher(
            self.db,
            node_id=self.node_id,
            batch_size=settings.outbox_batch_size,
            poll_interval=settings.outbox_poll_interval_seconds,
            lease_seconds=settings.outbox_lease_seconds,
        )
        self.identity = Identity(settings, self.db, self.backplane, self.redis)
        self.messaging = Messaging(self.db, send_batch_size=settings.message_send_batch_size)
        self.search = Search(self.db)
        assert settings.master_key is not None  # noqa: S101 - load_settings fills it
        self.keyring = Keyring(self.db, decode_master_key(settings.master_key))
        self.templates = Templates(self.db)
        self.delivery = Delivery(
            settings, self.db, self.keyring, self.templates, self.identity.limiter
        )
        # First: the realtime hop is the one people wait for.
        self.dispatcher.add_live(RealtimePublisher(self.backplane))
        self.dispatcher.add_transactional(AuditConsumer())
        self.dispatcher.add_transactional(WorkspaceMembershipConsumer(self.messaging.conversations))
        if self.redis is not None:
            self.dispatcher.add_live(
                RedisEventStream(
                    self.redis,
                    stream=f"{settings.redis_prefix}events",
                    maxlen=settings.event_stream_maxlen,
                )
            )
        runs_worker = role == "worker" or (role == "serve" and settings.runs_worker_in_serve)
        self.worker = (
            Worker(
                self.db,
                self.transport,
                self.registry,
                node_id=self.node_id,
                config=WorkerConfig(
                    concurrency=settings.worker_concurrency,
                    lease_seconds=settings.job_lease_seconds,
                    sweep_interval=settings.job_sweep_interval_seconds,
                    republish_after=settings.job_republish_after_seconds,
                    backoff_base=settings.job_backoff_base_seconds,
                    backoff_max=settings.job_backoff_max_seconds,
                    shutdown_grace=settings.shutdown_grace_seconds,
                    default_max_attempts=settings.job_max_attempts,
                ),
                resources={"settings": settings, "delivery_runner": self.delivery.runner},
            )
            if runs_worker
            else None
        )
        self.cluster = ClusterMembership(
            self.backplane,
            node_id=self.node_id,
            role=role,
            interval=settings.node_heartbeat_seconds,
        )
        self.realtime: Gateway | None = None
        if role == "serve":
            self.realtime = Gateway(
                settings,
                db=self.db,
                backplane=self.backplane,
                redis=self.redis,
                identity=self.identity,
                messaging=self.messaging,
                cluster=self.cluster,
                node_id=self.node_id,
            )
        self.db.hooks.events_committed = self._on_events_committed
        if self.db.is_sqlite:
            self.db.hooks.events_stored = self._on_events_stored
        self.db.hooks.jobs_committed = self.transport.publish
        self._poke_pending = False
        self._background: set[asyncio.Task[None]] = set()
        self.started = False
        for module_name in settings.plugins:
            _load_plugin(module_name, self)

    async def start(self) -> None:
        await self.backplane.start()
        await self.backplane.subscribe(OUTBOX_POKE_CHANNEL, lambda _c, _d: self.dispatcher.poke())
        await self.identity.start()
        # The first keyring key is made now, never inside a transaction that seals a secret
        # (on SQLite that second writer would wait on the first); a wrong root key fails here.
        await self.keyring.ensure_primary()
        await self.cluster.start()
        if self.realtime is not None:
            await self.realtime.start()
        self.dispatcher.start()
        if self.worker is not None:
            await self.worker.start()
            self.db.hooks.local_worker = self.worker
        self.started = True
        _log.info(
            "runtime_started", node=self.node_id, role=self.role, **self.settings.safe_summary()
        )

    async def stop(self) -> None:
        self.db.hooks.local_worker = None
        if self.worker is not None:
            await self.worker.stop()
        await self.dispatcher.stop()
        if self.realtime is not None:
            await self.realtime.stop()
        await self.identity.stop()
        await self.delivery.close()
        await self.cluster.close()
        await self.backplane.close()
        for task in list(self._background):
            await asyncio.gather(task, return_exceptions=True)
        await self.db.dispose()
        if self.redis is not None:
            await self.redis.aclose()
        self.started = False
        _log.info("runtime_stopped", node=self.node_id)

    def _on_events_committed(self) -> None:
        self.dispatcher.poke()
        if self.redis is None or self._poke_pending or self.dispatcher.is_leader:
            return
        # Another process holds the dispatcher lease: wake it too, one message per burst (a
        # standby ignores pokes, so when this process leads nobody else needs one).
        self._poke_pending = True
        task = asyncio.create_task(self._poke_cluster())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _on_events_stored(self, rows: list[tuple[Any, ...]]) -> None:
        if not await self.dispatcher.take(rows):
            self._on_events_committed()

    async def _poke_cluster(self) -> None:
        self._poke_pending = False
        try:
            await self.backplane.publish(OUTBOX_POKE_CHANNEL, b"1")
        except Exception:
            _log.warning("outbox_poke_failed", exc_info=True)


def _load_plugin(module_name: str, runtime: Runtime) -> None:
    module = importlib.import_module(module_name)
    setup = getattr(module, "setup", None)
    if callable(setup):
        setup(runtime)


GC_YOUNG_THRESHOLD = 20_000


def settle_heap() -> None:
    """Once a process has started: collect, then move every live object to the permanent
    generation, where the collector no longer looks.

    Modules, routes, models and caches live as long as the process. Left in the oldest
    generation, each full collection walks them all again: 80 to 130 ms here (~200,000 objects),
    during which nothing else runs (bench.delivery saw all 32 provider slots idle for ~100 ms).

    Then the youngest generation is collected after 20,000 new container objects rather than
    700: a request allocates a few hundred (models, dicts, frames), nearly all freed at once
    by reference counting, so the default threshold ran a collection every few requests for
    little to collect (a chat send cost 175 µs of CPU in-process, 162 µs with the new
    threshold). What cycles there are wait a little longer; memory stays bounded by it.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
