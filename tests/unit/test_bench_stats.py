"""The benchmark's statistics and report helpers, so `make bench` cannot silently rot."""

from __future__ import annotations

import math

import pytest

from bench.__main__ import parse_args
from bench.report import table
from bench.stats import Goal, Row, Summary, median, paired_ratio, percentile, ratio


def test_percentile_interpolates_like_numpy():
    values = [10.0, 1.0, 4.0, 2.0, 3.0]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 10.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 95) == pytest.approx(8.8)  # numpy.percentile(values, 95)
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([7.0], 95) == 7.0
    assert median([3.0, 1.0, 2.0, 100.0]) == 2.5


@pytest.mark.parametrize("values,q", [([], 50), ([1.0], -1), ([1.0], 101)])
def test_percentile_refuses_nonsense(values, q):
    with pytest.raises(ValueError):
        percentile(values, q)


def test_ratio_and_paired_ratio():
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0))
    # Median of per-pair ratios: a slow second pair (machine load) hits both sides alike.
    assert paired_ratio([90.0, 45.0, 95.0], [100.0, 50.0, 100.0]) == pytest.approx(0.9)
    assert paired_ratio([1.0, 2.0], [0.0, 4.0]) == 0.5  # unusable pairs are skipped
    assert math.isnan(paired_ratio([1.0], [0.0]))
    with pytest.raises(ValueError):
        paired_ratio([1.0], [1.0, 2.0])


def test_summary():
    s = Summary.of([0.004, 0.002, 0.003, 0.001])
    assert s.n == 4
    assert (s.p50, s.mean, s.p95) == pytest.approx((0.0025, 0.0025, 0.00385))


def test_goals_and_rows():
    at_most, at_least = Goal(2.0, higher_is_better=False), Goal(0.5, higher_is_better=True)
    assert at_most.met(2.0) and not at_most.met(2.01)
    assert at_least.met(0.5) and not at_least.met(0.49)
    assert not at_least.met(math.nan) and not at_most.met(math.nan)

    latency = Row("latency p50", "ms", 9.0, 4.0, at_most)
    assert latency.ratio == 2.25 and latency.met is False
    paired = Row("tokens/s", "tok/s", 90.0, 100.0, Goal(0.95, True), paired=0.97)
    assert paired.ratio == 0.97 and paired.met is True
    assert Row("info", "s", 1.0, 2.0).met is None
    assert paired.as_dict()["ratio"] == 0.97

    text = table("t", [latency, paired])
    assert "| latency p50 (ms) | 9 | 4 | 2.250x | <= 2x MISSED |" in text
    assert "0.970x | >= 0.95x met" in text


def test_cli_options():
    args = parse_args(["queue", "--quick"])
    assert args.benchmark == "queue" and args.rounds < 200 and args.gen_rounds == 1
    assert parse_args([]).benchmark == "all"
    with pytest.raises(SystemExit):
        parse_args(["--clients", "0"])
    with pytest.raises(SystemExit):
        parse_args(["nonsense"])
