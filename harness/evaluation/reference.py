"""Reference sets and their cached feature statistics.

The statistics of a reference set are computed once per (reference name and pixel hash,
extractor name and weights hash, resize rule, N) and cached under a hash of those; a second
evaluation against the same reference loads them and runs no reference features at all.

The statistics are the features (N, D), their Gaussian fit, and the k-NN radii r_k (N,) that
precision / recall read (each feature's distance to its k-th nearest neighbour), one entry per
k asked for, in the same cache file. An entry that lacks a k asked for (one written before
radii were cached, or for other k) gets it computed and written back, atomically.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor

from harness.cache import cache_dir as resolve_cache_dir
from harness.cache import load_cached, save_torch, sha256_tensor, stable_hash
from harness.data.registry import real_images
from harness.evaluation.extractors import FeatureExtractor, extract_features
from harness.evaluation.frechet import GaussianStats, gaussian_stats, stats_from_tensors, stats_to_tensors
from harness.evaluation.neighbors import knn_radii

CACHE_FORMAT = 1
RADII = "radii"  # the cache entry's {k: r_k (N,)}; absent from entries written before it existed


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
    """features (N, D) float32 (for KID, precision/recall), stats (Gaussian, float64), the cache key,
    and radii {k: r_k (N,) float32}, the k-NN radii computed with the statistics."""

    features: Tensor
    stats: GaussianStats
    key: str
    radii: Mapping[int, Tensor] = field(default_factory=dict)

    @property
    def num(self) -> int:
        return self.features.shape[0]

    def knn_radii(self, k: int) -> Tensor:
        """r_k (N,): the stored radii, else computed from the features once (kept in memory for
        the next metric or bootstrap draw asking for this k, not written to the cache)."""
        stored = self.radii.get(k)
        if stored is None:
            stored = knn_radii(self.features, k)
            if isinstance(self.radii, dict):
                self.radii[k] = stored
        return stored


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
    neighborhoods: Iterable[int] = (),
) -> ReferenceStats:
    """Load the reference statistics from the cache, or extract features, fit the Gaussian and cache
    them (a damaged cache file is quarantined and recomputed), with the k-NN radii for each k in
    ``neighborhoods``: those the entry lacks are computed and the entry written back."""
    key = reference_key(reference, extractor)
    root = resolve_cache_dir(cache_dir)
    path = root / "reference" / f"{extractor.name}-{key}.pt"
    entry = load_cached(
        path, root, required=("features", "stats"), check=lambda e: _check_entry(e, key, reference, extractor)
    )
    if entry is None:
        features = extract_features(extractor, reference.data, batch_size).features  # (N, D)
        stats = gaussian_stats(features)
        entry = {
            "format": CACHE_FORMAT,
            "features": features,
            "stats": stats_to_tensors(stats),
            "reference": reference.name,
            "extractor": extractor.name,
            "key": key,
        }
        stale = True
    else:
        features, stats, stale = entry["features"], stats_from_tensors(entry["stats"]), False
    radii = _stored_radii(entry.get(RADII), features.shape[0])
    missing = sorted(set(neighborhoods) - set(radii))
    radii.update({k: knn_radii(features, k) for k in missing})
    if stale:
        save_torch({**entry, RADII: radii}, path)
    elif missing:
        _write_back({**entry, RADII: radii}, path)
    return ReferenceStats(features, stats, key, radii)


def _check_entry(entry: dict, key: str, reference: ReferenceSet, extractor: FeatureExtractor) -> None:
    """Raises unless the entry holds this reference's statistics: its key (entries written before
    the key was stored: the same reference and extractor names), one float32 feature row per
    reference image, and a Gaussian fitted to N features of that width. A file copied over from
    another reference, or one that still loads but lost rows or statistics, would otherwise give
    numbers silently wrong or an error in the middle of a trial."""
    if entry.get("key", key) != key:
        raise ValueError(f"holds the statistics of key {entry['key']!r}, not {key!r}")
    for field_name, expected in (("reference", reference.name), ("extractor", extractor.name)):
        if entry.get(field_name, expected) != expected:
            raise ValueError(f"{field_name} is {entry[field_name]!r}, not {expected!r}")
    features, stats = entry["features"], entry["stats"]
    n = len(reference)
    if not (isinstance(features, Tensor) and features.dtype == torch.float32 and features.ndim == 2):
        raise ValueError("its features are not a float32 (N, D) tensor")
    if features.shape[0] != n or not torch.isfinite(features).all():
        raise ValueError(f"its features are {tuple(features.shape)}, not {n} finite rows")
    d = features.shape[1]
    mu, sigma, count = stats["mu"], stats["sigma"], stats["n"]  # a KeyError: damaged as well
    if tuple(mu.shape) != (d,) or tuple(sigma.shape) != (d, d) or int(count) != n:
        raise ValueError(f"its Gaussian is not one of {n} features of width {d}")


def _write_back(entry: dict, path: Path) -> None:
    """Adds radii to an entry that was complete without them: a cache that cannot be written (a full
    disk, a read-only shared cache) served evaluations before, so it still does, with a warning."""
    try:
        save_torch(entry, path)
    except OSError as err:
        print(
            f"warning: {path}: the k-NN radii were not cached ({err}); they are recomputed", file=sys.stderr
        )


def _stored_radii(stored: object, n: int) -> dict[int, Tensor]:
    """The well-formed radii of a cache entry: int k -> float32 (n,); anything else is recomputed."""
    if not isinstance(stored, dict):
        return {}
    return {
        k: r
        for k, r in stored.items()
        if isinstance(k, int) and isinstance(r, Tensor) and r.dtype == torch.float32 and r.shape == (n,)
    }
