"""The delivery job: one per message, run by any worker, tried until sent or failed.

Each run walks the message's chain (its connector, or its route's connectors in order) and
sends through the first that takes it. A retriable failure moves on down the chain; when the
chain is exhausted the job is retried later — after the provider's Retry-After when one was
given, else with exponential backoff and jitter — until the attempt budget is spent. Permanent
errors fail the message at once; 401/403 also mark the connector broken, with an event.

At-least-once: a worker killed mid-send leaves the message `sending`; the job's lease expires,
another worker sends it again with the same delivery id (providers that deduplicate on it
will), and a message already `sent` or final is never sent again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from tidings.db.base import new_id, utcnow
from tidings.delivery.connectors.base import (
    DeliveryError,
    ErrorClass,
    OutboundEnvelope,
    SendResult,
)
from tidings.delivery.connectors_service import Connectors, ConnectorStatus
from tidings.delivery.guards import CircuitBreakers, ConnectorThrottle
from tidings.delivery.models import Connector
from tidings.delivery.service import (
    DELIVERY_JOB,
    AttemptRecord,
    Deliveries,
    MessageView,
    channel_content,
)
from tidings.delivery.statuses import AttemptOutcome, MessageStatus
from tidings.infra import metrics
from tidings.infra.logging import get_logger
from tidings.jobs.registry import JobContext, JobRegistry, RetryLater
from tidings.jobs.worker import backoff_delay

_log = get_logger(__name__)
# Errors that say nothing about the message, only about this connector: try the next one.
CIRCUIT_OPEN = "circuit open: the connector failed repeatedly; it is skipped for a while"
_CONNECTOR_FAULTS = frozenset({ErrorClass.AUTH, ErrorClass.BLOCKED, ErrorClass.CONFIGURATION})


# A fresh message's `sending` mark, written while its provider is called; None when the mark
# was written before the call.
_Marking = asyncio.Task[MessageView | None] | None


class _Timing:
    def __init__(self) -> None:
        self.started_at = utcnow()
        self._clock = time.perf_counter()

    def start(self) -> None:
        self.started_at, self._clock = utcnow(), time.perf_counter()

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self._clock) * 1000


@dataclass(frozen=True)
class DeliveryPolicy:
    backoff_base: float
    backoff_max: float


class DeliveryRunner:
    def __init__(
        self,
        deliveries: Deliveries,
        connectors: Connectors,
        breakers: CircuitBreakers,
        throttle: ConnectorThrottle,
        policy: DeliveryPolicy,
    ) -> None:
        self._deliveries = deliveries
        self._connectors = connectors
        self._breakers = breakers
        self._throttle = throttle
        self._policy = policy

    async def run(self, context: JobContext, payload: dict[str, Any]) -> None:
        message_id = uuid.UUID(payload["message_id"])
        if context.attempt == 1:
            # The job's first run. Handed over by the accept of this process, or claimed: the
            # claim made cancelling impossible (`Deliveries.cancel` needs the job still queued)
            # and only this job starts the message, so a message still queued and untried now
            # is this run's to send, without waiting for its mark.
            fresh = context.local
            if not isinstance(fresh, MessageView):
                fresh = await self._deliveries.untried(message_id)
            if fresh is not None:
                await self._run_fresh(context, fresh)
                return
        message = await self._deliveries.start_attempt(message_id)
        if message is None:
            return  # sent, final or cancelled already: never send twice
        await self._deliver(context, message)

    async def _run_fresh(self, context: JobContext, queued: MessageView) -> None:
        """A message this run alone can start (see `run`): nothing else can have sent,
        finished or cancelled it, so it goes to the provider at once, and the `sending` mark
        is written meanwhile (it must commit before the outcome, which only touches messages
        that are `sending`)."""
        message = replace(queued, status=MessageStatus.SENDING, attempts=queued.attempts + 1)
        marking = asyncio.create_task(self._deliveries.start_attempt(message.id))
        try:
            await self._deliver(context, message, marking)
        except BaseException:
            # Cancelled (a shutdown past its grace) or failed: the mark must not outlive the
            # job as an orphan task; the next run of the job starts the message again.
            marking.cancel()
            raise
        finally:
            await asyncio.gather(marking, return_exceptions=True)

    async def _deliver(
        self, context: JobContext, message: MessageView, marking: _Marking = None
    ) -> None:
        chain: list[uuid.UUID] = []
        if message.route_id is not None:
            chain = await self._deliveries.route_chain(message.route_id)
        elif message.connector_id is not None:
            chain = [message.connector_id]
        attempts: list[AttemptRecord] = []
        retry_hints: list[float] = []
        last: DeliveryError | None = None
        for connector_id in chain:
            row = await self._connectors.load_for_delivery(connector_id)
            skip_reason = self._unusable(row)
            if skip_reason is not None or row is None:
                attempts.append(
                    self._attempt(message, connector_id, AttemptOutcome.SKIPPED, error=skip_reason)
                )
                if row is not None and skip_reason == CIRCUIT_OPEN:
                    retry_hints.append(self._breakers.seconds_until_trial(row.id))
                continue
            timing = _Timing()
            try:
                result = await self._send(row, message, timing)
            except DeliveryError as error:
                latency = timing.elapsed_ms()
                last = error
                attempts.append(
                    self._attempt(
                        message,
                        row.id,
                        AttemptOutcome.RETRY if error.retriable else AttemptOutcome.FAILED,
                        started=timing.started_at,
                        latency_ms=latency,
                        error=error.detail,
                        error_class=error.error_class,
                        status=error.status,
                        response=error.response,
                    )
                )
                metrics.DELIVERY_ATTEMPTS.labels(row.type, error.error_class.value).inc()
                metrics.DELIVERY_LATENCY.labels(row.type).observe(latency / 1000)
                if error.retriable:
                    self._breakers.failed(row.id)
                    if error.retry_after is not None:
                        retry_hints.append(error.retry_after)
                    continue
                self._breakers.release_trial(row.id)
                if error.error_class is ErrorClass.AUTH:
                    await self._deliveries.mark_connector_broken(row, error.detail)
                if error.error_class in _CONNECTOR_FAULTS:
                    continue
                # The message itself is at fault (recipient, content): no connector can help.
                await self._finish(
                    marking,
                    message,
                    attempts,
                    status=MessageStatus.FAILED,
                    connector_id=row.id,
                    error_class=error.error_class.value,
                    error=error.detail,
                )
                return
            latency = timing.elapsed_ms()
            self._breakers.succeeded(row.id)
            metrics.DELIVERY_ATTEMPTS.labels(row.type, "sent").inc()
            metrics.DELIVERY_LATENCY.labels(row.type).observe(latency / 1000)
            attempts.append(
                self._attempt(
                    message,
                    row.id,
                    AttemptOutcome.SENT,
                    started=timing.started_at,
                    latency_ms=latency,
                    status=result.status,
                    response=result.response,
                )
            )
            await self._finish(
                marking,
                message,
                attempts,
                status=MessageStatus.SENT,
                connector_id=row.id,
                provider_message_id=result.provider_message_id,
            )
            return
        await self._exhausted(context, message, marking, attempts, last, retry_hints)

    async def _exhausted(
        self,
        context: JobContext,
        message: MessageView,
        marking: _Marking,
        attempts: list[AttemptRecord],
        last: DeliveryError | None,
        retry_hints: list[float],
    ) -> None:
        """No connector took the message on this run: retry later, or fail it for good."""
        retriable = bool(retry_hints) or any(a.outcome == AttemptOutcome.RETRY for a in attempts)
        if last is not None:
            error_class, error = last.error_class.value, last.detail
        else:
            # Nothing was tried: every connector of the chain was skipped (or there is none).
            error_class = "connector_unavailable"
            error = (
                (attempts[-1].provider_response or "skipped")
                if attempts
                else "the message has no connector left to use"
            )
        if not retriable or context.attempt >= context.max_attempts:
            await self._finish(
                marking,
                message,
                attempts,
                status=MessageStatus.FAILED,
                error_class=error_class,
                error=error,
            )
            return
        delay = (
            max(retry_hints)
            if retry_hints
            else backoff_delay(context.attempt, self._policy.backoff_base, self._policy.backoff_max)
        )
        await self._finish(
            marking,
            message,
            attempts,
            status=MessageStatus.QUEUED,
            error_class=error_class,
            error=error,
            retry_in=delay,
        )
        raise RetryLater(delay, f"{error_class}: {error}")

    async def _finish(
        self,
        marking: _Marking,
        message: MessageView,
        attempts: list[AttemptRecord],
        **outcome: Any,
    ) -> None:
        if marking is not None and await marking is None:
            return  # no longer deliverable when marked: nothing of this run to record
        # A message another run of this job (after a lease expiry) finished first is left as
        # that run wrote it: the write only touches messages still `sending`.
        await self._deliveries.finish_attempt(message, attempts, **outcome)

    def _unusable(self, row: Connector | None) -> str | None:
        if row is None or row.deleted_at is not None:
            return "connector deleted"
        if row.status == ConnectorStatus.DISABLED:
            return "connector disabled"
        if row.status == ConnectorStatus.BROKEN:
            return f"connector broken: {row.status_reason or 'credentials refused'}"
        if not self._breakers.allow(row.id):
            return CIRCUIT_OPEN
        return None

    async def _send(self, row: Connector, message: MessageView, timing: _Timing) -> SendResult:
        connector = await self._connectors.instance(row)
        content = channel_content(message.content or {}, type(connector).channel)
        if content is None:
            raise DeliveryError(
                ErrorClass.CONFIGURATION,
                f"the message has no {type(connector).channel.value} content for this connector",
            )
        envelope = OutboundEnvelope(
            delivery_id=str(message.id),
            recipient=message.recipient,
            content=content,
            metadata=message.message_metadata,
        )
        async with self._throttle.slot(
            row.id,
            max_concurrency=row.max_concurrency or type(connector).default_max_concurrency,
            rate_per_second=row.rate_per_second or type(connector).default_rate_per_second,
        ):
            timing.start()  # after the throttle: the log shows the provider's time, not ours
            return await connector.send(envelope)

    @staticmethod
    def _attempt(
        message: MessageView,
        connector_id: uuid.UUID,
        outcome: AttemptOutcome,
        *,
        started: Any = None,
        latency_ms: float | None = None,
        error: str | None = None,
        error_class: ErrorClass | None = None,
        status: int | None = None,
        response: str | None = None,
    ) -> AttemptRecord:
        now = utcnow()
        return AttemptRecord(
            id=new_id(),
            message_id=message.id,
            number=message.attempts,
            connector_id=connector_id,
            started_at=started or now,
            finished_at=now,
            outcome=outcome.value,
            error_class=error_class.value if error_class is not None else None,
            provider_status=status,
            provider_response=response if outcome is not AttemptOutcome.SKIPPED else error,
            latency_ms=latency_ms,
        )


async def deliver(context: JobContext, payload: dict[str, Any]) -> None:
    runner: DeliveryRunner = context.resources["delivery_runner"]
    await runner.run(context, payload)


def register(registry: JobRegistry) -> None:
    registry.register(DELIVERY_JOB, deliver)
