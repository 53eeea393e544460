"""Prometheus metrics, one registry per process, served at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUEST_DURATION = Histogram(
    "tidings_http_request_duration_seconds",
    "HTTP request latency by route template",
    ["method", "route", "status_class"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
JOB_OUTCOMES = Counter(
    "tidings_jobs_total", "Job attempts by name and outcome", ["name", "outcome"]
)
JOB_DURATION = Histogram(
    "tidings_job_duration_seconds",
    "Job run time",
    ["name"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120),
)
JOB_START_DELAY = Histogram(
    "tidings_job_start_delay_seconds",
    "Time from a job being due to it starting",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30),
)
QUEUE_DEPTH = Gauge("tidings_jobs_queue_depth", "Jobs due and waiting, by status", ["status"])
OUTBOX_LAG = Gauge(
    "tidings_outbox_lag_seconds", "Age of the oldest undispatched event (0 when caught up)"
)
OUTBOX_DISPATCHED = Counter("tidings_outbox_dispatched_total", "Events dispatched")
OUTBOX_DISPATCH_LATENCY = Histogram(
    "tidings_outbox_dispatch_latency_seconds",
    "Time from an event being written to it being dispatched",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
MESSAGE_SEND_BATCH = Histogram(
    "tidings_message_send_batch_size",
    "Chat messages written per transaction (group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
REALTIME_CONNECTIONS = Gauge(
    "tidings_realtime_connections", "Open WebSocket and SSE connections on this process"
)
REALTIME_DELIVERIES = Counter(
    "tidings_realtime_deliveries_total", "Frames handed to realtime subscribers"
)
REALTIME_SLOW_CONSUMERS = Counter(
    "tidings_realtime_slow_consumers_total", "Clients disconnected for not reading fast enough"
)
DELIVERY_ATTEMPTS = Counter(
    "tidings_delivery_attempts_total",
    "Send API delivery attempts by connector type and outcome (sent or the error class)",
    ["connector_type", "outcome"],
)
DELIVERY_LATENCY = Histogram(
    "tidings_delivery_provider_latency_seconds",
    "Time a provider took to answer a delivery",
    ["connector_type"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
