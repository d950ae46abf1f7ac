"""MaskGIT-style confidence decoding (the paper's MGM sampler).

Step k of n: draw a token at every masked position, score it by
    confidence = log p(drawn token) + g * gumbel_scale * anneal(k),   g ~ Gumbel(0, 1),
and commit the ``counts[k]`` most confident (``models.samplers.counts``); committed tokens are
never revisited.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from models.registry import Registry
from models.samplers.base import DRAW_ROWS, Denoiser, Sampler, SampleResult, flat_positions
from models.samplers.counts import COUNT_RULES, UNMASK_SCHEDULES, counts_for
from models.samplers.denoiser import StepLogits
from models.samplers.draw import categorical, uniforms
from models.schedulers import KappaScheduler

RANDOMIZATIONS: Registry = Registry("MaskGIT randomization")


@RANDOMIZATIONS.register("none")
def _no_noise(k: int, n: int) -> float:
    return 0.0


@RANDOMIZATIONS.register("linear")
def _linear_noise(k: int, n: int) -> float:
    """Gumbel scale annealed linearly from full at step 0 to 0 at the last step."""
    return 1.0 - k / (n - 1) if n > 1 else 1.0


@RANDOMIZATIONS.register("warmup")
def _warmup_noise(k: int, n: int) -> float:
    """Full Gumbel scale for the first half of the steps, then linear to 0."""
    if n == 1:
        return 1.0
    frac = k / (n - 1)
    return 1.0 if frac <= 0.5 else 2.0 * (1.0 - frac)


@RANDOMIZATIONS.register("random")
def _random_order(k: int, n: int) -> float:
    """Marker: commit in a uniformly random order (confidence ignored)."""
    return math.inf


def invert_kappa(scheduler: KappaScheduler, kappa_t: Tensor, iters: int = 40) -> Tensor:
    """t with kappa(t) = kappa_t by bisection (kappa is increasing on [0, 1])."""
    lo, hi = torch.zeros_like(kappa_t), torch.ones_like(kappa_t)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        below = scheduler.kappa(mid) < kappa_t
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def etm_time(x: Tensor, mask_id: int | Tensor, generated: Tensor, scheduler: KappaScheduler | None) -> Tensor:
    """(B,) t = kappa^-1(unmasked fraction); 0 without a scheduler (an ITM, or the reference's t = 0).

    One modality: the fraction of the whole state the network sees (a given part is data under
    the same single t). Several modalities (mask ids (L,)): of the positions being generated,
    since the given modalities carry their own t = 1 (``models.modalities.GivenModalities``)."""
    if scheduler is None:
        return torch.zeros(x.shape[0], device=x.device)
    masked = (x == mask_id).sum(dim=1).float()  # (B,)
    positions = generated.sum(dim=1) if isinstance(mask_id, Tensor) else torch.full_like(masked, x.shape[1])
    unmasked_fraction = 1.0 - masked / positions.clamp_min(1).float()
    return invert_kappa(scheduler, unmasked_fraction)


@dataclass(frozen=True)
class MaskGITSampler(Sampler):
    """Options.

    schedule: the weights of the steps' counts (``UNMASK_SCHEDULES``).
    counts: the rule that turns them into counts (``COUNT_RULES``): "floor" (the default),
        "reference" (the paper's code, rounded), "maskgit" (Google's MaskGIT).
    randomization: Gumbel noise on the confidence (``RANDOMIZATIONS``).
    gumbel_scale: its scale at full strength (MaskGIT's choice temperature, 4.5).
    scheduler: the training kappa; an ETM is called at t = kappa^-1(unmasked fraction).
    reference_time: call the network at t = 0 always, as the reference code does.
    """

    num_steps: int = 8
    schedule: str = "cosine"
    counts: str = "floor"
    randomization: str = "linear"
    gumbel_scale: float = 4.5
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    scheduler: KappaScheduler | None = None
    reference_time: bool = False
    exclude_mask: bool = True

    def __post_init__(self) -> None:
        UNMASK_SCHEDULES[self.schedule]  # fail now on an unknown name
        COUNT_RULES[self.counts]
        RANDOMIZATIONS[self.randomization]

    def _time(self, x: Tensor, mask_id: int | Tensor, generated: Tensor) -> Tensor:
        """t = kappa^-1(unmasked fraction) (``etm_time``); 0 with ``reference_time``."""
        return etm_time(x, mask_id, generated, None if self.reference_time else self.scheduler)

    @torch.no_grad()
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
        if isinstance(mask_id, Tensor):
            mask_id = mask_id.to(device)  # (L,): one [MASK] per modality
        x = self.initial_tokens(batch_size, seq_len, mask_id, x_init, device)  # (B, L)
        generated = x == mask_id
        counts = counts_for(generated, self.counts, self.schedule, self.num_steps)
        anneal = RANDOMIZATIONS[self.randomization]
        start = (denoiser.count.evaluations, denoiser.count.unbatched)
        trajectory = [x.cpu()] if return_trajectory else None
        for k, count in enumerate(counts):
            masked = x == mask_id  # (B, L)
            t = self._time(x, mask_id, generated)
            # The uniforms are drawn in the order they always were (one per position for its token, the
            # inverse CDF's; then the Gumbel / order ones), before anything reads the logits.
            u_token = uniforms(x.numel(), generator, device)  # (B * L,) float64
            u = torch.rand(x.shape, generator=generator, device=device).clamp(1e-20, 1 - 1e-7)  # (B, L)
            strength = anneal(k, self.num_steps)
            step = denoiser.evaluate(x, t, y)
            draw = partial(self._draw, step, u_token, mask_id, seq_len)
            if math.isinf(strength):  # random order: the commits are known, only they need a token
                rows = flat_positions(self._commit(u, masked, count))  # (N,)
                x = x.reshape(-1).index_put((rows,), draw(rows)[2]).view_as(x)
            else:
                noise = self.gumbel_scale * strength * -torch.log(-torch.log(u))  # (B, L)
                x = self._commit_most_confident(draw, x, masked, noise, count, prune=strength > 0)
            del step, draw  # the network's output goes before the next forward
            if trajectory is not None:
                trajectory.append(x.cpu())
        return SampleResult(
            tokens=x,
            nfe=denoiser.count.evaluations - start[0],
            nfe_unbatched=denoiser.count.unbatched - start[1],
            trajectory=trajectory,
            cfg_mode=denoiser.cfg_mode,
        )

    def _draw(
        self,
        step: StepLogits,
        u_token: Tensor,
        mask_id: int | Tensor,
        seq_len: int,
        rows: Tensor,
        need: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """At rows (N,) of the flattened grid: (the rows drawn, log p of each one's drawn token,
        the drawn token), (M,) each, ``DRAW_ROWS`` rows at a time (each row's draw is its own: the
        blocks change no bit). With ``need`` (N,): a row whose log p cannot reach its need
        (``_can_reach``) is not drawn; every other row is drawn as without it."""
        kept, drawn, log_p = [], [], []
        blocks = rows.split(DRAW_ROWS)
        needs = need.split(DRAW_ROWS) if need is not None else [None] * len(blocks)
        for block, floor in zip(blocks, needs, strict=True):
            logits = step.rows(block)  # (n, V), a copy
            support = self._support_mean(logits, block, mask_id, seq_len) if floor is not None else None
            logits = self.sampling_logits(logits, block, mask_id, seq_len)
            top = logits.amax(dim=-1, keepdim=True)  # (n, 1)
            if support is not None:
                reach = _can_reach(top.squeeze(1), support, floor)
                if not bool(reach.all()):
                    block, logits, top = block[reach], logits[reach], top[reach]
            token, log_p_token = categorical(logits, u_token[block], top)
            kept.append(block)
            drawn.append(token)
            log_p.append(log_p_token)
        return torch.cat(kept), torch.cat(log_p), torch.cat(drawn)

    def _support_mean(
        self, logits: Tensor, rows: Tensor, mask_id: int | Tensor, seq_len: int
    ) -> tuple[Tensor, Tensor] | None:
        """Before ``sampling_logits``: (the mean of each row's logits over the classes it may draw,
        float64 (n,), after / T; the number of those classes (n,)), or None when top-k or top-p
        may leave out classes of its own choosing (the ceiling then does not hold)."""
        if self.top_k is not None or self.top_p is not None:
            return None
        n, v = logits.shape
        total = logits.sum(dim=-1, dtype=torch.float64)  # (n,)
        count = torch.full((n,), float(v), dtype=torch.float64, device=logits.device)
        if self.exclude_mask:
            ids = mask_id[rows % seq_len] if isinstance(mask_id, Tensor) and mask_id.dim() == 1 else mask_id
            ids = torch.as_tensor(ids, device=logits.device).expand(n)  # (n,)
            inside = ids < v  # an id outside V is no class
            excluded = logits.gather(1, ids.clamp_max(v - 1)[:, None]).squeeze(1).double()
            total = total - torch.where(inside, excluded, 0.0)
            count = count - inside.double()
        return total / count / self.temperature, count

    def _commit_most_confident(
        self,
        draw: Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor, Tensor]],
        x: Tensor,
        masked: Tensor,
        noise: Tensor,
        count: int,
        *,
        prune: bool,
    ) -> Tensor:
        """x (B, L) with each row's ``count`` most confident draws committed, where confidence =
        log p(drawn) + noise (B, L). ``draw(rows, need)``: (the rows drawn, their log p, their
        tokens), leaving out rows whose log p cannot reach ``need`` (``_draw``).

        log p <= 0, so a position's noise bounds its confidence. With ``prune``, only the
        ``count + 16`` highest bounds of a row are scored first, then the positions whose bound
        reaches the count-th confidence found, and of those only the ones whose logits allow a
        log p that reaches it (``_can_reach``: no other can enter the top ``count``), and all
        the rest only on a tie at rank ``count``. Without a tie the top ``count`` is unique: the
        very set scoring every masked position would commit.
        """
        bound = noise.masked_fill(~masked, -math.inf)  # (B, L)
        confidence = torch.full_like(noise, -math.inf)  # (B, L): -inf until scored
        scored = torch.zeros_like(masked)
        proposal = x.clone()

        def score(select: Tensor, kth: Tensor | None = None) -> None:
            rows = flat_positions(select)  # (N,)
            need = None if kth is None else (kth - noise).reshape(-1)[rows]  # log p that reaches kth
            rows, log_p, drawn = draw(rows, need)
            confidence.view(-1)[rows] = log_p + noise.view(-1)[rows]
            proposal.view(-1)[rows] = drawn
            scored.view(-1)[rows] = True

        rest = masked
        if prune and count + 16 < int(masked.sum(dim=1).min()):  # else the first scoring takes all
            first = bound.topk(count + 16, dim=1).indices  # (B, count + 16)
            first = torch.zeros_like(masked).scatter(1, first, True) & masked
            score(first)
            kth = confidence.topk(count, dim=1).values[:, -1:]  # (B, 1): only rises as more are scored
            score(masked & ~first & (bound >= kth), kth)  # drawn where log p can reach kth too
            top = confidence.topk(count + 1, dim=1).values  # (B, count + 1)
            tie = not bool((top[:, count] < top[:, count - 1]).all())  # NaN counts as a tie
            rest = masked & ~scored if tie else None
        if rest is not None:
            score(rest)
        return torch.where(self._commit(confidence, masked, count), proposal, x)

    @staticmethod
    def _commit(confidence: Tensor, masked: Tensor, count: int) -> Tensor:
        """(B, L) bool: the ``count`` most confident masked positions of each row."""
        chosen = torch.topk(confidence.masked_fill(~masked, -math.inf), count, dim=1).indices  # (B, count)
        return torch.zeros_like(masked).scatter(1, chosen, True) & masked


def _can_reach(top: Tensor, support: tuple[Tensor, Tensor], need: Tensor) -> Tensor:
    """(n,) bool: may a row whose logits have maximum ``top`` (n,) draw a class of log p >= need?
    log p = l - logsumexp(l) <= max - (mean + log K) by Jensen's inequality (logsumexp over the K
    classes a row may draw >= their mean + log K). The ceiling is loosened by a margin far above
    float rounding, so a row ruled out could never have entered the committed set, and a row with
    a non-finite ceiling is kept. A near-uniform row (a network early in training) gets a ceiling
    near log(1/K), not 0: most of its positions need no draw."""
    mean, count = support
    top, need = top.double(), need.double()
    ceiling = top - mean - count.log()
    margin = 1e-5 * (1.0 + top.abs() + mean.abs() + need.abs())
    return ~(ceiling + margin < need)  # NaN: kept
