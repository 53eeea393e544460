"""Identity benchmarks: logins per second, authenticated requests per second, and what cached
API-key validation adds to a request — for both profiles.

Run: `python -m bench.auth [--seconds N] [--profiles embedded,scaled]` (also part of `make bench`).
Requests go through the real ASGI app in-process (httpx ASGITransport), so the figures are the
server's own cost without a network stack; no peer runs here (the issue sets absolute targets).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import platform
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis
from asgi_lifespan import LifespanManager

from bench.machine import BUSY_OTHERS_PERCENT, CpuMeter
from bench.profiles import POSTGRES_ADMIN_DSN, REDIS_URL
from tidings.app import create_app
from tidings.db import migrate
from tidings.infra.logging import configure_logging
from tidings.settings import Settings

# The same services as `python -m bench` (TIDINGS_BENCH_POSTGRES_DSN / TIDINGS_BENCH_REDIS_URL).
PG_ADMIN = POSTGRES_ADMIN_DSN
DATABASE = "tidings_bench_auth"
PG_URL = (
    f"{PG_ADMIN.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+asyncpg://', 1)}/{DATABASE}"
)
PASSWORD = "correct horse battery staple"  # noqa: S105 - a benchmark account
TARGET_API_KEY_OVERHEAD_MS = 0.2


async def _settings(profile: str, data_dir: Path) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "jwt_secret": secrets.token_urlsafe(48),
        "master_key": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        "log_level": "warning",
        # The benchmark measures throughput, not the limits.
        **{
            f"rate_limit_{name}": "100000000/minute"
            for name in ("ip", "user", "api_key", "login", "register", "refresh")
        },
    }
    if profile == "scaled":
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await conn.close()
        await migrate.upgrade_async(PG_URL)
        values.update(
            database_url=PG_URL, redis_url=REDIS_URL, redis_prefix=f"bench:{secrets.token_hex(4)}:"
        )
    return Settings(_env_file=None, **values)


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _rate(
    http: httpx.AsyncClient,
    request: dict[str, Any],
    seconds: float,
    concurrency: int,
    cpu: dict[str, dict[str, float]],
    name: str,
) -> float:
    """Closed-loop requests/s; the CPU use of this process, its services and others under `name`."""
    done = 0
    meter = CpuMeter(database=DATABASE)
    meter.start()
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            response = await http.request(**request)
            assert response.status_code < 300, response.text
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu[name] = meter.stop()
    return done / elapsed


async def _cleanup(settings: Settings) -> None:
    """Drop what the scaled profile left behind: the bench database and the run's Redis keys."""
    if settings.redis_url is None:
        return
    client = aioredis.from_url(settings.redis_url)  # type: ignore[no-untyped-call]
    try:
        keys = [key async for key in client.scan_iter(match=f"{settings.redis_prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    finally:
        await conn.close()


async def run_profile(profile: str, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = await _settings(profile, Path(tmp))
        try:
            return await _measure(settings, seconds)
        finally:
            await _cleanup(settings)


async def _measure(settings: Settings, seconds: float) -> dict[str, Any]:
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            registered = (
                await http.post(
                    "/api/v1/auth/register",
                    json={
                        "email": "bench@example.com",
                        "password": PASSWORD,
                        "display_name": "b",
                    },
                )
            ).json()
            bearer = {"Authorization": f"Bearer {registered['tokens']['access_token']}"}
            workspace = (
                await http.post("/api/v1/workspaces", json={"name": "Bench"}, headers=bearer)
            ).json()["id"]
            key = (
                await http.post(
                    f"/api/v1/workspaces/{workspace}/api-keys",
                    json={"name": "bench", "scopes": ["admin"]},
                    headers=bearer,
                )
            ).json()["key"]
            login = {
                "method": "POST",
                "url": "/api/v1/auth/login",
                "json": {"email": "bench@example.com", "password": PASSWORD},
            }
            route = f"/api/v1/workspaces/{workspace}"
            cpu: dict[str, dict[str, float]] = {}
            results: dict[str, Any] = {
                "logins_per_s": await _rate(http, login, seconds, 4, cpu, "logins"),
                "api_key_requests_per_s": await _rate(
                    http,
                    {
                        "method": "GET",
                        "url": route,
                        "headers": {"Authorization": f"Bearer {key}"},
                    },
                    seconds,
                    16,
                    cpu,
                    "api_key_requests",
                ),
                "jwt_requests_per_s": await _rate(
                    http,
                    {"method": "GET", "url": route, "headers": bearer},
                    seconds,
                    16,
                    cpu,
                    "jwt_requests",
                ),
                "unauthenticated_healthz_per_s": await _rate(
                    http, {"method": "GET", "url": "/healthz"}, seconds, 16, cpu, "healthz"
                ),
            }
            # Percent of one core: this process, its PostgreSQL/Redis work, everything else.
            results["cpu_percent"] = cpu
            # What validation itself costs with a warm cache (the per-request overhead).
            api_keys = app.state.runtime.identity.api_keys
            await api_keys.authenticate(key)
            samples = []
            for _ in range(20_000):
                start = time.perf_counter()
                await api_keys.authenticate(key)
                samples.append((time.perf_counter() - start) * 1000)
            results["api_key_validation_ms"] = {
                "p50": round(_pct(samples, 0.5), 4),
                "p99": round(_pct(samples, 0.99), 4),
                "mean": round(statistics.fmean(samples), 4),
            }
            argon = settings
            results["argon2"] = (
                f"t={argon.argon2_time_cost} m={argon.argon2_memory_kib}KiB p={argon.argon2_parallelism}"
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--profiles", default="embedded,scaled")
    args = parser.parse_args()
    configure_logging("warning", "json")
    logging.getLogger().setLevel(logging.WARNING)
    report: dict[str, Any] = {
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
        "profiles": {},
    }
    for profile in [p.strip() for p in args.profiles.split(",") if p.strip()]:
        report["profiles"][profile] = asyncio.run(run_profile(profile, args.seconds))
    print(
        f"{'profile':10} {'logins/s':>9} {'API key req/s':>14} {'JWT req/s':>10} {'healthz/s':>10} {'key check p50 ms':>17} verdict"
    )
    for profile, r in report["profiles"].items():
        p50 = r["api_key_validation_ms"]["p50"]
        verdict = "PASS" if p50 < TARGET_API_KEY_OVERHEAD_MS else "FAIL"
        print(
            f"{profile:10} {r['logins_per_s']:9.1f} {r['api_key_requests_per_s']:14.0f} {r['jwt_requests_per_s']:10.0f} "
            f"{r['unauthenticated_healthz_per_s']:10.0f} {p50:17.4f} {verdict} (< {TARGET_API_KEY_OVERHEAD_MS} ms)"
        )
    others = [
        phase["other_cpu_percent"]
        for r in report["profiles"].values()
        for phase in r["cpu_percent"].values()
    ]
    busy = sum(1 for value in others if value > BUSY_OTHERS_PERCENT)
    report["interference"] = {
        "busy_runs": busy,
        "measured_runs": len(others),
        "max_other_cpu_percent": max(others, default=0.0),
    }
    print(
        f"Other processes used > {BUSY_OTHERS_PERCENT:.0f}% of a core during {busy} of "
        f"{len(others)} measured runs (worst {max(others, default=0.0):.0f}%)"
    )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"auth-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
