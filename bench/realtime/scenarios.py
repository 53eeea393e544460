"""One measured run of each kind: fan-out (burst or paced), idle memory, slow consumer, and the
two-process scaled run. Every run starts its servers fresh and stops them at the end."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from bench.realtime.loadclient import ClientConfig, LoadClient
from bench.realtime.procs import Window, rss_bytes
from bench.realtime.servers import CLIENT_CORE, Lab, Running, log_tail
from bench.realtime.slow import SlowConsumer

# Fixed fields of a peer payload {"i":…,"t":…,"w":0,"p":""}: the padding makes up the rest of
# a Tidings message.created frame's size.
PEER_PAYLOAD_OVERHEAD = 44
SETTLE_SECONDS = 1.0
# Buffers of the slow-consumer runs (both, with and without the slow client): small enough that
# a client that stops reading is cut off within a burst of a few hundred messages.
SLOW_RUN_SETTINGS = {
    "TIDINGS_WS_SEND_BUFFER_BYTES": "65536",
    "TIDINGS_WS_SOCKET_SEND_BUFFER_BYTES": "65536",
}


@dataclass(frozen=True)
class FanoutParams:
    subscribers: int
    messages: int
    rate: float = 0.0  # paced: broadcasts per second; 0 = burst
    window: int = 16
    warmup: int = 5
    timeout: float = 120.0

    def client(self) -> ClientConfig:
        return ClientConfig(
            mode="paced" if self.rate else "burst",
            n=self.subscribers,
            m=self.messages,
            rate=self.rate,
            window=self.window,
            warmup=self.warmup,
            timeout_s=self.timeout,
        )


def rss(running: Running) -> int:
    return sum(rss_bytes(pid) for pid in running.pids)


@contextlib.asynccontextmanager
async def _server(
    lab: Lab, name: str, tidings: dict[str, Any] | None = None
) -> AsyncIterator[Running]:
    if name == "tidings":
        async with lab.tidings(**(tidings or {})) as running:
            yield running
    else:
        async with lab.peer(name) as running:
            yield running


def _summarise(result: dict[str, Any], cpu: dict[str, float]) -> dict[str, Any]:
    delivered = result["delivered"]
    summary = {
        "delivered": delivered,
        "expected": result["expected"],
        "reach": round(delivered / result["expected"], 4) if result["expected"] else None,
        "complete": result["complete"],
        "deliveries_per_s": round(result["deliveries_per_s"] or 0.0, 1),
        "span_seconds": round(result["span_seconds"], 3),
        "server_cpu_us_per_delivery": round(cpu["server_cpu_seconds"] * 1e6 / delivered, 2)
        if delivered
        else None,
        "client_cpu_share": round(result["client_cpu_share"], 3),
        "complete_connections": result["complete_connections"],
        "closed_early": result["closed_early"],
        "per_group": result["per_group"],
        **cpu,
    }
    for key in ("latency_ms", "latency_ms_by_group", "sender", "frame_bytes"):
        if key in result:
            summary[key] = result[key]
    return summary


async def fanout(
    lab: Lab,
    name: str,
    params: FanoutParams,
    *,
    tidings: dict[str, Any] | None = None,
    client_core: int | None = CLIENT_CORE,
    slow: bool = False,
) -> dict[str, Any]:
    """One burst or paced run of `name` (fresh server); `slow` adds a subscriber that never reads
    (Tidings only) and reports whether and how it was cut off."""
    launched = time.perf_counter()
    async with _server(lab, name, tidings) as running:
        startup = time.perf_counter() - launched
        await asyncio.sleep(SETTLE_SECONDS)
        consumer: SlowConsumer | None = None
        subscribers = params.subscribers
        if slow:
            assert running.token is not None
            consumer = SlowConsumer(running.urls[0], running.token)
            await asyncio.to_thread(consumer.connect)
            subscribers -= 1
        config = ClientConfig(**{**params.client().__dict__, "n": subscribers})
        watcher: asyncio.Task[dict[str, Any]] | None = None
        log = lab.tmp / f"client-{name}-{time.monotonic_ns()}.log"
        client = await LoadClient.start(config.for_server(running), log, client_core)
        try:
            ready = await client.ready(params.timeout)
            window = Window(running.pids, client.pid, running.database)
            finished = asyncio.Event()
            watcher = (
                asyncio.create_task(_watch_cut(running, consumer, finished))
                if consumer is not None
                else None
            )
            window.start()
            started = time.perf_counter()
            client.go()
            result = await client.result(params.timeout + 30)
            cpu = window.stop(time.perf_counter() - started)
            finished.set()
            summary = _summarise(result, cpu)
            summary["startup_seconds"] = round(startup, 2)
            summary["connect_seconds"] = round(ready["connect_seconds"], 3)
            summary["connect_failed"] = ready["failed"]
            summary["warmup_complete"] = ready["warm_received"] >= ready["warm_expected"]
            if watcher is not None:
                summary["slow_consumer"] = await watcher
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()
            await client.stop()
            if consumer is not None:
                consumer.close()
        return summary


async def _watch_cut(
    running: Running, consumer: SlowConsumer | None, finished: asyncio.Event
) -> dict[str, Any]:
    """Wait for the server to log the cut-off (or for the run to end), then read what reached
    the slow client: the server aborts a cut client 5 s after its close frame, so that frame
    must be read before then."""
    assert consumer is not None
    started = time.perf_counter()
    seen_at: float | None = None
    ended_at: float | None = None
    while True:
        if "realtime_slow_consumer" in log_tail(running.logs[0], 1 << 20):
            seen_at = time.perf_counter() - started
            break
        if finished.is_set():
            ended_at = ended_at or time.perf_counter()
            if time.perf_counter() - ended_at > 2.0:
                break
        await asyncio.sleep(0.05)
    drained = await asyncio.to_thread(consumer.drain, 4.0)
    return {
        "cut_logged": seen_at is not None,
        "cut_after_seconds": round(seen_at, 3) if seen_at is not None else None,
        "close_code": drained.close_code,
        "close_reason": drained.close_reason,
        "ended_by": drained.ended_by,
        "frames_received": drained.frames,
        "bytes_received": drained.bytes,
    }


async def idle(
    lab: Lab,
    name: str,
    connections: int,
    settle: float,
    timeout: float,  # noqa: ASYNC109 - a budget for connecting, passed to the client
) -> dict[str, Any]:
    """RSS per idle authenticated connection: (RSS with N open - RSS before) / N."""
    async with _server(lab, name) as running:
        await asyncio.sleep(SETTLE_SECONDS)
        before = rss(running)
        config = ClientConfig(mode="idle", n=connections, warmup=0, timeout_s=timeout)
        log = lab.tmp / f"client-idle-{name}-{time.monotonic_ns()}.log"
        client = await LoadClient.start(config.for_server(running), log)
        window = Window(running.pids, client.pid, running.database)
        window.start()
        started = time.perf_counter()
        try:
            ready = await client.ready(timeout)
            await asyncio.sleep(settle)
            after = rss(running)
            cpu = window.stop(time.perf_counter() - started)
        finally:
            await client.stop()
        opened = connections - ready["failed"]
        return {
            "connections": connections,
            "opened": opened,
            "failed": ready["failed"],
            "connect_seconds": round(ready["connect_seconds"], 3),
            "connects_per_s": round(opened / ready["connect_seconds"], 1)
            if ready["connect_seconds"]
            else None,
            "rss_before_mb": round(before / 2**20, 1),
            "rss_after_mb": round(after / 2**20, 1),
            "kb_per_connection": round((after - before) / 1024 / opened, 2) if opened else None,
            **cpu,
        }
