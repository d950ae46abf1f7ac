"""Batches for training at scale, straight from a shard folder (``harness.data.sources.shards``).

Token shards stay on disk as memory maps (``np.load(mmap_mode="r")``), opened lazily in each
process, so a ``DataLoader``'s workers share the page cache instead of pickled copies. An epoch
is a seeded permutation of the split, ``order_e = permutation(N; seed, e)``; with data parallel
rank ``r`` of ``W`` takes ``order_e[r::W]`` (disjoint, and together the whole split; with
``drop_last`` only the first ``W * floor(N / W)`` so every rank has the same length). Batches are
``(tokens (B, L) int64, labels (B,) int64 or None)``, like the embedded data's ``TokenDataset``.

    loader = shard_loader({"path": ..., "grid": [32, 32], "vocab_size": 16384, "num_classes": 1000},
                          batch_size=256, seed=0, num_workers=8, rank=rank, world_size=world_size)
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for x_1, y in loader: ...
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from harness.data.sources.shards import MANIFEST, ShardError, ShardOptions, read_manifest, verify_entry


class ShardTokens(Dataset):
    """Sample ``i`` of a split: (tokens (L,) int64, label () int64 or None), read from memory maps."""

    def __init__(self, options: ShardOptions, split: str = "train", verify: bool = True) -> None:
        entries = read_manifest(options)["splits"].get(split) or []
        if not entries:
            raise ShardError(f"{options.path}/{MANIFEST}: no shards for split {split!r}")
        self.root, self.seq_len = Path(options.path), int(np.prod(options.grid))
        for entry in entries if verify else ():
            verify_entry(self.root, entry)
        self.files = [(e["tokens"], e.get("labels")) for e in entries]
        self.has_labels = all(labels is not None for _, labels in self.files)
        self.offsets = np.cumsum(
            [0] + [int(e["count"]) for e in entries]
        )  # shard k: [offsets[k], offsets[k+1])
        self._arrays: list[tuple[np.ndarray, np.ndarray | None]] | None = None
        for (tokens, _), count in zip(self._open(), np.diff(self.offsets), strict=True):
            if tokens.shape != (count, self.seq_len):
                raise ShardError(
                    f"{self.root}: a shard of shape {tokens.shape}, manifest says ({count}, {self.seq_len})"
                )

    def _open(self) -> list[tuple[np.ndarray, np.ndarray | None]]:
        if self._arrays is None:  # per process: memory maps are not shared through pickling
            load = lambda name: np.load(self.root / name, mmap_mode="r", allow_pickle=False)
            self._arrays = [(load(t), load(y) if self.has_labels else None) for t, y in self.files]
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor | None]:
        """A whole batch at once: rows gathered shard by shard from the memory maps."""
        index = np.asarray(indices, dtype=np.int64)  # (B,)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"sample index out of range [0, {len(self)})")
        shard = np.searchsorted(self.offsets, index, side="right") - 1  # (B,)
        tokens = np.empty((len(index), self.seq_len), dtype=np.int64)  # (B, L)
        labels = np.empty(len(index), dtype=np.int64) if self.has_labels else None
        for k in np.unique(shard):
            rows = shard == k
            local = index[rows] - self.offsets[k]
            tokens[rows] = self._open()[k][0][local]
            if labels is not None:
                labels[rows] = self._open()[k][1][local]
        return torch.from_numpy(tokens), None if labels is None else torch.from_numpy(labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor | None]:
        tokens, labels = self.__getitems__([i])
        return tokens[0], None if labels is None else labels[0]


class EpochSampler(Sampler[int]):
    """Sample indices of one epoch for one rank: a seeded permutation (or 0..N-1), cut by rank."""

    def __init__(self, num_samples: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False) -> None:  # fmt: skip
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} of world_size {world_size}: expected 0 <= rank < world_size")
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch`` from its ``start``-th index on this rank (a resumed run skips
        what it saw)."""
        self.epoch, self.start = epoch, start

    def indices(self) -> np.ndarray:
        n = self.num_samples
        order = (
            np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        )
        if self.drop_last:
            order = order[: n - n % self.world_size]
        return order[self.rank :: self.world_size][self.start :]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return len(self.indices())


def _as_batch(batch: tuple[Tensor, Tensor | None]) -> tuple[Tensor, Tensor | None]:
    return batch  # ShardTokens.__getitems__ has already built the batch


def shard_loader(options: dict[str, Any] | ShardOptions, split: str = "train", *, batch_size: int,
                 seed: int = 0, shuffle: bool = True, num_workers: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False, pin_memory: bool = False,
                 verify: bool = True) -> DataLoader:  # fmt: skip
    """A DataLoader of (tokens (B, L), labels (B,) or None) over a shard folder's split (see module doc).

    ``drop_last`` drops the rank tail and the last partial batch (equal step counts on every rank).
    """
    parsed = options if isinstance(options, ShardOptions) else ShardOptions.parse(options)
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"batch_size {batch_size} / num_workers {num_workers}: expected >= 1 / >= 0")
    dataset = ShardTokens(parsed, split, verify=verify)
    sampler = EpochSampler(len(dataset), seed=seed, shuffle=shuffle, rank=rank, world_size=world_size,
                           drop_last=drop_last)  # fmt: skip
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=_as_batch, pin_memory=pin_memory, drop_last=drop_last,
                      persistent_workers=num_workers > 0)  # fmt: skip
