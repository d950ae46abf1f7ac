"""Animal silhouettes (animal-mnist 0.4) as VQ tokens: the embedded discriminating benchmark.

10,000 real 28 x 28 uint8 silhouettes, 1,000 of each of 10 animal classes (284 of them twice:
only the first copy is kept), ship as two gzip pickles of numpy arrays inside the
``animal_mnist`` wheel. Its loader imports tensorflow, so
the pickles are read here directly with an unpickler that can build numpy arrays and nothing
else. A fixed seeded split keeps ``num_heldout`` images out; a VQ tokenizer trained on the
training split (cached, see ``harness.data.tokenizers.vq``) turns each image into g x g tokens, and the token
grids of each split are cached under the tokenizer's weights hash.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from harness.cache import cache_dir, load_cached
from harness.data.tokenizers.vq import VQConfig, VQTokenizer
from harness.data.tokenizers.vq_store import CACHE_FORMAT, cached_tokenizer
from harness.data.types import SPLITS, Dataset, DatasetShape, TokenDataset, split_indices
from models.checkpoint import atomic_save

PACKAGE = "animal_mnist"
INSTALL_HINT = "pip install --no-deps animal-mnist==0.4"
DATA_FILES = ("animal_data_version_3.gz", "animal_label_version_3.gz")
NUM_CLASSES = 10
NUM_IMAGES = 9716  # after deduplication (load_animal_arrays)
try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

# The only globals the two pickles need: numpy's array reconstructor, ndarray and dtype.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only ALLOWED_GLOBALS; any other global (os.system, builtins.eval, ...) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays are allowed"
            ) from None


def load_numpy_pickle(path: Path) -> np.ndarray:
    """One gzip pickle holding a numpy array, read with NumpyOnlyUnpickler."""
    with gzip.open(path, "rb") as f:
        value = NumpyOnlyUnpickler(f).load()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{path}: expected a numpy array, got {type(value).__name__}")
    return value


def data_dir() -> Path:
    """The animal-mnist data folder, found without importing the package (it imports tensorflow)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the animal-mnist package is not installed: {INSTALL_HINT}")
    folder = Path(spec.submodule_search_locations[0]) / "data" / "Animal_MNIST"
    missing = [name for name in DATA_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"animal-mnist data files {missing} not in {folder}; reinstall: {INSTALL_HINT}"
        )
    return folder


@functools.lru_cache(maxsize=2)
def load_animal_arrays(deduplicate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) int64 in 0..9), read-only.

    The package holds 10,000 images of which 284 appear twice (same pixels, same label); with
    ``deduplicate`` only the first of each pair is kept (N = 9,716), so that no held-out image
    has an exact copy in the training split.
    """
    folder = data_dir()
    images, labels = (load_numpy_pickle(folder / name) for name in DATA_FILES)
    if images.shape != (10000, 28, 28) or images.dtype != np.uint8 or labels.shape != (10000,):
        raise ValueError(f"unexpected animal-mnist arrays {images.shape} {images.dtype}, {labels.shape}")
    if deduplicate:
        _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
        keep = np.sort(first)
        images, labels = images[keep], labels[keep]
        if len(images) != NUM_IMAGES:  # the option ranges are checked against this count
            found = f"animal-mnist: {len(images)} unique images, expected {NUM_IMAGES}"
            raise ValueError(f"{found}; reinstall: {INSTALL_HINT}")
    images.flags.writeable = False
    labels = labels.astype(np.int64)
    labels.flags.writeable = False
    return images, labels


def animal_split(split: str, *, seed: int = 0, num_heldout: int = 1000) -> tuple[Tensor, Tensor]:
    """The real images of a split of the deduplicated set (8,716 train / 1,000 held out by default)
    as (x (N, 1, 28, 28) float in [0, 1], labels (N,) long)."""
    if split not in SPLITS:
        raise ValueError(f"data.split: unknown {split!r}; expected one of {SPLITS}")
    images, labels = load_animal_arrays()
    idx = split_indices(len(labels), num_heldout, seed)[split]
    x = torch.from_numpy(images[idx].astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, 28, 28)
    return x, torch.from_numpy(labels[idx].copy())


def animal_tokenizer(
    *, seed: int = 0, num_heldout: int = 1000, tokenizer: dict | None = None, cache: str | None = None
) -> VQTokenizer:
    """The VQ tokenizer (VQConfig defaults overridden by ``tokenizer``) trained on the train split."""
    config = VQConfig.from_dict(tokenizer or {})
    x_train, _ = animal_split("train", seed=seed, num_heldout=num_heldout)
    x_heldout, _ = animal_split("heldout", seed=seed, num_heldout=num_heldout)
    return cached_tokenizer(config, x_train, x_heldout, cache)


def cached_tokens(tok: VQTokenizer, split: str, *, seed: int, num_heldout: int, cache: str | None) -> Tensor:
    """tokens (N, L) long of a split: from <cache>/datasets/animals-*.pt, else encoded and cached
    (a damaged cache file is quarantined and encoded again)."""
    key = hashlib.sha256(f"{CACHE_FORMAT}|{tok.weights_sha256}|{seed}|{num_heldout}".encode()).hexdigest()
    path = cache_dir(cache) / "datasets" / f"animals-{split}-{key[:16]}.pt"
    stored = load_cached(path, cache_dir(cache), required=("tokens",))
    if stored is not None:
        return stored["tokens"].long()
    x, _ = animal_split(split, seed=seed, num_heldout=num_heldout)
    tokens = tok.encode(x)  # (N, L)
    dtype = torch.int16 if tok.vocab_size <= 2**15 else torch.long
    atomic_save(
        {"format": CACHE_FORMAT, "tokens": tokens.to(dtype), "weights_sha256": tok.weights_sha256}, path
    )
    return tokens


def animals(
    split: str = "train", *, seed: int = 0, num_heldout: int = 1000, tokenizer: dict | None = None
) -> TokenDataset:
    """Animal silhouettes as VQ tokens: a fixed split (seed 0) of 8,716 train / 1,000 held out.

    tokenizer: VQConfig overrides (e.g. {"codebook_size": 128}); the grid and vocabulary come from
    it. The first call trains the tokenizer on the train split (minutes) and caches it.
    """
    if split not in SPLITS:
        raise ValueError(f"data.split: unknown {split!r}; expected one of {SPLITS}")
    tok = animal_tokenizer(seed=seed, num_heldout=num_heldout, tokenizer=tokenizer)
    tokens = cached_tokens(tok, split, seed=seed, num_heldout=num_heldout, cache=None)
    _, labels = animal_split(split, seed=seed, num_heldout=num_heldout)
    return TokenDataset("animals", split, tokens, labels, NUM_CLASSES, tok)


def animals_shape(*, seed: int = 0, num_heldout: int = 1000, tokenizer: dict | None = None) -> DatasetShape:
    """Grid and vocabulary from the tokenizer's config, without training it."""
    if not 1 <= num_heldout < NUM_IMAGES:
        raise ValueError(
            f"data.options.num_heldout: {num_heldout}; expected 1..{NUM_IMAGES - 1} (of {NUM_IMAGES} images)"
        )
    fixed = {"image_size", "in_channels"} & set(tokenizer or {})
    if fixed:
        raise ValueError(
            f"data.options.tokenizer: {sorted(fixed)} are the data's (28 x 28, one channel); leave them out"
        )
    try:
        config = VQConfig.from_dict(tokenizer or {})
    except ValueError as err:
        raise ValueError(f"data.options.{err}") from None
    sizes = (("train", NUM_IMAGES - num_heldout), ("heldout", num_heldout))
    return DatasetShape((config.grid, config.grid), config.codebook_size, NUM_CLASSES, split_sizes=sizes)


def animals_images(
    split: str = "train", *, seed: int = 0, num_heldout: int = 1000, tokenizer: dict | None = None
) -> tuple[Tensor, Tensor]:
    """The real silhouettes of the split (the tokenizer does not change them)."""
    return animal_split(split, seed=seed, num_heldout=num_heldout)


DATASET = Dataset(
    "animals",
    load=animals,
    shape=animals_shape,
    real_images=animals_images,
    default_extractor="animals-cnn",
    summary="real animal silhouettes (animal-mnist), 28 x 28, as learned VQ tokens",
)
