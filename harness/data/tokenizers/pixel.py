"""Grey levels as tokens, and a joint dataset's tokens (image + label map)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from harness.data.types import Tokenizer


@dataclass(frozen=True)
class PixelTokenizer:
    """Grey levels as tokens: level i of ``levels`` <-> intensity i / (levels - 1); grid (H, W)
    for images, (T, H, W) for clips (decoded to (N, 1, T, H, W))."""

    levels: int
    grid: tuple[int, ...]

    @property
    def vocab_size(self) -> int:
        return self.levels

    def encode(self, images: Tensor) -> Tensor:
        q = torch.round(images.clamp(0, 1) * (self.levels - 1)).long()  # (N, 1, *grid)
        return q.reshape(q.shape[0], -1)

    def decode(self, tokens: Tensor) -> Tensor:
        tokens = tokens.clamp(0, self.levels - 1)  # a stray [MASK] decodes as white, visibly
        return (tokens.float() / (self.levels - 1)).reshape(tokens.shape[0], 1, *self.grid)


@dataclass(frozen=True)
class JointTokenizer:
    """A joint dataset's tokens (``models.modalities.Layout``: an ``image`` and a ``labels``
    modality on the same grid) <-> the image (through ``image``, the image modality's own
    tokenizer: what image metrics score) and the label maps (what mIoU scores)."""

    layout: Any  # models.modalities.Layout
    image: Tokenizer

    @property
    def vocab_size(self) -> int:
        return self.layout.vocab_size

    @property
    def grid(self) -> tuple[int, ...]:
        return (self.layout.seq_len,)

    def encode(self, images: Tensor, label_maps: Tensor | None = None) -> Tensor:
        """images (N, C, H, W) in [0, 1], label maps (N, *grid) or None (all [MASK]) -> (N, L)."""
        parts = {"image": self.image.encode(images)}
        if label_maps is not None:
            parts["labels"] = label_maps.reshape(label_maps.shape[0], -1)
        return self.layout.join(parts)

    def decode(self, tokens: Tensor) -> Tensor:
        """(N, L) -> the image modality (N, C, H, W) in [0, 1]."""
        return self.image.decode(self.layout.split(tokens)["image"])

    def decode_labels(self, tokens: Tensor) -> Tensor:
        """(N, L) -> label maps (N, *grid) on the label grid; a position left [MASK] decodes as 0."""
        labels = self.layout.modalities[self.layout.index("labels")]
        local = self.layout.split(tokens)["labels"]
        local = torch.where(local >= labels.vocab_size, 0, local)
        return local.reshape(local.shape[0], *labels.grid)
