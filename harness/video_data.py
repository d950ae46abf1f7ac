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

from torch import Tensor

from harness.datasets import SPLITS, DatasetShape, PixelTokenizer, TokenDataset
from harness.evaluation.video import CANVAS, MOTION_KINDS, MOTIONS, NUM_FRAMES, moving_digits_split

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
    return DatasetShape(GRID, opts.levels, opts.num_classes)


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
