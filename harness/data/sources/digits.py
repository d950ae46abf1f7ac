"""UCI handwritten digits (scikit-learn): 8 x 8 pixels, grey levels as tokens."""

from __future__ import annotations

import torch
from torch import Tensor

from harness.data.tokenizers.pixel import PixelTokenizer
from harness.data.types import SPLITS, Dataset, DatasetShape, TokenDataset, split_indices


def digits(split: str = "train", *, seed: int = 0, num_heldout: int = 297) -> TokenDataset:
    """UCI handwritten digits shipped by scikit-learn: 8 x 8 pixels, grey levels 0..16 as tokens.

    1,797 images, 10 classes; a fixed split (seed 0) keeps 297 held out, 1,500 for training.
    """
    from sklearn.datasets import load_digits

    if split not in SPLITS:
        raise ValueError(f"data.split: unknown {split!r}; expected one of {SPLITS}")
    digits_shape(seed=seed, num_heldout=num_heldout)  # the options' ranges
    bunch = load_digits()
    idx = split_indices(len(bunch.target), num_heldout, seed)[split]
    tokens = torch.as_tensor(bunch.data[idx], dtype=torch.long)  # (N, 64), values 0..16
    labels = torch.as_tensor(bunch.target[idx], dtype=torch.long)
    return TokenDataset("digits", split, tokens, labels, 10, PixelTokenizer(levels=17, grid=(8, 8)))


NUM_IMAGES = 1797


def digits_shape(*, seed: int = 0, num_heldout: int = 297) -> DatasetShape:
    if not 1 <= num_heldout < NUM_IMAGES:
        raise ValueError(
            f"data.options.num_heldout: {num_heldout}; expected 1..{NUM_IMAGES - 1} (of {NUM_IMAGES} images)"
        )
    return DatasetShape((8, 8), 17, 10)


def digits_images(split: str = "train", *, seed: int = 0, num_heldout: int = 297) -> tuple[Tensor, Tensor]:
    data = digits(split, seed=seed, num_heldout=num_heldout)
    return data.images(), data.labels


DATASET = Dataset(
    "digits",
    load=digits,
    shape=digits_shape,
    real_images=digits_images,
    default_extractor="digits-cnn",
    summary="UCI handwritten digits (scikit-learn), 8 x 8, 17 grey levels as tokens",
)
