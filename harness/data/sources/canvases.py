"""Digit canvases: two real digits composed on a canvas, with a label map and a caption.

Each canvas holds two 8 x 8 digits from one digits split, placed in the two halves of the
canvas along a relation's axis ("left of": side by side, "above": stacked), each at a seeded
random offset inside its half. The label map gives every pixel its class: 0 background,
1 + d for the pixels of digit d (intensity above ``INK``). The caption says what is where:
"a 3 to the left of a 7", "a 3 above a 7". Everything is a function of (split, seed, count).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from harness.data.sources.digits import digits
from harness.data.types import SPLITS

DIGIT = 8
RELATIONS = ("left of", "above")
INK = 0.25  # a pixel belongs to its digit above this intensity (digits are 0..16, i.e. > 4/16)
NUM_LABELS = 11  # background + 10 digits
SPLIT_SEEDS = {"train": 0, "heldout": 1}


@dataclass(frozen=True)
class Canvases:
    """images (N, 1, C, C) in [0, 1]; label_maps (N, C, C) long in [0, 11); layout (N, 3) long:
    (first digit, relation index, second digit); captions: N strings."""

    images: Tensor
    label_maps: Tensor
    layout: Tensor
    captions: list[str]

    @property
    def scene_class(self) -> Tensor:
        """(N,) long in [0, 200): first * 20 + relation * 10 + second."""
        return self.layout[:, 0] * 20 + self.layout[:, 1] * 10 + self.layout[:, 2]


def caption(first: int, relation: int, second: int) -> str:
    where = "to the left of" if RELATIONS[relation] == "left of" else "above"
    return f"a {first} {where} a {second}"


def _offsets(count: int, half: int, canvas: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random offsets: along the relation axis inside a half, across it anywhere on the canvas."""
    along = torch.randint(0, half - DIGIT + 1, (count, 2), generator=generator)  # (N, 2)
    across = torch.randint(0, canvas - DIGIT + 1, (count, 2), generator=generator)  # (N, 2)
    return along, across


def compose(images: Tensor, labels: Tensor, count: int, *, canvas: int = 16, seed: int = 0) -> Canvases:
    """``count`` canvases from digit images (n, 1, 8, 8) in [0, 1] with classes (n,)."""
    if canvas < 2 * DIGIT:
        raise ValueError(f"data.options.canvas: {canvas} is too small; need at least {2 * DIGIT}")
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, images.shape[0], (count, 2), generator=g)  # (N, 2) digit indices
    relation = torch.randint(0, len(RELATIONS), (count,), generator=g)  # (N,)
    along, across = _offsets(count, canvas // 2, canvas, g)
    out = torch.zeros(count, 1, canvas, canvas)
    label_maps = torch.zeros(count, canvas, canvas, dtype=torch.long)
    for n in range(count):
        for slot in range(2):
            digit = images[pick[n, slot], 0]  # (8, 8)
            a = int(along[n, slot]) + slot * (canvas // 2)
            b = int(across[n, slot])
            row, col = (b, a) if relation[n] == 0 else (a, b)
            out[n, 0, row : row + DIGIT, col : col + DIGIT] = digit
            ink = (digit > INK).long() * (1 + labels[pick[n, slot]])
            label_maps[n, row : row + DIGIT, col : col + DIGIT] = ink
    layout = torch.stack([labels[pick[:, 0]], relation, labels[pick[:, 1]]], dim=1)  # (N, 3)
    captions = [caption(*map(int, row)) for row in layout]
    return Canvases(out, label_maps, layout, captions)


@lru_cache(maxsize=8)
def canvases_split(split: str, count: int, canvas: int = 16) -> Canvases:
    """The canvases of a digits split (train digits only in train canvases), seeded per split."""
    if split not in SPLITS:
        raise ValueError(f"data.split: unknown {split!r}; expected one of {SPLITS}")
    data = digits(split)
    return compose(data.images(), data.labels, count, canvas=canvas, seed=SPLIT_SEEDS[split])


__all__ = ["NUM_LABELS", "RELATIONS", "Canvases", "canvases_split", "caption", "compose"]
