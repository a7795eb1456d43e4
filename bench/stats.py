"""Small statistics for benchmark results: percentiles, summaries, ratios, goals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """Return the q-th percentile (0-100) with linear interpolation, as numpy's default.

    :raises ValueError: for no values or q outside 0-100.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0-100, not {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    """Return the median. :raises ValueError: for no values."""
    return percentile(values, 50)


def ratio(numerator: float, denominator: float) -> float:
    """Return numerator / denominator; NaN when the denominator is zero or NaN."""
    if not denominator or math.isnan(denominator):
        return math.nan
    return numerator / denominator


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Return the median of per-pair ratios (robust to load that drifts between pairs).

    NaN when no pair has a usable denominator.
    :raises ValueError: for sequences of different lengths.
    """
    if len(numerators) != len(denominators):
        raise ValueError("paired_ratio needs as many numerators as denominators")
    ratios = [ratio(n, d) for n, d in zip(numerators, denominators, strict=True)]
    ratios = [r for r in ratios if not math.isnan(r)]
    return median(ratios) if ratios else math.nan


@dataclass(frozen=True)
class Summary:
    """Latency figures of one side of a comparison, in seconds."""

    n: int
    p50: float
    p95: float
    mean: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        """Summarize samples. :raises ValueError: for no samples."""
        return cls(
            len(values), percentile(values, 50), percentile(values, 95), sum(values) / len(values)
        )


@dataclass(frozen=True)
class Goal:
    """A target for a ratio: at most (lower is better) or at least (higher is better)."""

    bound: float
    higher_is_better: bool

    def met(self, value: float) -> bool:
        """Return True when value meets the goal (NaN never does)."""
        if math.isnan(value):
            return False
        return value >= self.bound if self.higher_is_better else value <= self.bound

    def describe(self) -> str:
        return f"{'>=' if self.higher_is_better else '<='} {self.bound:g}x"


@dataclass(frozen=True)
class Row:
    """One line of a report: a metric of conveyor and its baseline, and their ratio."""

    metric: str
    unit: str
    conveyor: float
    baseline: float
    goal: Goal | None = None
    paired: float | None = None  # median of per-round ratios, when rounds were paired

    @property
    def ratio(self) -> float:
        """Return the paired ratio when there is one, else conveyor / baseline."""
        return self.paired if self.paired is not None else ratio(self.conveyor, self.baseline)

    @property
    def met(self) -> bool | None:
        return None if self.goal is None else self.goal.met(self.ratio)

    def as_dict(self) -> dict:
        return {
            "metric": self.metric,
            "unit": self.unit,
            "conveyor": self.conveyor,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "goal": self.goal.describe() if self.goal else None,
            "met": self.met,
        }
