"""Synthetic moving-digit clips and the project-trained 3D-CNN video feature extractor.

Until real video data arrives, FVD's domain network is a DomainCNN (spatial_dims=3) trained to
name both the digit and its motion in clips built from the digits splits. A clip moves one
8 x 8 digit across a canvas x canvas frame at one pixel per frame in one of ``MOTIONS``;
its class is digit * len(MOTIONS) + motion, so the features must encode appearance and motion.
``bouncing`` clips (the moving-digits dataset's option, not the extractor's training data) move
BOUNCE_SPEED pixels per frame in the same directions and reflect off the canvas borders.
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
MOTION_KINDS = ("straight", "bouncing")
BOUNCE_SPEED = 2


def _start(room: int, velocity: Tensor, steps: int, generator: torch.Generator) -> Tensor:
    """Random start offsets (N,) that keep a path of ``steps`` moves of ``velocity`` inside [0, room]."""
    low = torch.where(velocity < 0, steps, 0)
    high = torch.where(velocity > 0, room - steps, room)
    return low + (torch.rand(velocity.shape, generator=generator) * (high - low + 1)).long().clamp(
        max=high - low
    )


def reflect(x: Tensor, room: int) -> Tensor:
    """x folded into [0, room] by mirrors at 0 and room: room - |(x mod 2 room) - room| (room >= 1)."""
    return room - (x.remainder(2 * room) - room).abs()


def moving_digit_clips(
    images: Tensor,
    *,
    num_frames: int = NUM_FRAMES,
    canvas: int = CANVAS,
    seed: int = 0,
    motion: str = "straight",
) -> tuple[Tensor, Tensor]:
    """images (N, C, h, w) in [0, 1] -> (clips (N, C, T, canvas, canvas), motions (N,) long).

    Each image gets a seeded random motion from MOTIONS. ``straight``: one pixel per frame from a
    random start that keeps it inside the canvas for all T frames. ``bouncing``: position
    reflect(p_0 + t * BOUNCE_SPEED * v) from a uniform start p_0, so it bounces off the borders.
    The background is 0.
    """
    N, C, h, w = images.shape
    steps = num_frames - 1
    if motion not in MOTION_KINDS:
        raise ValueError(f"motion: unknown {motion!r}; expected one of {MOTION_KINDS}")
    room = (canvas - h, canvas - w)
    if min(room) < (steps if motion == "straight" else 1):
        raise ValueError(f"canvas {canvas} leaves no room for {motion} motion of a {h}x{w} image")
    generator = torch.Generator().manual_seed(seed)
    motions = torch.randint(0, len(MOTIONS), (N,), generator=generator)
    velocity = torch.tensor(MOTIONS)[motions]  # (N, 2)
    if motion == "straight":
        y0 = _start(room[0], velocity[:, 0], steps, generator)
        x0 = _start(room[1], velocity[:, 1], steps, generator)
    else:
        y0 = torch.randint(0, room[0] + 1, (N,), generator=generator)
        x0 = torch.randint(0, room[1] + 1, (N,), generator=generator)
        velocity = velocity * BOUNCE_SPEED
    clips = torch.zeros(N, C, num_frames, canvas, canvas)
    n = torch.arange(N)[:, None, None]  # (N, 1, 1)
    pixels = images.permute(0, 2, 3, 1)  # (N, h, w, C)
    for t in range(num_frames):
        top, left = y0 + t * velocity[:, 0], x0 + t * velocity[:, 1]  # (N,), (N,)
        if motion == "bouncing":  # straight paths stay inside by their start
            top, left = reflect(top, room[0]), reflect(left, room[1])
        rows = top[:, None] + torch.arange(h)  # (N, h)
        cols = left[:, None] + torch.arange(w)  # (N, w)
        clips[:, :, t][n, :, rows[:, :, None], cols[:, None, :]] = pixels  # indexed view is (N, h, w, C)
    return clips, motions


def moving_digits_split(split: str, *, motion: str = "straight") -> tuple[Tensor, Tensor]:
    """Clips from the digits ``split`` and their classes digit * len(MOTIONS) + motion.

    The straight clips are the extractor's training and held-out data."""
    from harness.datasets import load_dataset

    data = load_dataset("digits", split)
    clips, classes = [], []
    for repeat in range(SPLIT_REPEATS[split]):
        seed = 100 * SPLIT_SEEDS[split] + repeat
        c, motions = moving_digit_clips(data.images(), seed=seed, motion=motion)
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
