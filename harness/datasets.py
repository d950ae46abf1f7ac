"""Token datasets and tokenizers behind one interface.

A dataset is a set of token grids (N, L) (the grid shape H x W, T x H x W, ... is metadata),
optional class labels, and a tokenizer that maps tokens back to images. Datasets that are
not already discrete plug in a learned tokenizer through the same ``Tokenizer`` protocol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from models.registry import Registry

DATASETS: Registry = Registry("dataset")
# name -> split -> (real images (N, C, H, W) in [0, 1], labels (N,) long or None): what samples
# are scored against. For pixel datasets these equal the decoded tokens; for learned tokenizers
# they are the originals, so the tokenizer's reconstruction error counts against every sample.
REAL_IMAGES: Registry = Registry("dataset")
# name -> (**options) -> DatasetShape, without loading or tokenizing anything (for plans and
# validation: a learned tokenizer is not trained just to learn its vocabulary size).
SHAPES: Registry = Registry("dataset")
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class DatasetShape:
    grid: tuple[int, ...]
    vocab_size: int
    num_classes: int
    modalities: tuple | None = None  # a joint dataset's models.modalities.Modality entries
    caption_vocabulary: tuple[str, ...] = ()  # the words of its captions; empty: no captions


class Tokenizer(Protocol):
    """encode: images (N, C, H, W) float in [0, 1] -> tokens (N, L); decode: the inverse."""

    vocab_size: int
    grid: tuple[int, ...]

    def encode(self, images: Tensor) -> Tensor: ...

    def decode(self, tokens: Tensor) -> Tensor: ...


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
class TokenDataset:
    """tokens (N, L) long, labels (N,) long or None."""

    name: str
    split: str
    tokens: Tensor
    labels: Tensor | None
    num_classes: int
    tokenizer: Tokenizer
    captions: tuple[str, ...] | None = None  # one per example: the text condition (harness.text_data)

    @property
    def grid(self) -> tuple[int, ...]:
        return self.tokenizer.grid

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def seq_len(self) -> int:
        return math.prod(self.grid)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def images(self) -> Tensor:
        """The dataset decoded to images (N, C, H, W) in [0, 1]."""
        return self.tokenizer.decode(self.tokens)


def split_indices(n: int, num_heldout: int, seed: int) -> dict[str, np.ndarray]:
    """A fixed, seeded permutation cut into train and held-out parts."""
    order = np.random.default_rng(seed).permutation(n)
    return {"heldout": np.sort(order[:num_heldout]), "train": np.sort(order[num_heldout:])}


@DATASETS.register("digits")
def digits(split: str = "train", *, seed: int = 0, num_heldout: int = 297) -> TokenDataset:
    """UCI handwritten digits shipped by scikit-learn: 8 x 8 pixels, grey levels 0..16 as tokens.

    1,797 images, 10 classes; a fixed split (seed 0) keeps 297 held out, 1,500 for training.
    """
    from sklearn.datasets import load_digits

    if split not in SPLITS:
        raise ValueError(f"data.split: unknown {split!r}; expected one of {SPLITS}")
    bunch = load_digits()
    idx = split_indices(len(bunch.target), num_heldout, seed)[split]
    tokens = torch.as_tensor(bunch.data[idx], dtype=torch.long)  # (N, 64), values 0..16
    labels = torch.as_tensor(bunch.target[idx], dtype=torch.long)
    return TokenDataset("digits", split, tokens, labels, 10, PixelTokenizer(levels=17, grid=(8, 8)))


@SHAPES.register("digits")
def digits_shape(*, seed: int = 0, num_heldout: int = 297) -> DatasetShape:
    return DatasetShape((8, 8), 17, 10)


@REAL_IMAGES.register("digits")
def digits_images(split: str = "train", *, seed: int = 0, num_heldout: int = 297) -> tuple[Tensor, Tensor]:
    data = digits(split, seed=seed, num_heldout=num_heldout)
    return data.images(), data.labels


@DATASETS.register("animals")
def animals(split: str = "train", **options) -> TokenDataset:
    """Real animal silhouettes (animal-mnist) as learned VQ tokens; see ``harness.animals``."""
    from harness.animals import animals as load

    return load(split, **options)


@SHAPES.register("animals")
def animals_shape(*, seed: int = 0, num_heldout: int = 1000, tokenizer: dict | None = None) -> DatasetShape:
    from harness.vq import VQConfig

    config = VQConfig.from_dict(tokenizer or {})
    return DatasetShape((config.grid, config.grid), config.codebook_size, 10)


@REAL_IMAGES.register("animals")
def animals_images(
    split: str = "train", *, seed: int = 0, num_heldout: int = 1000, tokenizer: dict | None = None
) -> tuple[Tensor, Tensor]:
    """The real silhouettes of the split (the tokenizer does not change them)."""
    from harness.animals import animal_split

    return animal_split(split, seed=seed, num_heldout=num_heldout)


@DATASETS.register("moving-digits")
def moving_digits(split: str = "train", **options) -> TokenDataset:
    """Clips (T, H, W) of real digits moving on a canvas, grey levels as tokens (``data.options:
    {conditional, levels, motion}``); see ``harness.video_data``."""
    from harness.video_data import moving_digits as load

    return load(split, **options)


@SHAPES.register("moving-digits")
def moving_digits_shape(**options) -> DatasetShape:
    from harness.video_data import moving_digits_shape as shape

    return shape(**options)


@REAL_IMAGES.register("moving-digits")
def moving_digits_clips(split: str = "train", **options) -> tuple[Tensor, Tensor | None]:
    """The real clips (N, 1, T, H, W) of the split, before quantisation."""
    from harness.video_data import moving_digits_clips as clips

    return clips(split, **options)


@DATASETS.register("digit-canvases")
def digit_canvases(split: str = "train", **options) -> TokenDataset:
    """Two real digits on a canvas, image and label map as two modalities (``data.options:
    {canvas, num_train, num_heldout}``); see ``harness.canvas_data``."""
    from harness.canvas_data import digit_canvases as load

    return load(split, **options)


@SHAPES.register("digit-canvases")
def digit_canvases_shape(**options) -> DatasetShape:
    from harness.canvas_data import digit_canvases_shape as shape

    return shape(**options)


@REAL_IMAGES.register("digit-canvases")
def digit_canvas_images(split: str = "train", **options) -> tuple[Tensor, Tensor | None]:
    from harness.canvas_data import digit_canvas_images as images

    return images(split, **options)


@DATASETS.register("captioned-canvases")
def captioned_canvases(split: str = "train", **options) -> TokenDataset:
    """Two real digits on a canvas as pixel tokens, the scene class as label and a caption
    ("a 3 to the left of a 7") as the text condition; see ``harness.text_data``."""
    from harness.text_data import captioned_canvases as load

    return load(split, **options)


@SHAPES.register("captioned-canvases")
def captioned_canvases_shape(**options) -> DatasetShape:
    from harness.text_data import captioned_canvases_shape as shape

    return shape(**options)


@REAL_IMAGES.register("captioned-canvases")
def captioned_canvas_images(split: str = "train", **options) -> tuple[Tensor, Tensor | None]:
    from harness.text_data import captioned_canvas_images as images

    return images(split, **options)


@DATASETS.register("shards")
def shards(split: str = "train", **options) -> TokenDataset:
    """Pre-tokenized data in a shard folder (``data.options: {path, grid, vocab_size,
    num_classes}``); see ``harness.shards``."""
    from harness.shards import shards as load

    return load(split, **options)


@SHAPES.register("shards")
def shards_shape(**options) -> DatasetShape:
    from harness.shards import ShardOptions

    return ShardOptions.parse(options).shape


@REAL_IMAGES.register("shards")
def shards_images(split: str = "train", **options) -> tuple[Tensor, Tensor | None]:
    from harness.shards import shard_images

    return shard_images(split, **options)


def load_dataset(name: str, split: str = "train", **options) -> TokenDataset:
    return DATASETS[name](split, **options)


def dataset_shape(name: str, **options) -> DatasetShape:
    """Grid, vocabulary and classes of ``name`` under ``options``; bad options raise ValueError
    naming ``data.options``."""
    try:
        return SHAPES[name](**options)
    except TypeError as err:  # an option the dataset does not take
        raise ValueError(f"data.options for {name!r}: {err}") from None


def real_images(name: str, split: str = "train", **options) -> tuple[Tensor, Tensor | None]:
    """The real images of a dataset split (not tokenized) under its data options, with labels."""
    return REAL_IMAGES[name](split, **options)
