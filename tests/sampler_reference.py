"""A frozen copy of the samplers as they were before they learned to touch only the positions they
update (commit 135c53e): full (B, L, V) logit processing, CFG combined on the whole grid.

The published sampled tokens came from this code, so the samplers in ``models.samplers`` must give
bit-identical tokens to it for the same seed, network and settings. Do not "fix" or speed up
anything here: it is the oracle. Only the pieces that changed are copied; the schedules, count
rules, grids, kappa and randomisation strengths still come from ``models``.

One change since: the categorical draw (``categorical``) takes float64 uniforms and a float64
running sum, in the same order from the generator, as the samplers do since they draw classes
below float32 resolution (``models.samplers.base.inverse_cdf``); it is written here on its own, on
the whole grid, not imported.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from models.samplers import EulerSampler, MaskGITSampler, commit_counts
from models.samplers.maskgit import RANDOMIZATIONS, invert_kappa

# --- models/guidance.py, frozen ---------------------------------------------------------------------


def cfg_combine(cond_logits: Tensor, uncond_logits: Tensor, cfg_scale: float) -> Tensor:
    return uncond_logits + cfg_scale * (cond_logits - uncond_logits)


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return logits / temperature


def top_k_filter(logits: Tensor, k: int | None) -> Tensor:
    if not k or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float | None) -> Tensor:
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    drop_sorted = (probs.cumsum(dim=-1) - probs) >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def exclude_class(logits: Tensor, class_id: int | Tensor | None) -> Tensor:
    if isinstance(class_id, Tensor) and class_id.dim() == 1:
        ids = class_id.to(logits.device)[None, :, None].expand(logits.shape[0], -1, 1)
        return logits.scatter(-1, ids, float("-inf"))
    if class_id is None or int(class_id) >= logits.shape[-1]:
        return logits
    logits = logits.clone()
    logits[..., int(class_id)] = float("-inf")
    return logits


def process_logits(logits, *, temperature=1.0, top_k=None, top_p=None, mask_id=None) -> Tensor:
    logits = exclude_class(logits.float(), mask_id)
    logits = apply_temperature(logits, temperature)
    return top_p_filter(top_k_filter(logits, top_k), top_p)


# --- models/samplers/base.py, frozen ----------------------------------------------------------------


class ReferenceDenoiser:
    """The Denoiser's logits (batched CFG as one forward of the doubled batch, or two forwards)."""

    def __init__(self, net: nn.Module, *, cfg_scale=1.0, null_class=None, cfg_batched=True) -> None:
        self.net, self.cfg_scale, self.null_class, self.cfg_batched = net, cfg_scale, null_class, cfg_batched

    @torch.no_grad()
    def __call__(self, x_t: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        if self.cfg_scale == 1.0 or y is None:
            return self.net(x_t, t, y).float()
        null = torch.full_like(y, self.null_class)
        if self.cfg_batched:
            logits = self.net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null])).float()
            cond, uncond = logits.chunk(2)
        else:
            cond, uncond = self.net(x_t, t, y).float(), self.net(x_t, t, null).float()
        return cfg_combine(cond, uncond, self.cfg_scale)


def categorical(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    flat = probs.reshape(-1, probs.shape[-1])
    u = torch.rand(flat.shape[0], 1, generator=generator, device=probs.device, dtype=torch.float64)
    cdf = flat.double().cumsum(dim=-1)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_max(flat.shape[-1] - 1)
    return idx.reshape(probs.shape[:-1])


def initial_tokens(batch_size, seq_len, mask_id, x_init, device) -> Tensor:
    if x_init is None:
        ids = torch.as_tensor(mask_id, dtype=torch.long, device=device)
        return ids.expand(batch_size, seq_len).clone()
    return x_init.clone().to(device)


# --- models/samplers/euler.py, frozen ---------------------------------------------------------------


@torch.no_grad()
def euler_sample(
    s: EulerSampler, denoiser, *, batch_size, seq_len, mask_id, y=None, x_init=None, generator=None
) -> Tensor:
    device = "cpu"
    x = initial_tokens(batch_size, seq_len, mask_id, x_init, device)
    generated = x == mask_id
    n = s.num_steps
    if s.reference_grid:
        grid = torch.linspace(s.t_min, 1.0, n + 1, device=device)[:n]
    else:
        grid = torch.linspace(0.0, 1.0, n + 1, device=device)
    kappa = s.scheduler.kappa(grid)
    num_calls = len(grid) - 1
    logits = None
    for k in range(num_calls):
        t = grid[k].expand(batch_size)
        logits = process_logits(
            denoiser(x, t, y),
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            mask_id=mask_id if s.exclude_mask else None,
        )
        last = k == num_calls - 1 and not s.reference_grid
        masked = x == mask_id
        if last:
            p_unmask = torch.ones((), device=device)
        else:
            p_unmask = ((kappa[k + 1] - kappa[k]) / (1 - kappa[k]).clamp_min(1e-12)).clamp(0, 1)
        if last and s.argmax_fill:
            proposal = logits.argmax(dim=-1)
        else:
            proposal = categorical(logits.softmax(dim=-1), generator)
        unmask = masked & (torch.rand(x.shape, generator=generator, device=device) < p_unmask)
        x = torch.where(unmask, proposal, x)
        if s.remask_scale > 0 and not last:
            h = grid[k + 1] - grid[k]
            p_remask = (s.remask_scale * h).clamp(max=1.0)
            remask = (
                generated & ~masked & (torch.rand(x.shape, generator=generator, device=device) < p_remask)
            )
            x = torch.where(remask, mask_id, x)
    if s.reference_grid:
        left = x == mask_id
        fill = logits.argmax(dim=-1) if s.argmax_fill else torch.zeros_like(x)
        x = torch.where(left, fill, x)
    return x


# --- models/samplers/maskgit.py, frozen -------------------------------------------------------------


def _time(s: MaskGITSampler, x: Tensor, mask_id, generated: Tensor) -> Tensor:
    B = x.shape[0]
    if s.reference_time or s.scheduler is None:
        return torch.zeros(B, device=x.device)
    masked = (x == mask_id).sum(dim=1).float()
    positions = generated.sum(dim=1) if isinstance(mask_id, Tensor) else torch.full_like(masked, x.shape[1])
    unmasked_fraction = 1.0 - masked / positions.clamp_min(1).float()
    return invert_kappa(s.scheduler, unmasked_fraction)


@torch.no_grad()
def maskgit_sample(
    s: MaskGITSampler, denoiser, *, batch_size, seq_len, mask_id, y=None, x_init=None, generator=None
) -> Tensor:
    device = "cpu"
    x = initial_tokens(batch_size, seq_len, mask_id, x_init, device)
    generated = x == mask_id
    counts = commit_counts(s.counts, s.schedule, s.num_steps, int(generated.sum(dim=1)[0]))
    anneal = RANDOMIZATIONS[s.randomization]
    for k, count in enumerate(counts):
        logits = process_logits(
            denoiser(x, _time(s, x, mask_id, generated), y),
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            mask_id=mask_id if s.exclude_mask else None,
        )
        log_probs = logits.log_softmax(dim=-1)
        proposal = categorical(log_probs.exp(), generator)
        strength = anneal(k, s.num_steps)
        u = torch.rand(x.shape, generator=generator, device=device).clamp(1e-20, 1 - 1e-7)
        if math.isinf(strength):
            confidence = u
        else:
            confidence = log_probs.gather(-1, proposal[..., None]).squeeze(-1)
            confidence = confidence + s.gumbel_scale * strength * -torch.log(-torch.log(u))
        masked = x == mask_id
        confidence = confidence.masked_fill(~masked, -math.inf)
        chosen = torch.topk(confidence, count, dim=1).indices
        commit = torch.zeros_like(masked).scatter(1, chosen, True) & masked
        x = torch.where(commit, proposal, x)
    return x


def reference_sample(sampler, net, *, cfg_scale=1.0, null_class=None, cfg_batched=True, **kw) -> Tensor:
    """The tokens the frozen implementation draws for ``sampler`` (an Euler or MaskGIT config)."""
    denoiser = ReferenceDenoiser(net, cfg_scale=cfg_scale, null_class=null_class, cfg_batched=cfg_batched)
    sample = euler_sample if isinstance(sampler, EulerSampler) else maskgit_sample
    return sample(sampler, denoiser, **kw)
