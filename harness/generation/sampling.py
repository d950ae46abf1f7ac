"""Sampling from a checkpoint: balanced class labels, batches, NFE bookkeeping, image grids."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from models.backbone import DiscreteDiT
from models.samplers import SAMPLERS, Denoiser, Sampler
from models.schedulers import KappaScheduler


@dataclass(frozen=True)
class Generated:
    """Freshly generated tokens, before they are decoded and saved (what is read back from disk
    is ``harness.evaluation.SampleSet``): tokens (N, L), labels (N,) or None, and what producing
    them cost; captions: the text condition of each sample (a text model's samples), labels then
    their classes."""

    tokens: Tensor
    labels: Tensor | None
    nfe: int
    nfe_unbatched: int
    seconds: float
    captions: tuple[str, ...] | None = None
    cfg_mode: str | None = None  # how guided steps ran: "batched", "two-pass"; None: unguided

    @property
    def seconds_per_sample(self) -> float:
        return self.seconds / max(1, self.tokens.shape[0])


def build_sampler(name: str, scheduler: KappaScheduler, **options) -> Sampler:
    """A sampler from its registry name and options; the training kappa is passed to it."""
    cls = SAMPLERS[name]
    try:
        return cls(scheduler=scheduler, **options)
    except TypeError as err:
        fields = sorted(cls.__dataclass_fields__)
        raise ValueError(f"sampler {name!r}: {err}; its options are {fields}") from err


def balanced_labels(num_samples: int, num_classes: int) -> Tensor | None:
    """0, 1, ..., C-1, 0, 1, ...: every class equally often (None when unconditional)."""
    return torch.arange(num_samples) % num_classes if num_classes > 0 else None


@torch.no_grad()
def generate(
    net: DiscreteDiT,
    sampler: Sampler,
    *,
    num_samples: int,
    batch_size: int = 256,
    cfg_scale: float = 1.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    x_init: Tensor | None = None,
    conditions: Tensor | None = None,
) -> Generated:
    """Exactly ``num_samples`` samples, deterministic for ``seed``; NFE is per batch (the same for all).

    x_init (num_samples, L): given tokens to keep (not [MASK]), e.g. a joint model's given modality.
    conditions: the condition of every sample, (num_samples,) class ids or (num_samples, S)
    caption ids (returned as the labels); default: every class equally often.
    """
    cfg = net.config
    labels = balanced_labels(num_samples, cfg.num_classes) if conditions is None else conditions
    denoiser = Denoiser(net, cfg_scale=cfg_scale, null_class=cfg.null_class if cfg.conditional else None)
    generator = torch.Generator(device=device).manual_seed(seed)
    chunks, nfe, nfe_unbatched, modes = [], 0, 0, set()
    started = time.perf_counter()
    for start in range(0, num_samples, batch_size):
        stop = min(start + batch_size, num_samples)
        y = labels[start:stop].to(device) if labels is not None else None
        result = sampler.sample(
            denoiser,
            batch_size=stop - start,
            seq_len=cfg.seq_len,
            mask_id=cfg.mask_id,
            y=y,
            x_init=None if x_init is None else x_init[start:stop].to(device),
            generator=generator,
            device=device,
            grids=tuple(grid for grid, _ in cfg.segments),
        )
        chunks.append(result.tokens.cpu())
        nfe, nfe_unbatched = result.nfe, result.nfe_unbatched
        modes.add(result.cfg_mode)
    # The sampling's own seconds: not the one-off runs that chose how CFG runs on this CPU.
    seconds = time.perf_counter() - started - denoiser.choice_seconds
    # A last, smaller batch may be timed into the other mode: name both.
    cfg_mode = "+".join(sorted(m for m in modes if m)) or None
    return Generated(torch.cat(chunks), labels, nfe, nfe_unbatched, seconds, cfg_mode=cfg_mode)


def save_image_grid(images: Tensor, path: str | Path, *, nrow: int = 10, scale: int = 4) -> Path:
    """images (N, C, H, W) in [0, 1] -> a PNG grid, ``nrow`` images a row, each upscaled ``scale``
    times; clips (N, C, T, H, W) -> one clip a row, its T frames left to right."""
    if images.ndim == 5:
        N, C, T, H, W = images.shape
        images, nrow = images.transpose(1, 2).reshape(N * T, C, H, W), T  # (N * T, C, H, W)
    N, C, H, W = images.shape
    ncol = min(nrow, N)
    rows = -(-N // ncol)
    pad = 1
    canvas = torch.ones(C, rows * (H + pad) + pad, ncol * (W + pad) + pad)
    for i in range(N):
        r, c = divmod(i, ncol)
        top, left = pad + r * (H + pad), pad + c * (W + pad)
        canvas[:, top : top + H, left : left + W] = images[i]
    array = (canvas.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).squeeze(-1).numpy()
    image = Image.fromarray(array).resize((canvas.shape[2] * scale, canvas.shape[1] * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    image.save(tmp)
    tmp.replace(path)
    return path
