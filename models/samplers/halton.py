"""Halton-order decoding (Besnier et al., "Halton Scheduler for Masked Generative Image Transformer",
ICLR 2025).

The positions of the token grid are committed in a fixed, well spread order: the cells that the
2D Halton sequence (bases 2 and 3) visits first, each cell at its first visit. Step k of n commits
the next ``counts[k]`` still-masked positions of that order (``models.samplers.counts``), each
drawing its token from the model (temperature, top-k / top-p, CFG), and never revisits them.
Unlike MaskGIT no confidence is scored, so only the committed rows' logits are read.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from models.samplers.base import Denoiser, Sampler, SampleResult, flat_positions
from models.samplers.counts import COUNT_RULES, UNMASK_SCHEDULES, counts_for
from models.samplers.draw import categorical, uniforms
from models.samplers.maskgit import etm_time
from models.schedulers import KappaScheduler


def radical_inverse(index: Tensor, base: int, digits: int) -> Tensor:
    """index (N,) int64 in [0, base^digits) -> numerators (N,): phi_base(i) = numerator / base^digits
    exactly, phi_b(sum_j d_j b^j) = sum_j d_j b^-(j+1) (the digits mirrored about the point)."""
    numerator, rest = torch.zeros_like(index), index.clone()
    for _ in range(digits):
        numerator = numerator * base + rest % base
        rest = rest // base
    return numerator


def _cells(index: Tensor, base: int, size: int) -> Tensor:
    """floor(phi_base(i) * size), in integers: (N,) cells in [0, size)."""
    digits = 1
    while base**digits <= int(index.max()):
        digits += 1
    return radical_inverse(index, base, digits) * size // base**digits


def _first_visits(cells: Tensor, num_cells: int) -> Tensor:
    """cells (N,) visited in sequence order -> (num_cells,) every cell once, in order of first visit."""
    first = torch.full((num_cells,), cells.numel(), dtype=torch.long)
    first.scatter_reduce_(0, cells, torch.arange(cells.numel()), reduce="amin")  # (num_cells,)
    if int(first.max()) == cells.numel():
        raise RuntimeError("the Halton points missed a cell of the grid")  # not reached: see halton_order
    return first.argsort()


@functools.lru_cache(maxsize=32)
def halton_order(grid: tuple[int, ...]) -> Tensor:
    """The positions of a row-major grid (prod(grid),) in Halton order, a permutation.

    (H, W): the points (phi_2(i), phi_3(i)), i = 1, 2, ... (0 skipped, as in Besnier et al.'s
    code), fall in cells (floor(H phi_2(i)), floor(W phi_3(i))); each cell is taken at its first
    visit. Points 0 .. 2^p 3^q - 1 fill every box of side 2^-p x 3^-q once, and point 2^p 3^q shares
    point 0's box; with 2^p >= 2H and 3^q >= 2W every cell holds such a box, so i = 1 .. 2^p 3^q
    reaches every cell. (L,): base 2 alone (van der Corput). (T, ..., H, W): the (H, W) order in
    every frame, all frames at each rank before the next rank, so frames fill in step.
    """
    if len(grid) == 1:
        (size,) = grid
        stop = 2 ** max(1, math.ceil(math.log2(2 * size)))
        return _first_visits(_cells(torch.arange(1, stop + 1), 2, size), size)
    *frames, H, W = grid
    stop = 2 ** max(1, math.ceil(math.log2(2 * H))) * 3 ** max(1, math.ceil(math.log(2 * W, 3)))
    index = torch.arange(1, stop + 1)
    order = _first_visits(_cells(index, 2, H) * W + _cells(index, 3, W), H * W)  # (H * W,)
    num_frames = math.prod(frames)
    return (torch.arange(num_frames)[None, :] * (H * W) + order[:, None]).reshape(-1)  # rank-major


@functools.lru_cache(maxsize=32)
def halton_ranks(grids: tuple[tuple[int, ...], ...]) -> Tensor:
    """(L,): each position's rank in the commit order of a sequence made of ``grids``' segments.

    Each segment in its own Halton order; segments interleaved by the fraction of their own
    order reached (rank / segment length), the earlier segment first on a tie."""
    lengths = [math.prod(grid) for grid in grids]
    starts = [sum(lengths[:s]) for s in range(len(grids))]
    keys: list[tuple[int, int, int, int]] = []  # (rank * lcm / length, segment, position)
    scale = math.lcm(*lengths)
    for s, grid in enumerate(grids):
        order = halton_order(grid).tolist()
        keys += [(rank * (scale // lengths[s]), s, starts[s] + p) for rank, p in enumerate(order)]
    ranks = torch.empty(sum(lengths), dtype=torch.long)
    ranks[torch.tensor([p for *_, p in sorted(keys)])] = torch.arange(len(keys))
    return ranks


@dataclass(frozen=True)
class HaltonSampler(Sampler):
    """Options.

    num_steps: network calls n.
    schedule: the weights of the steps' counts (``UNMASK_SCHEDULES``; Besnier et al. use arccos).
    counts: the rule that turns them into counts (``COUNT_RULES``).
    scheduler: the training kappa; an ETM is called at t = kappa^-1(unmasked fraction).
    """

    num_steps: int = 16
    schedule: str = "arccos"
    counts: str = "maskgit"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    scheduler: KappaScheduler | None = None
    exclude_mask: bool = True

    def __post_init__(self) -> None:
        UNMASK_SCHEDULES[self.schedule]  # fail now on an unknown name
        COUNT_RULES[self.counts]
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")

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
        order = self.commit_order(generated, grids or ((seq_len,),))  # (B, M)
        start = (denoiser.count.evaluations, denoiser.count.unbatched)
        trajectory = [x.cpu()] if return_trajectory else None
        done = 0
        for count in counts:
            commit = torch.zeros_like(generated).scatter_(1, order[:, done : done + count], True)
            done += count
            rows = flat_positions(commit)  # (N,) = (B * count,)
            u_token = uniforms(rows.numel(), generator, device)  # (N,): drawn before the logits are read
            logits = denoiser(x, etm_time(x, mask_id, generated, self.scheduler), y, rows=rows)
            logits = self.sampling_logits(logits, rows, mask_id, seq_len)  # (N, V)
            x = x.reshape(-1).index_put((rows,), categorical(logits, u_token)[0]).view_as(x)
            if trajectory is not None:
                trajectory.append(x.cpu())
        return SampleResult(
            tokens=x,
            nfe=denoiser.count.evaluations - start[0],
            nfe_unbatched=denoiser.count.unbatched - start[1],
            trajectory=trajectory,
            cfg_mode=denoiser.cfg_mode,
        )

    @staticmethod
    def commit_order(generated: Tensor, grids: tuple[tuple[int, ...], ...]) -> Tensor:
        """generated (B, L) bool -> (B, M): each row's M positions to generate, in Halton order."""
        L = generated.shape[1]
        if sum(math.prod(grid) for grid in grids) != L:
            raise ValueError(f"grids {list(grids)} do not hold the {L} tokens of the sequence")
        ranks = halton_ranks(tuple(tuple(int(g) for g in grid) for grid in grids)).to(generated.device)
        keys = torch.where(generated, ranks, ranks + L)  # (B, L): the given positions last
        return keys.argsort(dim=1)[:, : int(generated[0].sum())]
