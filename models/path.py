"""The masking path: x_t from x_1 and t, and MaskGIT's exact-count corruption.

Tokens are ids in [0, K); ``mask_id`` (usually K) is [MASK]. Shapes: x_1 (B, L) long.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from models.schedulers import KappaScheduler


def sample_t(
    batch_size: int,
    *,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Training times t = eps + (1 - eps) U(0, 1), shape (B,)."""
    u = torch.rand(batch_size, generator=generator, device=device)
    return eps + (1.0 - eps) * u


def expand_t(t: Tensor, x_1: Tensor) -> Tensor:
    """Broadcasts t of shape (B,) or (B, L) to (B, L).

    A per-token t is how several modalities get independent times: each modality's
    positions carry that modality's t (see ``modality_t``).
    """
    if t.dim() == 1:
        return t[:, None].expand_as(x_1)
    if t.shape != x_1.shape:
        raise ValueError(f"t has shape {tuple(t.shape)}; expected (B,) or {tuple(x_1.shape)}")
    return t


def modality_t(t_per_modality: Tensor, lengths: list[int]) -> Tensor:
    """Per-token times from per-modality times.

    t_per_modality: (B, M), lengths: M segment lengths summing to L -> (B, L).
    """
    if t_per_modality.shape[1] != len(lengths):
        raise ValueError(f"{t_per_modality.shape[1]} times for {len(lengths)} modalities")
    repeats = torch.tensor(lengths, device=t_per_modality.device)
    return torch.repeat_interleave(t_per_modality, repeats, dim=1)  # (B, L)


def sample_x_t(
    x_1: Tensor,
    t: Tensor,
    scheduler: KappaScheduler,
    mask_id: int | Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """x_t^i = x_1^i with probability kappa(t), else [MASK]; independently per token.

    x_1: (B, L) long; t: (B,) or (B, L); mask_id: an int, or (L,) ids (one per position,
    for modalities with their own [MASK]). Returns x_t (B, L).
    """
    kappa_t = scheduler.kappa(expand_t(t, x_1))  # (B, L)
    keep = torch.rand(x_1.shape, generator=generator, device=x_1.device) < kappa_t
    mask = torch.as_tensor(mask_id, device=x_1.device).expand_as(x_1)
    return torch.where(keep, x_1, mask)


def maskgit_gamma(r: Tensor) -> Tensor:
    """MaskGIT's cosine masking ratio gamma(r) = cos(pi r / 2), r in [0, 1)."""
    return torch.cos(0.5 * math.pi * r)


def maskgit_corrupt(x_1: Tensor, mask_id: int, generator: torch.Generator | None = None) -> Tensor:
    """MaskGIT training corruption: exactly ceil(gamma(r) L) tokens masked per sample.

    r ~ U(0, 1) per sample, gamma = cosine, the positions chosen uniformly without
    replacement (random scores, top count). Returns x_t (B, L).
    """
    B, L = x_1.shape
    r = torch.rand(B, generator=generator, device=x_1.device)
    num_masked = torch.ceil(maskgit_gamma(r) * L).clamp(1, L).long()  # (B,)
    scores = torch.rand(B, L, generator=generator, device=x_1.device)
    ranks = scores.argsort(dim=1).argsort(dim=1)  # (B, L) rank of each position
    masked = ranks < num_masked[:, None]
    return torch.where(masked, torch.full_like(x_1, mask_id), x_1)
