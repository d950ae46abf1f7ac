"""How many tokens each step of a confidence- or order-based sampler commits: named count rules.

A schedule w (``UNMASK_SCHEDULES``) falls from w(0) = 1 to w(1) = 0. A count rule turns
(schedule, n steps, N tokens) into n counts, each >= 1, that sum to N (so 1 <= n <= N):

- ``floor``: shares of the weights w(r_k), r = linspace(1, 0, n), floored (float64).
- ``reference``: the same shares rounded, in float32: the paper's reference code (its MGM sampler
  is valeoai's MaskGIT-pytorch ``adap_sche``).
- ``maskgit``: Google's MaskGIT: w is the masked fraction, and after step k floor(N w((k+1)/n))
  tokens stay masked (``maskgit/libml/parallel_decode.py``, ``mask_schedule.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from models.registry import Registry

UNMASK_SCHEDULES: Registry = Registry("MaskGIT schedule")
COUNT_RULES: Registry[list[int]] = Registry("count rule")


@UNMASK_SCHEDULES.register("linear")
def _linear(r: Tensor) -> Tensor:
    return 1 - r


@UNMASK_SCHEDULES.register("root")
def _root(r: Tensor) -> Tensor:
    return 1 - r.sqrt()


@UNMASK_SCHEDULES.register("square")
def _square(r: Tensor) -> Tensor:
    return 1 - r * r


@UNMASK_SCHEDULES.register("cosine")
def _cosine(r: Tensor) -> Tensor:
    return torch.cos(0.5 * math.pi * r)


@UNMASK_SCHEDULES.register("arccos")
def _arccos(r: Tensor) -> Tensor:
    return torch.arccos(r) / (0.5 * math.pi)


def _check_steps(num_steps: int, num_tokens: int) -> None:
    if not 1 <= num_steps <= num_tokens:
        raise ValueError(f"num_steps must be in [1, {num_tokens}] for {num_tokens} tokens, got {num_steps}")


def _last_takes_the_rest(counts: list[int], num_tokens: int) -> list[int]:
    """The last step absorbs N - sum(counts). Where the minimum of 1 per step has overdrawn N
    (the last count would fall below 1), the excess is taken back from the largest steps."""
    counts[-1] += num_tokens - sum(counts)
    while counts[-1] < 1:
        i = max(range(len(counts) - 1), key=lambda j: counts[j])
        counts[i] -= 1
        counts[-1] += 1
    return counts


@COUNT_RULES.register("floor")
def floor_counts(schedule: str, num_steps: int, num_tokens: int) -> list[int]:
    """w_k = schedule(r_k), r = linspace(1, 0, n), in float64;
    counts_k = max(1, floor(w_k / sum(w) * N)), the last step takes the rest."""
    _check_steps(num_steps, num_tokens)
    if num_steps == 1:  # the only step is the last: it takes everything (its weight may be 0 at r = 1)
        return [num_tokens]
    weights = UNMASK_SCHEDULES[schedule](torch.linspace(1.0, 0.0, num_steps, dtype=torch.float64))
    counts = [max(1, int(w)) for w in (weights / weights.sum() * num_tokens).tolist()]
    return _last_takes_the_rest(counts, num_tokens)


@COUNT_RULES.register("reference")
def reference_counts(schedule: str, num_steps: int, num_tokens: int) -> list[int]:
    """The reference code's ``adap_sche``, in its float32: w = schedule(linspace(1, 0, n));
    s = (w / sum(w)) * N; s = round(s) (half to even); s[s == 0] = 1; s[-1] += N - sum(s).

    Where that overdraws N (the last count below 1: many steps for few tokens, which the
    reference's own sampler cannot run) the excess is taken back from the largest steps; every
    runnable case is the reference's exactly."""
    _check_steps(num_steps, num_tokens)
    if num_steps == 1:  # w = schedule(1) = 0: the reference divides 0 by 0; one step takes all
        return [num_tokens]
    weights = UNMASK_SCHEDULES[schedule](torch.linspace(1.0, 0.0, num_steps))  # float32, as there
    shares = ((weights / weights.sum()) * num_tokens).round()  # (n,) float32
    shares[shares == 0] = 1
    return _last_takes_the_rest([int(s) for s in shares.tolist()], num_tokens)


@COUNT_RULES.register("maskgit")
def cumulative_counts(schedule: str, num_steps: int, num_tokens: int) -> list[int]:
    """Google's MaskGIT rule: w is the masked fraction; after step k < n - 1 (0-based)
    mask_len_k = floor(N * clip(w((k + 1) / n), 1e-6, 1)) tokens stay masked (float32, as in its
    JAX code), clamped to [n - k - 1, masked_k - 1]; the last step commits the rest.

    Google clamps below at 1, which at step n - 2 is n - k - 1: any earlier step leaves at least
    one token per step still to come. That bound changes no count wherever Google's rule commits
    at least one token every step (then every mask_len_k >= n - k - 1 already), and keeps
    steps from committing nothing when n nears N. With cosine w, N = 256, n = 8:
    [5, 15, 24, 31, 39, 45, 48, 49]. Not monotone in general: floors of a smooth curve jitter by one."""
    _check_steps(num_steps, num_tokens)
    n = num_steps
    ratios = torch.tensor([(k + 1) / n for k in range(n - 1)], dtype=torch.float32)  # (n - 1,)
    gamma = UNMASK_SCHEDULES[schedule](ratios).clamp(1e-6, 1.0)
    mask_lens = torch.floor(torch.tensor(float(num_tokens)) * gamma).long().tolist()
    counts, masked = [], num_tokens
    for k, mask_len in enumerate(mask_lens):
        mask_len = max(n - k - 1, min(masked - 1, mask_len))
        counts.append(masked - mask_len)
        masked = mask_len
    return [*counts, masked]


def commit_counts(rule: str, schedule: str, num_steps: int, num_tokens: int) -> list[int]:
    """The named rule's counts: ``COUNT_RULES[rule](schedule, num_steps, num_tokens)``."""
    count_rule: Callable[[str, int, int], list[int]] = COUNT_RULES[rule]
    return count_rule(schedule, num_steps, num_tokens)


def counts_for(generated: Tensor, rule: str, schedule: str, num_steps: int) -> list[int]:
    """The counts that generate the True positions of ``generated`` (B, L): every row commits the
    same count at a step, so every row must have as many to generate."""
    num_masked = generated.sum(dim=1)  # (B,)
    if (num_masked != num_masked[0]).any():
        raise ValueError("sampling by step counts needs the same number of masked tokens in every sample")
    return commit_counts(rule, schedule, num_steps, int(num_masked[0]))
