"""Uncertainty of a metric: several sample sets (seeds) or a bootstrap of one set.

Over k sample sets with values v_1..v_k the interval is mean +- t_{0.975, k-1} * s / sqrt(k)
(Student t, s the sample standard deviation). The bootstrap resamples the N generated feature
vectors with replacement B times, recomputes the metric and takes the 2.5% and 97.5%
percentiles (the percentile interval).

Caveat: set-level metrics (FID, FVD, KID, precision/recall) are biased by the number of
distinct samples, and a resample with replacement holds only about 63% distinct ones, so their
bootstrap distribution is shifted (FID upwards, recall downwards) and the percentile interval
can exclude the full-set value. For those, prefer several independent sample sets (seeds);
the bootstrap suits per-sample averages such as the Inception Score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

LEVEL = 0.95


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of a Student-t interval; low / high are None for a single value."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(v.mean())
    if v.size == 1:
        return mean, None, None
    # Student's t quantile: scipy.stats.t.ppf's own function, without scipy.stats' import (~0.6 s)
    from scipy.special import stdtrit

    half = stdtrit(v.size - 1, 0.5 + level / 2) * v.std(ddof=1) / np.sqrt(v.size)
    return mean, float(mean - half), float(mean + half)


def bootstrap_indices(n: int, num_resamples: int, seed: int) -> Tensor:
    """(B, n) long: B resamples of range(n) with replacement, from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (num_resamples, n), generator=generator)


def bootstrap_interval(
    statistic: Callable[[Tensor], float], n: int, num_resamples: int, seed: int, level: float = LEVEL
) -> tuple[float, float, tuple[float, ...]]:
    """(low, high, values): percentile interval of ``statistic(indices)`` over resampled indices."""
    if num_resamples < 2:
        raise ValueError(f"bootstrap needs at least 2 resamples; got {num_resamples}")
    values = [statistic(idx) for idx in bootstrap_indices(n, num_resamples, seed)]
    alpha = (1 - level) / 2
    low, high = np.quantile(np.asarray(values), [alpha, 1 - alpha])
    return float(low), float(high), tuple(values)
