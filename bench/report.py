"""The summary table (our figure, the peer's, the ratio, the target, pass/fail) and the JSON."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.jobs import TARGET_START_P50_MS, TARGET_VS_ARQ, TARGET_VS_SAQ
from bench.machine import BUSY_OTHERS_PERCENT
from bench.outbox import TARGET_P99_MS

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Row:
    metric: str
    ours: str
    peer: str
    ratio: str
    target: str
    verdict: str


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def _verdict(passed: bool | None) -> str:
    if passed is None:
        return "info"
    return "PASS" if passed else "FAIL"


def _outbox_rows(outbox: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for profile, result in outbox.items():
        steps = result["steps"]
        if not steps:
            continue
        sustained = [step for step in steps if step["sustained"]]
        top = max(steps, key=lambda step: step["committed_per_s"])
        rows.append(
            Row(
                f"[{profile}] outbox: highest offered rate sustained",
                _fmt(result["max_sustained_per_s"], " ev/s", 0),
                "-",
                "-",
                "info",
                "info",
            )
        )
        rows.append(
            Row(
                f"[{profile}] outbox: lag 1st→last third @ {_fmt(top['committed_per_s'], '', 0)} ev/s",
                f"{_fmt(top['lag_first_third_ms'], '', 1)} → "
                f"{_fmt(top['lag_last_third_ms'], ' ms', 1)}",
                "-",
                f"disp/commit {_fmt(top['dispatched_per_s'] / top['committed_per_s'], 'x', 2)}"
                if top["committed_per_s"]
                else "n/a",
                "lag does not grow",
                _verdict(not result["lag_grew_at_any_step"]),
            )
        )
        shown = max(sustained, key=lambda step: step["offered_per_s"]) if sustained else steps[0]
        latency = shown["commit_to_dispatch_ms"]
        rows.append(
            Row(
                f"[{profile}] outbox: commit→dispatch p50/p99 @ {shown['offered_per_s']} ev/s",
                f"{_fmt(latency['p50'], '', 1)} / {_fmt(latency['p99'], ' ms', 1)}",
                "-",
                "-",
                f"p99 ≤ {TARGET_P99_MS:.0f} ms",
                _verdict(latency["p99"] is not None and latency["p99"] <= TARGET_P99_MS),
            )
        )
        rows.append(
            Row(
                f"[{profile}] outbox: highest rate with p99 ≤ {TARGET_P99_MS:.0f} ms",
                _fmt(result["max_meeting_p99_target_per_s"], " ev/s", 0),
                "-",
                "-",
                "info",
                "info",
            )
        )
    return rows


def _spread(spread: dict[str, Any], unit: str = "", digits: int = 1) -> str:
    text = _fmt(spread["median"], unit, digits)
    if len(spread["values"]) > 1:
        text += f" [{_fmt(spread['min'], '', digits)}-{_fmt(spread['max'], '', digits)}]"
    return text


def _job_rows(jobs: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    summary = jobs["summary"]
    ratios = jobs["ratios"]
    ours_names = [name for name in summary if name.startswith("tidings-")]
    targets = {"saq": TARGET_VS_SAQ, "arq": TARGET_VS_ARQ}
    for name in ours_names:
        profile = name.removeprefix("tidings-")
        mine = summary[name]
        for peer, target in targets.items():
            if peer not in summary:
                continue
            ratio = ratios[f"{name}/{peer}"]
            rows.append(
                Row(
                    f"[{profile}] no-op jobs/s vs {peer}",
                    _spread(mine["jobs_per_s"], "", 0),
                    _spread(summary[peer]["jobs_per_s"], "", 0),
                    _spread(ratio, "x", 2),
                    f"≥ {target:.1f}x",
                    _verdict(ratio["median"] is not None and ratio["median"] >= target),
                )
            )
        if "batch_jobs_per_s" in mine:
            saq = summary.get("saq")
            rows.append(
                Row(
                    f"[{profile}] no-op jobs/s, batch enqueue ({jobs['parameters']['batch_size']}/tx)",
                    _spread(mine["batch_jobs_per_s"], "", 0),
                    f"saq {_spread(saq['jobs_per_s'], '', 0)}" if saq else "-",
                    _fmt(mine["batch_jobs_per_s"]["median"] / saq["jobs_per_s"]["median"], "x", 2)
                    if saq and saq["jobs_per_s"]["median"]
                    else "-",
                    "info",
                    "info",
                )
            )
        p50 = mine["start_p50_ms"]
        saq = summary.get("saq")
        rows.append(
            Row(
                f"[{profile}] enqueue→start p50 @ {jobs['parameters']['latency_rate_per_s']:.0f}/s",
                _spread(p50, " ms", 2),
                f"saq {_spread(saq['start_p50_ms'], ' ms', 2)}" if saq else "-",
                _fmt(p50["median"] / saq["start_p50_ms"]["median"], "x", 2)
                if saq and saq["start_p50_ms"]["median"]
                else "-",
                f"< {TARGET_START_P50_MS:.0f} ms",
                _verdict(p50["median"] is not None and p50["median"] < TARGET_START_P50_MS),
            )
        )
        p99 = mine["start_p99_ms"]
        rows.append(
            Row(
                f"[{profile}] enqueue→start p99 @ {jobs['parameters']['latency_rate_per_s']:.0f}/s",
                _spread(p99, " ms", 2),
                f"saq {_spread(saq['start_p99_ms'], ' ms', 2)}" if saq else "-",
                _fmt(p99["median"] / saq["start_p99_ms"]["median"], "x", 2)
                if saq and saq["start_p99_ms"]["median"]
                else "-",
                "info",
                "info",
            )
        )
    if "arq" in summary:
        rows.append(
            Row(
                "[peer] arq enqueue→start p50 / p99",
                "-",
                f"{_fmt(summary['arq']['start_p50_ms']['median'], '', 1)} / "
                f"{_fmt(summary['arq']['start_p99_ms']['median'], ' ms', 1)}",
                "-",
                "info",
                "info",
            )
        )
    return rows


def build_rows(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    if "outbox" in results:
        rows.extend(_outbox_rows(results["outbox"]))
    if "jobs" in results:
        rows.extend(_job_rows(results["jobs"]))
    return rows


def render_table(rows: list[Row]) -> str:
    header = Row("metric", "Tidings", "peer (same run)", "ratio", "target", "result")
    table = [header, *rows]
    widths = [max(len(getattr(row, field)) for row in table) for field in Row.__dataclass_fields__]
    lines = []
    for index, row in enumerate(table):
        cells = [getattr(row, field) for field in Row.__dataclass_fields__]
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        )
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def interference(results: Any) -> tuple[int, int, float]:
    """How many measured runs saw other processes use > 25 % of a core; of how many; the max."""
    seen: list[float] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "other_cpu_percent" in node:
                seen.append(float(node["other_cpu_percent"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(results)
    busy = sum(1 for value in seen if value > BUSY_OTHERS_PERCENT)
    return busy, len(seen), max(seen, default=0.0)


def write_json(results: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(results: dict[str, Any]) -> str:
    """The tables of docs/benchmarks.md, from one results file."""
    parts = [
        _md_table(
            ["metric", "Tidings", "peer (same run)", "ratio", "target", "result"],
            [list(row.__dict__.values()) for row in build_rows(results)],
        )
    ]
    for profile, outbox in results.get("outbox", {}).items():
        parts.append(f"Outbox steps, {profile}:")
        parts.append(
            _md_table(
                [
                    "offered/s",
                    "committed/s",
                    "dispatched/s",
                    "p50 ms",
                    "p99 ms",
                    "max ms",
                    "lag 1st→last third ms",
                    "mean batch",
                    "bench CPU %",
                    "others CPU %",
                    "verdict",
                ],
                [
                    [
                        str(step["offered_per_s"]),
                        _fmt(step["committed_per_s"]),
                        _fmt(step["dispatched_per_s"]),
                        _fmt(step["commit_to_dispatch_ms"]["p50"]),
                        _fmt(step["commit_to_dispatch_ms"]["p99"]),
                        _fmt(step["commit_to_dispatch_ms"]["max"]),
                        f"{_fmt(step['lag_first_third_ms'])} → {_fmt(step['lag_last_third_ms'])}",
                        _fmt(step["mean_batch_size"]),
                        _fmt(step["bench_process_cpu_percent"], "", 0),
                        _fmt(step["other_cpu_percent"], "", 0),
                        "sustained" if step["sustained"] else "; ".join(step["limited_by"]),
                    ]
                    for step in outbox["steps"]
                ],
            )
        )
    jobs = results.get("jobs")
    if jobs:
        rows: list[list[str]] = []
        for name, runs in jobs["runs"].items():
            for index, run in enumerate(runs, start=1):
                throughput, latency = run["throughput"], run["latency"]
                batch = run.get("batch_throughput")
                rows.append(
                    [
                        name,
                        str(index),
                        _fmt(throughput["jobs_per_s"], "", 0),
                        _fmt(throughput["enqueue_per_s"], "", 0),
                        _fmt(batch["jobs_per_s"], "", 0) if batch else "-",
                        _fmt(latency["enqueue_to_start_ms"]["p50"], "", 2),
                        _fmt(latency["enqueue_to_start_ms"]["p99"], "", 2),
                        _fmt(latency["enqueue_call_ms"]["p50"], "", 2),
                        _fmt(throughput["bench_process_cpu_percent"], "", 0),
                        _fmt(latency["bench_process_cpu_percent"], "", 0),
                        _fmt(throughput["other_cpu_percent"], "", 0),
                    ]
                )
        parts.append("Job runs (one row per system and round):")
        parts.append(
            _md_table(
                [
                    "system",
                    "round",
                    "jobs/s",
                    "enqueue/s",
                    "batch jobs/s",
                    "start p50 ms",
                    "start p99 ms",
                    "enqueue call p50 ms",
                    "CPU % (throughput)",
                    "CPU % @ 200/s",
                    "others CPU %",
                ],
                rows,
            )
        )
    return "\n\n".join(parts)
