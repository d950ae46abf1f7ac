"""Held-out diagnostics of a trained network: masked CE, and whether it uses context.

A model that learned only per-position marginals has the same loss on a token whether the
rest of the grid is given or not; ``context_check`` measures that gap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.losses import masked_positions
from models.path import sample_x_t
from models.samplers.maskgit import invert_kappa
from models.schedulers import KappaScheduler


def unigram_entropy(tokens: Tensor, vocab_size: int) -> float:
    """Entropy (nats) of the pooled token distribution: the loss of a context-free, position-free model."""
    p = torch.bincount(tokens.flatten(), minlength=vocab_size).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


@torch.no_grad()
def heldout_masked_ce(
    net: nn.Module,
    x_1: Tensor,
    y: Tensor | None,
    scheduler: KappaScheduler,
    mask_id: int,
    *,
    seed: int = 0,
    repeats: int = 4,
) -> float:
    """Masked CE (nats per masked token) on held-out data, t ~ U(0, 1), fixed seed."""
    g = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for _ in range(repeats):
        t = torch.rand(x_1.shape[0], generator=g)
        x_t = sample_x_t(x_1, t, scheduler, mask_id, generator=g)
        m = masked_positions(x_t, mask_id)
        ce = F.cross_entropy(net(x_t, t, y).transpose(1, 2).float(), x_1, reduction="none")  # (B, L)
        total, count = total + float(ce[m].sum()), count + int(m.sum())
    return total / max(count, 1)


@torch.no_grad()
def context_check(
    net: nn.Module, x_1: Tensor, y: Tensor | None, scheduler: KappaScheduler, mask_id: int, *, seed: int = 0
) -> dict[str, float]:
    """CE of one random position per sample when only it is masked vs when all are masked.

    Times follow the unmasked fraction: t = kappa^-1((L - 1) / L) and t = 0.
    """
    B, L = x_1.shape
    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(0, L, (B,), generator=g)
    rows = torch.arange(B)
    one = x_1.clone()
    one[rows, pos] = mask_id
    everything = torch.full_like(x_1, mask_id)
    t_one = invert_kappa(scheduler, torch.full((B,), (L - 1) / L))
    t_all = torch.zeros(B)
    target = x_1[rows, pos]

    def ce(x: Tensor, t: Tensor) -> float:
        logits = net(x, t, y)[rows, pos].float()  # (B, V)
        return float(F.cross_entropy(logits, target))

    return {"ce_one_masked": ce(one, t_one), "ce_all_masked": ce(everything, t_all)}
