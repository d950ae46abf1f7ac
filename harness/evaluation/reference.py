"""Reference sets and their cached feature statistics.

The statistics of a reference set are computed once per (reference name and pixel hash,
extractor name and weights hash, resize rule, N) and cached under a hash of those; a second
evaluation against the same reference loads them and runs no reference features at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor

from harness.cache import cache_dir as resolve_cache_dir
from harness.cache import load_cached, save_torch, sha256_tensor, stable_hash
from harness.data.registry import real_images
from harness.evaluation.extractors import FeatureExtractor, extract_features
from harness.evaluation.frechet import GaussianStats, gaussian_stats, stats_from_tensors, stats_to_tensors

CACHE_FORMAT = 1


@dataclass(frozen=True, eq=False)
class ReferenceSet:
    """name (``"digits/train"``), dataset (for its default extractor), data (N, C, [T,] H, W) in [0, 1]."""

    name: str
    dataset: str
    data: Tensor

    @cached_property
    def sha256(self) -> str:
        """Hash of the float32 pixels (and shape): two references with equal hashes are the same set."""
        return sha256_tensor(self.data.float())

    def __len__(self) -> int:
        return self.data.shape[0]


def dataset_reference(
    dataset: str, split: str = "train", num: int | None = None, seed: int = 0, options: dict | None = None
) -> ReferenceSet:
    """The real images of a registered dataset split (originals, not tokenizer reconstructions)
    under the dataset's ``options``; ``num`` keeps a seeded random subset of that size."""
    images, _ = real_images(dataset, split, **(options or {}))  # (N, C, H, W)
    name = f"{dataset}/{split}"  # another split under other options differs in its pixel sha256
    if num is not None:
        if not 2 <= num <= images.shape[0]:
            raise ValueError(f"num_reference must be in [2, {images.shape[0]}] for {name}; got {num}")
        keep = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:num]
        images, name = images[keep.sort().values], f"{name}[{num}@seed{seed}]"
    return ReferenceSet(name, dataset, images)


@dataclass(frozen=True)
class ReferenceStats:
    """features (N, D) float32 (for KID, precision/recall), stats (Gaussian, float64), and the cache key."""

    features: Tensor
    stats: GaussianStats
    key: str

    @property
    def num(self) -> int:
        return self.features.shape[0]


def reference_key(reference: ReferenceSet, extractor: FeatureExtractor) -> str:
    """Hash of everything the reference statistics depend on."""
    return stable_hash(
        {
            "format": CACHE_FORMAT,
            "reference": reference.name,
            "reference_sha256": reference.sha256,
            "n": len(reference),
            "extractor": extractor.name,
            "weights_sha256": extractor.weights_sha256,
            "resize_rule": extractor.resize_rule,
        },
        length=24,
    )


def reference_stats(
    reference: ReferenceSet,
    extractor: FeatureExtractor,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
) -> ReferenceStats:
    """Load the reference statistics from the cache, or extract features, fit the Gaussian and cache
    them (a damaged cache file is quarantined and recomputed)."""
    key = reference_key(reference, extractor)
    root = resolve_cache_dir(cache_dir)
    path = root / "reference" / f"{extractor.name}-{key}.pt"
    stored = load_cached(path, root, required=("features", "stats"))
    if stored is not None:
        return ReferenceStats(stored["features"], stats_from_tensors(stored["stats"]), key)
    features = extract_features(extractor, reference.data, batch_size).features  # (N, D)
    stats = gaussian_stats(features)
    save_torch(
        {
            "format": CACHE_FORMAT,
            "features": features,
            "stats": stats_to_tensors(stats),
            "reference": reference.name,
            "extractor": extractor.name,
        },
        path,
    )
    return ReferenceStats(features, stats, key)
