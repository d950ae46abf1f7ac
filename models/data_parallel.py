"""Data-parallel training: one micro-batch drawn alike on every rank, each rank training on its rows.

With N ranks and a micro-batch of B rows, rank r trains on rows [r B / N, (r + 1) B / N) and
scales its loss by w_r so that DDP's mean of the ranks' gradients is the gradient of the whole
micro-batch's loss: N workers take the optimizer steps one process takes on the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from models.backbone import ModelConfig
from models.losses import LOSSES, masked_positions
from models.path import maskgit_corrupt, sample_t, sample_x_t
from models.schedulers import KappaScheduler

if TYPE_CHECKING:
    from models.trainer import TrainConfig


@dataclass(frozen=True)
class DataParallel:
    """This process is rank ``rank`` of ``world_size`` data-parallel processes.

    ``wrap(model)`` returns the model's gradient-averaging form (DDP: after backward every rank
    holds the mean over ranks of their gradients); torch.distributed is initialised.
    """

    rank: int
    world_size: int
    wrap: Callable[[nn.Module], nn.Module]


def corrupt(
    x_1: Tensor,
    config: TrainConfig,
    scheduler: KappaScheduler,
    model_config: ModelConfig,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Returns (x_t, t) for one batch under the configured corruption.

    t is (B,), or (B, M) for several modalities: each modality is masked with its own
    independent time (and its own [MASK] id), so that a joint model learns every pair of
    times, including (1, t) where one modality is given and the other generated.
    """
    layout, B = model_config.layout, x_1.shape[0]
    if layout is None:
        t = sample_t(B, eps=config.t_eps, generator=generator)
        if config.corruption == "maskgit":
            return maskgit_corrupt(x_1, model_config.mask_id, generator=generator), t
        return sample_x_t(x_1, t, scheduler, model_config.mask_id, generator=generator), t
    M = len(layout.modalities)
    t = sample_t(B * M, eps=config.t_eps, generator=generator).view(B, M)  # (B, M)
    if config.corruption == "maskgit":
        parts = [
            maskgit_corrupt(x_1[:, layout.segment(name)], layout.vocab_size + i, generator=generator)
            for i, name in enumerate(layout.names)
        ]
        return torch.cat(parts, dim=1), t
    return sample_x_t(x_1, layout.token_times(t), scheduler, layout.mask_ids(), generator=generator), t


def segments(model_config: ModelConfig) -> list[slice]:
    """The positions of each modality (one slice for a single-grid model)."""
    layout = model_config.layout
    return [slice(None)] if layout is None else [layout.segment(name) for name in layout.names]


def training_loss(
    logits: Tensor,
    x_1: Tensor,
    x_t: Tensor,
    t: Tensor,
    config: TrainConfig,
    scheduler: KappaScheduler,
    model_config: ModelConfig,
    weights: tuple[float, ...] | None = None,
) -> Tensor:
    """The configured loss; for several modalities the sum of the per-modality losses (each
    modality's masked CE normalised by its own masked count), each times ``weights[m]``."""
    mask_id = model_config.mask_id
    masked = masked_positions(x_t, mask_id.to(x_t.device) if isinstance(mask_id, Tensor) else mask_id)
    layout = model_config.layout
    t_tok = t if layout is None else layout.token_times(t)  # (b,) or (b, L)
    total = 0.0
    for m, s in enumerate(segments(model_config)):
        loss = LOSSES[config.loss](
            logits[:, s], x_1[:, s], masked[:, s], t_tok if layout is None else t_tok[:, s], scheduler
        )
        total = total + (loss if weights is None or weights[m] == 1.0 else loss * weights[m])
    return total


@dataclass(frozen=True)
class MicroBatch:
    x_1: Tensor  # (b, L)
    x_t: Tensor  # (b, L)
    t: Tensor  # (b,)
    y: Tensor | None  # (b,) or (b, S) with dropped conditions set to the null class / empty caption
    weights: tuple[float, ...]  # w_r per modality: the mean over ranks of w_r loss(rank r's rows)
    # is the full batch's loss


def draw_micro_batch(
    tokens: Tensor,
    labels: Tensor | None,
    config: TrainConfig,
    scheduler: KappaScheduler,
    model_config: ModelConfig,
    generator: torch.Generator,
    shard: tuple[int, int] = (0, 1),
) -> MicroBatch:
    """A micro-batch of B = ``config.batch_size`` rows drawn from ``generator``; rank r's rows of it.

    Every rank draws the whole micro-batch, so the generator advances alike everywhere (a
    checkpoint resumes under any number of workers), and rank r of N keeps rows
    [r b, (r + 1) b), b = B / N: disjoint shards whose union is one process's micro-batch.
    masked_ce divides by the batch's masked count M, so w_r = N M_r / M makes DDP's mean of the
    ranks' gradients the full batch's gradient; the other losses average over all B L
    positions, so equal shards have w_r = 1.
    """
    rank, world_size = shard
    B = config.batch_size
    idx = torch.randint(0, tokens.shape[0], (B,), generator=generator)
    x_1 = tokens[idx]  # (B, L)
    x_t, t = corrupt(x_1, config, scheduler, model_config, generator)  # (B, L), (B,) or (B, M)
    y = None
    if labels is not None:
        y = labels[idx]  # (B,)
        drop = torch.rand(B, generator=generator) < config.class_dropout
        drop = drop.view(B, *[1] * (y.dim() - 1))  # (B,) or (B, 1) for caption ids (B, S)
        y = torch.where(drop, torch.full_like(y, model_config.null_class), y)
    ones = tuple(1.0 for _ in segments(model_config))
    if world_size == 1:
        return MicroBatch(x_1, x_t, t, y, ones)
    rows = slice(rank * B // world_size, (rank + 1) * B // world_size)
    weights = ones
    if config.loss == "masked_ce":  # each modality's CE is normalised by its own masked count
        masked = masked_positions(x_t, model_config.mask_id)  # (B, L)
        weights = tuple(
            world_size * masked[rows, s].sum().item() / max(1, masked[:, s].sum().item())
            for s in segments(model_config)
        )
    return MicroBatch(x_1[rows], x_t[rows], t[rows], None if y is None else y[rows], weights)


def mean_over_ranks(value: float, parallel: DataParallel | None, device: str | torch.device) -> float:
    """The mean of ``value`` over the ranks (all-reduce); ``value`` itself without ranks."""
    if parallel is None or parallel.world_size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(total)
    return total.item() / parallel.world_size
