"""The delivery component of one process: connectors, the send API's service, the job runner."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import select
from starlette.requests import Request

from tidings.db.base import utcnow
from tidings.db.database import Database
from tidings.delivery.connectors.http import make_context
from tidings.delivery.connectors_service import Connectors
from tidings.delivery.guards import CircuitBreakers, ConnectorThrottle
from tidings.delivery.jobs import DeliveryPolicy, DeliveryRunner
from tidings.delivery.models import DeliveryAttempt
from tidings.delivery.schemas import ConnectorStatsOut
from tidings.delivery.service import Deliveries, TemplateRenderer
from tidings.delivery.statuses import AttemptOutcome
from tidings.infra.crypto import Keyring
from tidings.infra.ratelimit import RateLimiter
from tidings.settings import Settings

STATS_SAMPLE = 5000


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index], 3)


class Delivery:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        keyring: Keyring,
        templates: TemplateRenderer,
        limiter: RateLimiter,
    ) -> None:
        self._settings = settings
        self._db = db
        self.context = make_context(settings)
        self.connectors = Connectors(db, keyring, self.context)
        self.deliveries = Deliveries(
            db,
            self.connectors,
            templates,
            max_attempts=settings.delivery_max_attempts,
            idempotency_ttl_hours=settings.idempotency_ttl_hours,
        )
        self.breakers = CircuitBreakers(
            failure_threshold=settings.delivery_circuit_failure_threshold,
            open_seconds=settings.delivery_circuit_open_seconds,
        )
        self.runner = DeliveryRunner(
            self.deliveries,
            self.connectors,
            self.breakers,
            ConnectorThrottle(limiter),
            DeliveryPolicy(
                backoff_base=settings.delivery_backoff_base_seconds,
                backoff_max=settings.delivery_backoff_max_seconds,
            ),
        )

    async def close(self) -> None:
        await self.context.aclose()

    def public_url_of(self, request: Request) -> str:
        """The URL a provider called (signature schemes such as Twilio's sign it)."""
        base = self._settings.public_url
        if base is None:
            return str(request.url)
        query = f"?{request.url.query}" if request.url.query else ""
        return base.rstrip("/") + request.url.path + query

    async def stats(
        self, workspace_id: uuid.UUID, connector_ref: str, hours: float
    ) -> ConnectorStatsOut:
        view = await self.connectors.get(workspace_id, connector_ref)
        since = utcnow() - timedelta(hours=hours)
        async with self._db.read() as session:
            rows = (
                await session.execute(
                    select(
                        DeliveryAttempt.outcome,
                        DeliveryAttempt.error_class,
                        DeliveryAttempt.latency_ms,
                    )
                    .where(
                        DeliveryAttempt.connector_id == view.row.id,
                        DeliveryAttempt.started_at >= since,
                    )
                    .order_by(DeliveryAttempt.started_at.desc())
                    .limit(STATS_SAMPLE)
                )
            ).all()
        sent = sum(1 for r in rows if r.outcome == AttemptOutcome.SENT)
        skipped = sum(1 for r in rows if r.outcome == AttemptOutcome.SKIPPED)
        failed: dict[str, int] = {}
        for r in rows:
            if r.outcome in (AttemptOutcome.FAILED, AttemptOutcome.RETRY):
                key = r.error_class or "unknown"
                failed[key] = failed.get(key, 0) + 1
        latencies = sorted(r.latency_ms for r in rows if r.latency_ms is not None)
        return ConnectorStatsOut(
            connector_id=view.row.id,
            window_hours=hours,
            sent=sent,
            failed=failed,
            skipped=skipped,
            latency_p50_ms=_percentile(latencies, 0.5),
            latency_p99_ms=_percentile(latencies, 0.99),
            circuit=self.breakers.state(view.row.id).value,
        )
