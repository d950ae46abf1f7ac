"""Training losses over masked positions.

logits: (B, L, V); x_1: (B, L) targets; x_t: (B, L) with [MASK] where masked; t: (B,) or (B, L).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.path import expand_t
from models.registry import Registry
from models.schedulers import KappaScheduler

LOSSES: Registry = Registry("loss weighting")


def _token_ce(logits: Tensor, x_1: Tensor) -> Tensor:
    """Per-token cross-entropy -log p(x_1^i | x_t), shape (B, L). Over the contiguous last
    dimension: a (B, V, L) view costs a copy each way and a softmax about 4x slower on CPU."""
    return F.cross_entropy(logits.flatten(0, -2).float(), x_1.flatten(), reduction="none").view_as(x_1)


@LOSSES.register("masked_ce")
def masked_ce(logits: Tensor, x_1: Tensor, masked: Tensor, t: Tensor, scheduler: KappaScheduler) -> Tensor:
    """Paper default: sum of CE over masked positions / number of masked tokens in the batch."""
    ce = _token_ce(logits, x_1)  # (B, L)
    m = masked.float()
    return (ce * m).sum() / m.sum().clamp_min(1.0)


@LOSSES.register("elbo")
def elbo(logits: Tensor, x_1: Tensor, masked: Tensor, t: Tensor, scheduler: KappaScheduler) -> Tensor:
    """MDLM negative ELBO per token: mean over all B L positions of w(t) 1[masked] CE.

    w(t) = kappa'(t) / (1 - kappa(t)). Averaging over all positions (not over the masked
    ones) makes this an unbiased estimate of the per-token bound on -log p(x_1), in nats:
    for kappa = t, E[1[masked]] = 1 - t cancels w = 1 / (1 - t).
    """
    ce = _token_ce(logits, x_1)  # (B, L)
    w = scheduler.rate(expand_t(t, x_1))  # (B, L)
    return (w * ce * masked.float()).mean()


@LOSSES.register("all_token_ce")
def all_token_ce(logits: Tensor, x_1: Tensor, masked: Tensor, t: Tensor, scheduler: KappaScheduler) -> Tensor:
    """Mean CE over all positions, masked or not."""
    return _token_ce(logits, x_1).mean()


def masked_positions(x_t: Tensor, mask_id: int | Tensor) -> Tensor:
    """Boolean (B, L): where x_t is [MASK]."""
    return x_t == torch.as_tensor(mask_id, device=x_t.device)
