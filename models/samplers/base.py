"""The sampler interface: a guided, counted model wrapper in; tokens and exact NFE out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor

from models.guidance import process_logits
from models.samplers.denoiser import Denoiser
from models.samplers.draw import inverse_cdf, uniforms  # noqa: F401  (the samplers' shared draw)

# Rows of logits a sampler gathers, guides and draws from at a time: a block's copies stay in the
# cache between those passes (on CPU a guided draw over ~6,000 rows of 1,024 codes took 16 ms in
# one block, 7.5 in blocks of 1,024: benchmarks/sampler.py's MaskGIT CFG row).
DRAW_ROWS = 1024


@dataclass(frozen=True)
class SampleResult:
    """Sampled tokens (B, L) with no [MASK] left, the NFE spent, how CFG ran, and an optional trajectory."""

    tokens: Tensor
    nfe: int
    nfe_unbatched: int
    trajectory: list[Tensor] | None = field(default=None, repr=False)
    cfg_mode: str | None = None  # "batched", "two-pass" (``CFG_MODES``), or None: no guidance


class Sampler(ABC):
    """Turns an all-[MASK] grid (or a partly given one) into tokens.

    Tokens of ``x_init`` that are not [MASK] are clamped: never changed (conditioning on a
    given modality). Deterministic for a given ``generator`` state.
    """

    # The sampling distribution's options, fields of every sampler (``models.guidance``).
    temperature: float
    top_k: int | None
    top_p: float | None
    exclude_mask: bool

    def sampling_logits(self, logits: Tensor, rows: Tensor, mask_id: int | Tensor, seq_len: int) -> Tensor:
        """Gathered logits (N, V) of the rows (N,) of the flattened (B, L) grid, processed in place:
        [MASK] excluded (each row's own id), / T, top-k, top-p."""
        if isinstance(mask_id, Tensor) and mask_id.dim() == 1:
            mask_id = mask_id[rows % seq_len]  # (N,): one [MASK] per modality
        return process_logits(
            logits,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            mask_id=mask_id if self.exclude_mask else None,
            in_place=True,
        )

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
        grids: tuple[tuple[int, ...], ...] | None = None,
    ) -> SampleResult:
        """``grids``: the token grid of each segment of the sequence, in order (``ModelConfig
        .segments``: one grid, or one per modality); None: one 1-D grid (seq_len,). Samplers that
        ignore space (Euler, MaskGIT) ignore it."""

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


def flat_positions(select: Tensor) -> Tensor:
    """select (B, L) bool -> (N,) its positions in the flattened grid, ascending."""
    return select.reshape(-1).nonzero().squeeze(1)
