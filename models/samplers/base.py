"""The sampler interface: a guided, counted model wrapper in; tokens and exact NFE out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from models.guidance import cfg_combine


@dataclass
class NFECount:
    """Network evaluations so far.

    ``calls``: forward calls (batched CFG counts one call of a double batch);
    ``unbatched``: the calls the same work would take with CFG as two separate forwards;
    ``rows``: samples pushed through the network, summed over calls.
    """

    calls: int = 0
    unbatched: int = 0
    rows: int = 0


class Denoiser:
    """Wraps a network ``net(x_t, t, y) -> logits (B, L, V)`` with CFG and NFE counting.

    With ``cfg_scale != 1`` and a condition, the conditional and unconditional halves run as
    one forward of a (2B, L) batch (``cfg_batched=True``, the default) or as two forwards
    (the reference code's way). Returns guided raw logits, before temperature. The null
    condition is ``full_like(y, null_class)``: the null class for class ids (B,), the empty
    caption (all PAD, ``null_class`` = 0) for caption ids (B, S).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        cfg_scale: float = 1.0,
        null_class: int | None = None,
        cfg_batched: bool = True,
    ) -> None:
        if cfg_scale != 1.0 and null_class is None:
            raise ValueError("cfg_scale != 1 needs the network's null class (num_classes)")
        self.net = net
        self.cfg_scale = cfg_scale
        self.null_class = null_class
        self.cfg_batched = cfg_batched
        self.count = NFECount()

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0

    def _forward(self, x_t: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        self.count.calls += 1
        self.count.rows += x_t.shape[0]
        return self.net(x_t, t, y).float()

    @torch.no_grad()
    def __call__(self, x_t: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        """x_t (B, L), t (B,), y (B,) / (B, S) or None -> logits (B, L, V)."""
        if not self.guided or y is None:
            self.count.unbatched += 1
            return self._forward(x_t, t, y)
        null = torch.full_like(y, self.null_class)
        self.count.unbatched += 2
        if self.cfg_batched:
            logits = self._forward(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))
            cond, uncond = logits.chunk(2)  # (B, L, V) each
        else:
            cond, uncond = self._forward(x_t, t, y), self._forward(x_t, t, null)
        return cfg_combine(cond, uncond, self.cfg_scale)


@dataclass(frozen=True)
class SampleResult:
    """Sampled tokens (B, L) with no [MASK] left, the NFE spent, and an optional trajectory."""

    tokens: Tensor
    nfe: int
    nfe_unbatched: int
    trajectory: list[Tensor] | None = field(default=None, repr=False)


class Sampler(ABC):
    """Turns an all-[MASK] grid (or a partly given one) into tokens.

    Tokens of ``x_init`` that are not [MASK] are clamped: never changed (conditioning on a
    given modality). Deterministic for a given ``generator`` state.
    """

    @abstractmethod
    def sample(
        self,
        denoiser: Denoiser,
        *,
        batch_size: int,
        seq_len: int,
        mask_id: int | Tensor,
        y: Tensor | None = None,
        x_init: Tensor | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        return_trajectory: bool = False,
    ) -> SampleResult: ...

    @staticmethod
    def initial_tokens(
        batch_size: int,
        seq_len: int,
        mask_id: int | Tensor,
        x_init: Tensor | None,
        device: torch.device | str,
    ) -> Tensor:
        """x_init, or all [MASK]; ``mask_id`` is an int or (L,) ids (one [MASK] per modality)."""
        if x_init is None:
            return mask_tokens(mask_id, batch_size, seq_len, device)
        if tuple(x_init.shape) != (batch_size, seq_len):
            raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {(batch_size, seq_len)}")
        return x_init.clone().to(device)


def mask_tokens(mask_id: int | Tensor, batch_size: int, seq_len: int, device: torch.device | str) -> Tensor:
    """(B, L) all [MASK]: ``mask_id`` an int, or (L,) per-position ids."""
    ids = torch.as_tensor(mask_id, dtype=torch.long, device=device)
    return ids.expand(batch_size, seq_len).clone()


def categorical(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One sample per row of probs (..., V) via inverse CDF with a seeded uniform."""
    flat = probs.reshape(-1, probs.shape[-1])
    u = torch.rand(flat.shape[0], 1, generator=generator, device=probs.device)
    cdf = flat.cumsum(dim=-1)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_max(flat.shape[-1] - 1)
    return idx.reshape(probs.shape[:-1])
