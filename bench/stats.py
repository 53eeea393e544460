"""Small statistics helpers: percentiles, latency summaries and ratio summaries."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Latency:
    """A latency distribution in milliseconds."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of_seconds(cls, values: Sequence[float]) -> Latency:
        millis = sorted(max(0.0, value) * 1000 for value in values)
        return cls(
            count=len(millis),
            p50=percentile(millis, 50),
            p90=percentile(millis, 90),
            p99=percentile(millis, 99),
            max=millis[-1] if millis else math.nan,
        )

    def as_dict(self) -> dict[str, Any]:
        return {key: _rounded(value) for key, value in asdict(self).items()}


@dataclass(frozen=True)
class Spread:
    """Median and range of repeated measurements (e.g. one ratio per interleaved round)."""

    median: float
    low: float
    high: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        finite = [value for value in values if math.isfinite(value)]
        if not finite:
            return cls(math.nan, math.nan, math.nan, tuple(values))
        return cls(statistics.median(finite), min(finite), max(finite), tuple(values))

    def as_dict(self) -> dict[str, Any]:
        return {
            "median": _rounded(self.median),
            "min": _rounded(self.low),
            "max": _rounded(self.high),
            "values": [_rounded(value) for value in self.values],
        }


def slope_per_second(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (both in seconds); 0 for fewer than two points."""
    if len(points) < 2:
        return 0.0
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def _rounded(value: float) -> float | None:
    if not math.isfinite(value):
        return None
    return round(value, 3)
