"""Moving digits as tokens: short clips of real digits moving on a canvas, grey levels as tokens.

The clips are those of ``harness.evaluation.video`` (the FVD extractor's own data geometry:
NUM_FRAMES x CANVAS x CANVAS, one 8 x 8 UCI digit per clip), quantised to ``levels`` grey
levels on the (T, H, W) token grid: level i <-> intensity i / (levels - 1). Options
(``data.options``):

- ``conditional`` (default true): labels are the digit classes 0..9; false: no labels.
- ``levels`` (2..17, default 5): grey levels per pixel, the vocabulary size. The digits have
  17 levels, so 17 is lossless; fewer levels make the task easier and put a quantisation floor
  under every FVD (the ``heldout_tokens`` baseline measures it).
- ``motion`` (default ``straight``): ``straight`` clips are the extractor's training clips
  (one pixel per frame in a fixed direction, always inside the canvas); ``bouncing`` clips move
  ``BOUNCE_SPEED`` (2) pixels per frame and reflect off the borders.

Scoring uses the real (unquantised) clips of the split as the reference, like the originals of a
learned tokenizer, so the quantisation error counts against every sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from harness.data.sources.digits import digits
from harness.data.sources.digits import split_sizes as digit_split_sizes
from harness.data.tokenizers.pixel import PixelTokenizer
from harness.data.types import SPLITS, Dataset, DatasetShape, TokenDataset

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
    data = digits(split)
    clips, classes = [], []
    for repeat in range(SPLIT_REPEATS[split]):
        seed = 100 * SPLIT_SEEDS[split] + repeat
        c, motions = moving_digit_clips(data.images(), seed=seed, motion=motion)
        clips.append(c)  # (N, 1, T, S, S)
        classes.append(data.labels * len(MOTIONS) + motions)  # (N,)
    return torch.cat(clips), torch.cat(classes)


NAME = "moving-digits"
GRID = (NUM_FRAMES, CANVAS, CANVAS)  # (T, H, W): the FVD extractor's input size
DIGIT_LEVELS = 17  # the UCI digits' grey levels 0..16


@dataclass(frozen=True)
class MovingDigitsOptions:
    """The validated ``data.options`` of the moving-digits dataset."""

    conditional: bool = True
    levels: int = 5
    motion: str = "straight"

    def __post_init__(self) -> None:
        if not isinstance(self.conditional, bool):
            raise ValueError(f"data.options.conditional: expected true or false; got {self.conditional!r}")
        if isinstance(self.levels, bool) or not isinstance(self.levels, int):
            raise ValueError(f"data.options.levels: expected an integer in [2, 17]; got {self.levels!r}")
        if not 2 <= self.levels <= DIGIT_LEVELS:
            raise ValueError(f"data.options.levels: expected an integer in [2, 17]; got {self.levels}")
        if self.motion not in MOTION_KINDS:
            raise ValueError(f"data.options.motion: unknown {self.motion!r}; expected one of {MOTION_KINDS}")

    @classmethod
    def parse(cls, options: dict[str, Any]) -> MovingDigitsOptions:
        """Options from ``data.options``; an unknown key is an error naming it and the known ones."""
        known = sorted(cls.__dataclass_fields__)
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"data.options for {NAME!r}: unknown {unknown}; expected some of {known}")
        return cls(**options)

    @property
    def num_classes(self) -> int:
        return 10 if self.conditional else 0


def moving_digits_shape(**options: Any) -> DatasetShape:
    """Grid (T, H, W), vocabulary (levels) and classes, without building a clip."""
    opts = MovingDigitsOptions.parse(options)
    sizes = tuple((split, size * SPLIT_REPEATS[split]) for split, size in digit_split_sizes())
    return DatasetShape(GRID, opts.levels, opts.num_classes, split_sizes=sizes)


def moving_digits_clips(split: str = "train", **options: Any) -> tuple[Tensor, Tensor | None]:
    """The real clips of ``split`` (N, 1, T, H, W) in [0, 1] and the digit labels (N,) (None
    when unconditional). ``straight`` clips are exactly the FVD extractor's own split."""
    if split not in SPLITS:
        raise ValueError(f"data.split: unknown {split!r}; expected one of {SPLITS}")
    opts = MovingDigitsOptions.parse(options)
    clips, classes = moving_digits_split(split, motion=opts.motion)  # (N, 1, T, H, W), (N,)
    labels = classes // len(MOTIONS) if opts.conditional else None  # class = digit * |MOTIONS| + motion
    return clips, labels


def moving_digits(split: str = "train", **options: Any) -> TokenDataset:
    """The clips of ``split`` as tokens (N, T * H * W) in [0, levels), decoded by a PixelTokenizer."""
    opts = MovingDigitsOptions.parse(options)
    clips, labels = moving_digits_clips(split, **options)
    tokenizer = PixelTokenizer(levels=opts.levels, grid=GRID)
    return TokenDataset(NAME, split, tokenizer.encode(clips), labels, opts.num_classes, tokenizer)


DATASET = Dataset(
    NAME,
    load=moving_digits,
    shape=moving_digits_shape,
    real_images=moving_digits_clips,
    default_extractor="moving-digits-cnn3d",
    options=MovingDigitsOptions,
    summary="clips (T, H, W) of real digits moving on a canvas, grey levels as tokens",
)
