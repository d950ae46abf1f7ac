"""Euler sampler of the discrete flow (masked) chain.

On a grid 0 = t_0 < ... < t_n = 1, step k unmasks each still-masked token with probability
(kappa(t_{k+1}) - kappa(t_k)) / (1 - kappa(t_k)), taking a value drawn from the model's
distribution with [MASK] excluded. Then P(masked after step k) = 1 - kappa(t_{k+1}) exactly,
and the last step (kappa = 1) unmasks everything: n steps, n network calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from models.samplers.base import Denoiser, Sampler, SampleResult, flat_positions
from models.samplers.draw import categorical, uniforms
from models.schedulers import KappaScheduler, Linear


@dataclass(frozen=True)
class EulerSampler(Sampler):
    """Options.

    num_steps: grid intervals n (= NFE without CFG).
    argmax_fill: tokens still masked at the last step take the argmax, not a sample
        ("churning by argmax"; helps at low NFE).
    remask_scale: corrector: after each step but the last, every generated token is
        re-masked with probability min(1, remask_scale * h) (the reference's "campbell"
        corrector is 4.0). 0 disables it.
    reference_grid: the reference code's grid for faithful figures: n points from
        t_min = 1e-4 that stop short of t = 1, n - 1 calls; tokens still masked at the end
        take the argmax if argmax_fill, else code 0 (what the reference decodes them as).
    exclude_mask: never sample the [MASK] class (the reference does not exclude it).
    """

    num_steps: int = 16
    scheduler: KappaScheduler = field(default_factory=Linear)
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    argmax_fill: bool = False
    remask_scale: float = 0.0
    reference_grid: bool = False
    exclude_mask: bool = True
    t_min: float = 1e-4

    def __post_init__(self) -> None:
        if self.num_steps < 1 or (self.reference_grid and self.num_steps < 2):
            raise ValueError(f"num_steps must be >= 1 (>= 2 with reference_grid), got {self.num_steps}")

    def grid(self, device: torch.device | str = "cpu") -> Tensor:
        """Times at which the network is called, followed by the final time: (calls + 1,)."""
        n = self.num_steps
        if self.reference_grid:
            return torch.linspace(self.t_min, 1.0, n + 1, device=device)[:n]
        return torch.linspace(0.0, 1.0, n + 1, device=device)

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
        generated = x == mask_id  # positions this sampler may write
        start = (denoiser.count.evaluations, denoiser.count.unbatched)
        grid = self.grid(device)
        kappa = self.scheduler.kappa(grid)
        trajectory = [x.cpu()] if return_trajectory else None
        num_calls = len(grid) - 1
        for k in range(num_calls):
            last = k == num_calls - 1 and not self.reference_grid
            masked = x == mask_id  # (B, L)
            u_token, unmask, remask = self._draws(x, masked, generated, grid, kappa, k, last, generator)
            # Only the rows that take a token now are read; the reference grid's last call also
            # fills by argmax what stays [MASK] after it, which lies among the masked and re-masked.
            fill = self.reference_grid and self.argmax_fill and k == num_calls - 1
            rows = flat_positions((masked if remask is None else masked | remask) if fill else unmask)  # (N,)
            logits = denoiser(x, grid[k].expand(batch_size), y, rows=rows)
            logits = self.sampling_logits(logits, rows, mask_id, seq_len)  # (N, V)
            take = unmask.reshape(-1)[rows] if fill else slice(None)  # the rows that take a token now
            if last and self.argmax_fill:
                proposal = logits.argmax(dim=-1)  # (N,)
            else:
                proposal = categorical(logits[take], u_token[rows[take]])[0]
            x = x.reshape(-1).index_put((rows[take],), proposal).view_as(x)
            if remask is not None:
                x = torch.where(remask, mask_id, x)
            if trajectory is not None:
                trajectory.append(x.cpu())
        if self.reference_grid:
            left = x == mask_id
            fill_tokens = torch.zeros_like(x)
            if self.argmax_fill:  # rows: the last call's, a superset of ``left``
                fill_tokens = fill_tokens.reshape(-1).index_put((rows,), logits.argmax(dim=-1)).view_as(x)
            x = torch.where(left, fill_tokens, x)
        return SampleResult(
            tokens=x,
            nfe=denoiser.count.evaluations - start[0],
            nfe_unbatched=denoiser.count.unbatched - start[1],
            trajectory=trajectory,
            cfg_mode=denoiser.cfg_mode,
        )

    def _draws(
        self,
        x: Tensor,
        masked: Tensor,
        generated: Tensor,
        grid: Tensor,
        kappa: Tensor,
        k: int,
        last: bool,
        generator: torch.Generator | None,
    ) -> tuple[Tensor | None, Tensor, Tensor | None]:
        """Step k's randomness, drawn in the order it always was, before anything reads the logits: a
        uniform per position for its token, (B * L,) float64 (none when the argmax fills); the unmask
        coins -> unmask (B, L); the corrector's coins -> remask (B, L), or None without one."""
        u_token = None
        if not (last and self.argmax_fill):
            u_token = uniforms(x.numel(), generator, x.device)
        coins = torch.rand(x.shape, generator=generator, device=x.device)
        unmask = masked & (coins < self._p_unmask(kappa, k, last))
        if self.remask_scale <= 0 or last:
            return u_token, unmask, None
        p_remask = (self.remask_scale * (grid[k + 1] - grid[k])).clamp(max=1.0)
        coins = torch.rand(x.shape, generator=generator, device=x.device)
        return u_token, unmask, generated & ~masked & (coins < p_remask)

    def _p_unmask(self, kappa: Tensor, k: int, last: bool) -> Tensor:
        """P(a masked token is unmasked at step k): (kappa_{k+1} - kappa_k) / (1 - kappa_k); 1 at the last."""
        if last:
            return torch.ones((), device=kappa.device)
        return ((kappa[k + 1] - kappa[k]) / (1 - kappa[k]).clamp_min(1e-12)).clamp(0, 1)
