"""The categorical draw every sampler shares: one float64 uniform per draw, inverted through a
two-level cumulative distribution.

A class's interval of [0, 1) is found in two steps: its block of ``BLOCK`` classes by the float64
running sum of the blocks' float32 sums s_b, then the class inside its block by the float64
running sum of the block's own entries, scaled to s_b. So class i of block b is drawn with
probability p_i (s_b / S_b) / sum_b s_b, S_b the block's exact sum: every class within a factor
1 +- 1e-6 of its own mass, however small beside the running sum (a float32 running sum over
16,384 codes quantises a class of mass 2e-8 to nothing or to a whole 6e-8 step), and a class of
no mass is never drawn. Only the rows' weights are read at full width, three float32 passes
(max, exp, block sums); the float64 work is per block and per drawn block.
"""

from __future__ import annotations

import torch
from torch import Tensor

BLOCK = 64  # classes per block: float32 block sums stay within 64 * 2^-24 of exact


def uniforms(n: int, generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    """(n,) float64 uniforms in [0, 1) for ``inverse_cdf`` / ``categorical``."""
    return torch.rand(n, generator=generator, device=device, dtype=torch.float64)


def categorical(logits: Tensor, u: Tensor, row_max: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """logits (N, V) float32, the caller's own (overwritten by their unnormalised probabilities),
    u (N,) uniforms -> (drawn class (N,), its log-probability log softmax(logits)[drawn] (N,)).
    ``row_max`` (N, 1): the rows' maxima, when the caller has them already."""
    row_max = logits.amax(dim=-1, keepdim=True) if row_max is None else row_max
    weights = logits.sub_(row_max).exp_()  # (N, V): max 1, so sum >= 1
    drawn, total = _draw(weights, u[:, None])  # (N, 1) each
    log_p = weights.gather(1, drawn).double().log_() - total.log()  # (N, 1)
    return drawn.squeeze(1), log_p.squeeze(1).to(logits.dtype)


def inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """probs (N, V) non-negative (rows need not be normalised, each with some mass), u uniforms in
    [0, 1), (N,) or (N, S) -> per row the class whose interval holds u * total, (N,) or (N, S).
    ``probs`` is left alone."""
    drawn, _ = _draw(probs, u if u.dim() == 2 else u[:, None])
    return drawn if u.dim() == 2 else drawn.squeeze(1)


def _draw(weights: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """weights (N, V), u (N, S) -> (classes (N, S), the rows' totals sum_b s_b (N, 1) float64)."""
    n, v = weights.shape
    full = v - v % BLOCK
    sums = weights[:, :full].unflatten(1, (full // BLOCK, BLOCK)).sum(dim=-1)  # (N, nb) float32
    if full < v:
        sums = torch.cat([sums, weights[:, full:].sum(dim=-1, keepdim=True)], dim=1)
    sums = sums.double()
    ends = sums.cumsum(dim=-1)  # (N, nb)
    starts = torch.cat([torch.zeros_like(ends[:, :1]), ends[:, :-1]], dim=1)  # (N, nb)
    target = u.double() * ends[:, -1:]  # (N, S)
    # u * total may round up to total: never past the last block (or class) with mass.
    block = torch.searchsorted(ends, target, right=True).clamp_max_(ends.shape[1] - 1)
    block = torch.minimum(block, last_positive(sums)[:, None])  # (N, S)
    cols = block[..., None] * BLOCK + torch.arange(BLOCK, device=weights.device)  # (N, S, BLOCK)
    entries = weights.gather(1, cols.clamp_max(v - 1).flatten(1)).view(cols.shape).double()
    entries = entries.masked_fill_(cols >= v, 0.0)  # (N, S, BLOCK)
    cum = entries.cumsum(dim=-1)  # (N, S, BLOCK)
    cum = cum.mul_((sums.gather(1, block) / cum[..., -1])[..., None]).add_(starts.gather(1, block)[..., None])
    inside = (cum <= target[..., None]).sum(dim=-1)  # (N, S): first class whose end passes u * total
    inside = torch.minimum(inside, last_positive(entries))
    return block * BLOCK + inside, ends[:, -1:]


def last_positive(values: Tensor) -> Tensor:
    """values (..., K) >= 0 with some positive -> the index of the last positive one, (...)."""
    index = torch.arange(values.shape[-1], device=values.device)
    return torch.where(values > 0, index, -1).amax(dim=-1)
