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
from models.losses import masked_positions
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
    mask_id: int | Tensor,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Returns (x_t, t) for one batch under the configured corruption."""
    t = sample_t(x_1.shape[0], eps=config.t_eps, generator=generator)
    if config.corruption == "maskgit":
        return maskgit_corrupt(x_1, mask_id, generator=generator), t
    return sample_x_t(x_1, t, scheduler, mask_id, generator=generator), t


@dataclass(frozen=True)
class MicroBatch:
    x_1: Tensor  # (b, L)
    x_t: Tensor  # (b, L)
    t: Tensor  # (b,)
    y: Tensor | None  # (b,) or (b, S) with dropped conditions set to the null class / empty caption
    weight: float  # w_r: the mean over ranks of w_r loss(rank r's rows) is the full batch's loss


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
    x_t, t = corrupt(x_1, config, scheduler, model_config.mask_id, generator)  # (B, L), (B,)
    y = None
    if labels is not None:
        y = labels[idx]  # (B,)
        drop = torch.rand(B, generator=generator) < config.class_dropout
        drop = drop.view(B, *[1] * (y.dim() - 1))  # (B,) or (B, 1) for caption ids (B, S)
        y = torch.where(drop, torch.full_like(y, model_config.null_class), y)
    if world_size == 1:
        return MicroBatch(x_1, x_t, t, y, 1.0)
    rows = slice(rank * B // world_size, (rank + 1) * B // world_size)
    weight = 1.0
    if config.loss == "masked_ce":
        masked = masked_positions(x_t, model_config.mask_id)  # (B, L)
        weight = world_size * masked[rows].sum().item() / max(1, masked.sum().item())
    return MicroBatch(x_1[rows], x_t[rows], t[rows], None if y is None else y[rows], weight)


def mean_over_ranks(value: float, parallel: DataParallel | None, device: str | torch.device) -> float:
    """The mean of ``value`` over the ranks (all-reduce); ``value`` itself without ranks."""
    if parallel is None or parallel.world_size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(total)
    return total.item() / parallel.world_size
