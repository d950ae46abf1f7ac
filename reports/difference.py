"""a - b of a metric between two trials, with its 95% interval.

Paired over the sample seeds both trials share (the seed's noise cancels): the Student-t interval
of the per-seed differences. Otherwise each side's own interval, which may be asymmetric (a
bootstrap's): with a in [a - a_below, a + a_above] and b likewise,

    a - b lies in [(a - b) - hypot(a_below, b_above), (a - b) + hypot(a_above, b_below)],

so each end of the difference is set by the ends of the two intervals that reach towards it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import pandas as pd
from scipy.special import stdtrit  # Student's t quantile (scipy.stats.t.ppf's own; 0.5 s less to import)

from harness.tracking.schema import CI_HIGH, CI_LOW, PER_SEED
from reports.comparable import protocol_entry


@dataclass(frozen=True)
class Difference:
    """a - b in the metric, with the half-width of its 95% interval; ``paired``: from per-seed
    differences over the sample seeds both share (else the two intervals combined).
    ``below`` / ``above``: how far the interval reaches below / above ``value`` where it is
    asymmetric (None: ``half`` both ways)."""

    value: float
    half: float
    paired: bool
    n: int = 0  # paired: how many seeds the differences came from
    below: float | None = None
    above: float | None = None

    @property
    def low(self) -> float:
        return self.value - (self.half if self.below is None else self.below)

    @property
    def high(self) -> float:
        return self.value + (self.half if self.above is None else self.above)

    def seeds_to_reach(self, distance: float) -> int | None:
        """Paired seeds that would shrink the half-width to ``distance`` at the measured spread
        (the half-width falls as 1 / sqrt(n)); None when unpaired or the distance is zero."""
        if not self.paired or self.n < 2 or distance <= 0:
            return None
        return max(self.n + 1, math.ceil(self.n * (self.half / distance) ** 2))

    def decided(self) -> int:
        """+1: the whole interval above 0; -1: below; 0: it holds 0 (or is not a number)."""
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return 0
        return 1 if self.low > 0 else (-1 if self.high < 0 else 0)

    def negated(self) -> Difference:
        """b - a: the value and the interval's two sides swapped."""
        return Difference(-self.value, self.half, self.paired, self.n, self.above, self.below)

    def minus(self, other: Difference) -> Difference:
        """self - other, unpaired: each end from the ends that reach towards it."""
        below = math.hypot(self.value - self.low, other.high - other.value)
        above = math.hypot(self.high - self.value, other.value - other.low)
        return _unpaired(self.value - other.value, below, above)

    def text(self, fmt) -> str:
        how = "paired over sample seeds" if self.paired else "CIs combined"
        below, above = self.value - self.low, self.high - self.value
        if math.isclose(below, above, rel_tol=1e-9, abs_tol=1e-12):
            return f"{fmt(self.value)} ± {fmt(self.half)} ({how})"
        return f"{fmt(self.value)} (-{fmt(below)} / +{fmt(above)}) ({how})"


def _unpaired(value: float, below: float, above: float) -> Difference:
    return Difference(value, max(below, above), False, 0, below, above)


def reach(row: pd.Series, metric: str) -> tuple[float, float]:
    """How far the row's interval reaches below and above its value (0, 0 when it has none)."""
    value = float(row[metric])
    low, high = row.get(f"{metric}{CI_LOW}"), row.get(f"{metric}{CI_HIGH}")
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return 0.0, 0.0
    return max(value - float(low), 0.0), max(float(high) - value, 0.0)


def per_seed(row: pd.Series, metric: str) -> dict[int, float]:
    """The row's values of the metric per sample seed, where its protocol recorded them."""
    entry = protocol_entry(row, metric)
    seeds, values = entry.get("sample_seeds") or [], entry.get(PER_SEED) or []
    if len(seeds) != len(values) or not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
        return {}  # a NaN or an infinity is no seed's value: not paired (reports.comparable drops the row)
    return dict(zip(seeds, values, strict=True))


def difference(ra: pd.Series, rb: pd.Series, metric: str) -> Difference:
    """ra - rb: paired over their shared sample seeds when both recorded 2 or more (the seed's
    noise cancels), else the unpaired difference from each side's own interval."""
    a, b = per_seed(ra, metric), per_seed(rb, metric)
    shared = sorted(set(a) & set(b))
    if len(shared) >= 2:
        diffs = [a[s] - b[s] for s in shared]
        mean = statistics.fmean(diffs)
        sd = statistics.stdev(diffs)
        half = stdtrit(len(diffs) - 1, 0.975) * sd / math.sqrt(len(diffs))
        return Difference(mean, half, True, len(diffs))
    (a_below, a_above), (b_below, b_above) = reach(ra, metric), reach(rb, metric)
    value = float(ra[metric] - rb[metric])
    return _unpaired(value, math.hypot(a_below, b_above), math.hypot(a_above, b_below))
