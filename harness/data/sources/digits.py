"""UCI handwritten digits (scikit-learn): 8 x 8 pixels, grey levels as tokens."""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from harness.data.tokenizers.pixel import PixelTokenizer
from harness.data.types import SPLITS, Dataset, DatasetShape, TokenDataset, split_indices


def digits(split: str = "train", *, seed: int = 0, num_heldout: int = 297) -> TokenDataset:
    """UCI handwritten digits shipped by scikit-learn: 8 x 8 pixels, grey levels 0..16 as tokens.

    1,797 images, 10 classes; a fixed split (seed 0) keeps 297 held out, 1,500 for training.
    """
    if split not in SPLITS:
        raise ValueError(f"data.split: unknown {split!r}; expected one of {SPLITS}")
    digits_shape(seed=seed, num_heldout=num_heldout)  # the options' ranges
    pixels, targets = _uci_digits()
    idx = split_indices(len(targets), num_heldout, seed)[split]
    tokens = torch.as_tensor(pixels[idx], dtype=torch.long)  # (N, 64), values 0..16
    labels = torch.as_tensor(targets[idx], dtype=torch.long)
    return TokenDataset("digits", split, tokens, labels, 10, PixelTokenizer(levels=17, grid=(8, 8)))


NUM_IMAGES = 1797


@functools.cache
def _uci_digits() -> tuple[np.ndarray, np.ndarray]:
    """The (1797, 64) pixels and (1797,) labels of ``sklearn.datasets.load_digits``, read from
    the file scikit-learn ships, without importing scikit-learn (its import costs every process
    that loads the data ~0.7 s: the study's driver and each trial worker). Read through
    ``load_digits`` when that file is not where scikit-learn has always kept it."""
    spec = importlib.util.find_spec("sklearn")  # locates the package, imports nothing
    folders = (spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as fh:
                table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
            if table.shape == (NUM_IMAGES, 65):
                return table[:, :64], table[:, 64]
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.astype(np.int64), bunch.target.astype(np.int64)


def digits_shape(*, seed: int = 0, num_heldout: int = 297) -> DatasetShape:
    if not 1 <= num_heldout < NUM_IMAGES:
        raise ValueError(
            f"data.options.num_heldout: {num_heldout}; expected 1..{NUM_IMAGES - 1} (of {NUM_IMAGES} images)"
        )
    return DatasetShape((8, 8), 17, 10, split_sizes=split_sizes(num_heldout))


def split_sizes(num_heldout: int = 297) -> tuple[tuple[str, int], ...]:
    return (("train", NUM_IMAGES - num_heldout), ("heldout", num_heldout))


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
