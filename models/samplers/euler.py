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

from models.guidance import process_logits
from models.samplers.base import Denoiser, Sampler, SampleResult, categorical
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
    ) -> SampleResult:
        if isinstance(mask_id, Tensor):
            mask_id = mask_id.to(device)  # (L,): one [MASK] per modality
        x = self.initial_tokens(batch_size, seq_len, mask_id, x_init, device)  # (B, L)
        generated = x == mask_id  # positions this sampler may write
        start = (denoiser.count.calls, denoiser.count.unbatched)
        grid = self.grid(device)
        kappa = self.scheduler.kappa(grid)
        trajectory = [x.cpu()] if return_trajectory else None
        num_calls = len(grid) - 1
        logits = None
        for k in range(num_calls):
            t = grid[k].expand(batch_size)  # (B,)
            logits = process_logits(
                denoiser(x, t, y),
                temperature=self.temperature,
                top_k=self.top_k,
                top_p=self.top_p,
                mask_id=mask_id if self.exclude_mask else None,
            )
            last = k == num_calls - 1 and not self.reference_grid
            masked = x == mask_id  # (B, L)
            if last:
                p_unmask = torch.ones((), device=device)
            else:
                p_unmask = ((kappa[k + 1] - kappa[k]) / (1 - kappa[k]).clamp_min(1e-12)).clamp(0, 1)
            if last and self.argmax_fill:
                proposal = logits.argmax(dim=-1)
            else:
                proposal = categorical(logits.softmax(dim=-1), generator)  # (B, L)
            unmask = masked & (torch.rand(x.shape, generator=generator, device=device) < p_unmask)
            x = torch.where(unmask, proposal, x)
            if self.remask_scale > 0 and not last:
                h = grid[k + 1] - grid[k]
                p_remask = (self.remask_scale * h).clamp(max=1.0)
                remask = (
                    generated & ~masked & (torch.rand(x.shape, generator=generator, device=device) < p_remask)
                )
                x = torch.where(remask, mask_id, x)
            if trajectory is not None:
                trajectory.append(x.cpu())
        if self.reference_grid:
            left = x == mask_id
            fill = logits.argmax(dim=-1) if self.argmax_fill else torch.zeros_like(x)
            x = torch.where(left, fill, x)
        return SampleResult(
            tokens=x,
            nfe=denoiser.count.calls - start[0],
            nfe_unbatched=denoiser.count.unbatched - start[1],
            trajectory=trajectory,
        )
