"""Training batches straight from a split left on disk (``Dataset.stream``; for a shard folder
``harness.data.sources.shards.ShardRows``): only each batch's rows are read, in their stored
dtype, and cast to int64 there; the split is never held in memory.

The samples form one endless stream of seeded epoch orders, ``order_e = permutation(N; seed, e)``:
position p holds sample ``order_{p // N}[p mod N]``. Global micro-batch k is positions
[k B, (k + 1) B), and rank r of W reads only its rows of it, positions k B + W j + r (j < B / W):
disjoint, and together the whole micro-batch. Micro-batch k is thus a function of (seed, k)
alone, whatever W: a training resumed at step s starts at k = s * grad_accum and sees the
batches an uninterrupted one sees (``models.trainer.TokenStream``).

    stream = RowStream(get_dataset("shards").stream("train", **options).rows)
    for index, x_1 in stream.micro_batches(0, batch_size=256, seed=0, rank=r, world_size=W):
        ...  # index (B / W,) the samples, x_1 (B / W, L) long
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from harness.data.types import TokenRows


class MicroBatchSampler(Sampler[list[int]]):
    """The samples of rank ``rank``'s rows of global micro-batches ``start``, ``start + 1``, ...
    (up to ``stop``; endless without), over the stream of epoch orders of the module doc."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        stop: int | None = None,
    ) -> None:
        if num_samples < 1 or batch_size < 1 or start < 0:
            raise ValueError(
                f"{num_samples} samples, batch_size {batch_size}, start {start}: expected >= 1, >= 1, >= 0"
            )
        if not 0 <= rank < world_size or batch_size % world_size:
            raise ValueError(
                f"rank {rank} of {world_size}: expected 0 <= rank < world_size dividing {batch_size}"
            )
        self.num_samples, self.batch_size, self.seed, self.shuffle = num_samples, batch_size, seed, shuffle
        self.rank, self.world_size, self.start, self.stop = rank, world_size, start, stop
        self._epoch, self._order = -1, np.arange(0)

    def order(self, epoch: int) -> np.ndarray:
        """order_e (N,): the samples of epoch e in the order they are seen (the last one kept)."""
        if epoch != self._epoch:
            n = self.num_samples
            self._order = (
                np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            )
            self._epoch = epoch
        return self._order

    def batch(self, k: int) -> np.ndarray:
        """This rank's samples (B / W,) of global micro-batch k (which may span epochs)."""
        B, W, n = self.batch_size, self.world_size, self.num_samples
        positions = k * B + self.rank + W * np.arange(B // W)  # (b,)
        epochs = positions // n
        samples = np.empty(len(positions), dtype=np.int64)
        for epoch in np.unique(epochs):
            at = epochs == epoch
            samples[at] = self.order(int(epoch))[positions[at] % n]
        return samples

    def __iter__(self) -> Iterator[list[int]]:
        k = self.start
        while self.stop is None or k < self.stop:
            yield self.batch(k).tolist()
            k += 1

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("an endless MicroBatchSampler (stop=None) has no length")
        return max(0, self.stop - self.start)


class _Rows(Dataset):
    """Samples of a ``TokenRows``, a batch at a time: (index (b,) long, tokens (b, L) long)."""

    def __init__(self, rows: TokenRows) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        index = np.asarray(indices, dtype=np.int64)  # (b,)
        return torch.from_numpy(index), self.rows.read(index)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        index, tokens = self.__getitems__([i])
        return index[0], tokens[0]


def _as_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return batch  # _Rows.__getitems__ has already built the batch


def row_loader(rows: TokenRows, *, batch_size: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
               world_size: int = 1, start: int = 0, stop: int | None = None, num_workers: int = 0,
               pin_memory: bool = False) -> DataLoader:  # fmt: skip
    """A DataLoader of rank ``rank``'s (index (B / W,), x_1 (B / W, L) long) of global micro-batches
    ``start`` .. ``stop`` - 1 of B = ``batch_size`` rows (see the module doc). Worker processes
    (``num_workers``) read through their own copies of ``rows`` and change no batch."""
    sampler = MicroBatchSampler(len(rows), batch_size, seed=seed, shuffle=shuffle, rank=rank,
                                world_size=world_size, start=start, stop=stop)  # fmt: skip
    return DataLoader(_Rows(rows), batch_sampler=sampler, num_workers=num_workers, collate_fn=_as_batch,
                      pin_memory=pin_memory)  # fmt: skip


@dataclass(frozen=True)
class RowStream:
    """A ``models.trainer.TokenStream`` over rows on disk: what the trainer reads a streamed
    split through. ``num_workers`` > 0 reads ahead in worker processes."""

    rows: TokenRows
    shuffle: bool = True
    num_workers: int = 0
    pin_memory: bool = False

    def __len__(self) -> int:
        return len(self.rows)

    def micro_batches(
        self, start: int, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> Generator[tuple[Tensor, Tensor], None, None]:
        """Rank ``rank``'s (index (b,), x_1 (b, L)) of micro-batches ``start``, ``start + 1``, ...
        (endless; closing the iterator ends the loader's worker processes)."""
        yield from row_loader(self.rows, batch_size=batch_size, seed=seed, shuffle=self.shuffle, rank=rank,
                              world_size=world_size, start=start, num_workers=self.num_workers,
                              pin_memory=self.pin_memory)  # fmt: skip
