"""Synthetic moving-digit clips and the project-trained 3D-CNN video feature extractor.

Until real video data arrives, FVD's domain network is a DomainCNN (spatial_dims=3) trained to
name both the digit and its motion in clips built from the digits splits. A clip moves one
8 x 8 digit across a canvas x canvas frame at one pixel per frame in one of ``MOTIONS``;
its class is digit * len(MOTIONS) + motion, so the features must encode appearance and motion.
"""

from __future__ import annotations

import torch
from torch import Tensor

from harness.evaluation.domain import DomainSpec, register_domain_extractor
from harness.evaluation.domain_cnn import DomainCNNConfig, TrainConfig
from harness.evaluation.reference import ReferenceSet

# (dy, dx) per frame: still, up, down, left, right.
MOTIONS: tuple[tuple[int, int], ...] = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))
NUM_FRAMES, CANVAS = 5, 12
SPLIT_SEEDS = {"train": 0, "heldout": 1}
# Each training digit appears in this many clips (different motions), each held-out digit once.
SPLIT_REPEATS = {"train": 2, "heldout": 1}


def _start(room: int, velocity: Tensor, steps: int, generator: torch.Generator) -> Tensor:
    """Random start offsets (N,) that keep a path of ``steps`` moves of ``velocity`` inside [0, room]."""
    low = torch.where(velocity < 0, steps, 0)
    high = torch.where(velocity > 0, room - steps, room)
    return low + (torch.rand(velocity.shape, generator=generator) * (high - low + 1)).long().clamp(
        max=high - low
    )


def moving_digit_clips(
    images: Tensor, *, num_frames: int = NUM_FRAMES, canvas: int = CANVAS, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """images (N, C, h, w) in [0, 1] -> (clips (N, C, T, canvas, canvas), motions (N,) long).

    Each image gets a seeded random motion from MOTIONS and a random start that keeps it fully
    inside the canvas for all T frames; the background is 0.
    """
    N, C, h, w = images.shape
    steps = num_frames - 1
    if canvas - max(h, w) < steps:
        raise ValueError(f"canvas {canvas} leaves no room for {steps} one-pixel moves of a {h}x{w} image")
    generator = torch.Generator().manual_seed(seed)
    motions = torch.randint(0, len(MOTIONS), (N,), generator=generator)
    velocity = torch.tensor(MOTIONS)[motions]  # (N, 2)
    y0 = _start(canvas - h, velocity[:, 0], steps, generator)
    x0 = _start(canvas - w, velocity[:, 1], steps, generator)
    clips = torch.zeros(N, C, num_frames, canvas, canvas)
    n = torch.arange(N)[:, None, None]  # (N, 1, 1)
    pixels = images.permute(0, 2, 3, 1)  # (N, h, w, C)
    for t in range(num_frames):
        rows = (y0 + t * velocity[:, 0])[:, None] + torch.arange(h)  # (N, h)
        cols = (x0 + t * velocity[:, 1])[:, None] + torch.arange(w)  # (N, w)
        clips[:, :, t][n, :, rows[:, :, None], cols[:, None, :]] = pixels  # indexed view is (N, h, w, C)
    return clips, motions


def moving_digits_split(split: str) -> tuple[Tensor, Tensor]:
    """Clips from the digits ``split`` and their classes digit * len(MOTIONS) + motion."""
    from harness.datasets import load_dataset

    data = load_dataset("digits", split)
    clips, classes = [], []
    for repeat in range(SPLIT_REPEATS[split]):
        c, motions = moving_digit_clips(data.images(), seed=100 * SPLIT_SEEDS[split] + repeat)
        clips.append(c)  # (N, 1, T, S, S)
        classes.append(data.labels * len(MOTIONS) + motions)  # (N,)
    return torch.cat(clips), torch.cat(classes)


def moving_digits_reference(split: str = "train") -> ReferenceSet:
    """The moving-digit clips of a split as an FVD reference set (N, 1, T, S, S)."""
    return ReferenceSet(f"moving-digits/{split}", "moving-digits", moving_digits_split(split)[0])


MOVING_DIGITS_CNN3D = register_domain_extractor(
    DomainSpec(
        extractor="moving-digits-cnn3d",
        dataset="moving-digits",
        load_split=moving_digits_split,
        model=DomainCNNConfig(
            in_channels=1,
            num_classes=10 * len(MOTIONS),
            input_size=(NUM_FRAMES, CANVAS, CANVAS),
            width=8,
            pooled_size=3,
        ),
        train=TrainConfig(epochs=10, batch_size=32, lr=3e-3),
    )
)
