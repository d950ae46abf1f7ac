"""The shard data loader: each sample once per epoch, seeded per-epoch orders, disjoint rank shards
that cover the split, worker processes that change nothing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data.shard_loader import EpochSampler, shard_loader
from harness.data.sources.shards import ShardError, write_shards

N, VOCAB = 103, 50


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Sample i has tokens (i // 50, i % 50, 7, 3) and label i % 10, in 7 shards of up to 16."""
    i = np.arange(N)
    tokens = np.stack([i // VOCAB, i % VOCAB, np.full(N, 7), np.full(N, 3)], axis=1)  # (N, 4)
    root = tmp_path_factory.mktemp("loader") / "shards"
    write_shards(root, {"train": (tokens, i % 10), "heldout": (tokens[:9], None)}, grid=(2, 2),
                 vocab_size=VOCAB, num_classes=10, shard_size=16)  # fmt: skip
    return {"path": str(root), "grid": [2, 2], "vocab_size": VOCAB, "num_classes": 10}


def _epoch(loader) -> tuple[list[int], list[int]]:
    ids, labels = [], []
    for tokens, y in loader:
        assert tokens.dtype == torch.long and tokens.shape[1] == 4 and y.dtype == torch.long
        ids += (tokens[:, 0] * VOCAB + tokens[:, 1]).tolist()
        labels += y.tolist()
    return ids, labels


def test_every_sample_once_per_epoch_new_order_each_epoch_same_for_the_seed(folder) -> None:
    loader = shard_loader(folder, batch_size=10, seed=3)
    orders = []
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        ids, labels = _epoch(loader)
        assert sorted(ids) == list(range(N)) and labels == [i % 10 for i in ids]
        orders.append(ids)
    assert len({tuple(o) for o in orders}) == 3
    again = shard_loader(folder, batch_size=7, seed=3)
    again.sampler.set_epoch(1)
    assert _epoch(again)[0] == orders[1]
    other = shard_loader(folder, batch_size=10, seed=4)
    assert _epoch(other)[0] != orders[0]
    plain = shard_loader(folder, batch_size=10, shuffle=False)
    assert _epoch(plain)[0] == list(range(N))


def test_rank_shards_are_disjoint_and_cover_the_split(folder) -> None:
    parts = [_epoch(shard_loader(folder, batch_size=8, seed=1, rank=r, world_size=3))[0] for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(N))
    even = [_epoch(shard_loader(folder, batch_size=8, seed=1, rank=r, world_size=3, drop_last=True))[0]
            for r in range(3)]  # fmt: skip
    assert {len(p) for p in even} == {32} and len(
        set(sum(even, []))
    ) == 96  # 34 each, last partial batch dropped


def test_workers_give_the_same_batches_as_the_main_process(folder) -> None:
    ids, _ = _epoch(shard_loader(folder, batch_size=10, seed=5))
    loader = shard_loader(folder, batch_size=10, seed=5, num_workers=2)
    assert _epoch(loader)[0] == ids  # same order, hence the same multiset
    loader.sampler.set_epoch(1)
    assert sorted(_epoch(loader)[0]) == list(range(N))


def test_unlabelled_splits_and_corrupt_shards(folder, tmp_path) -> None:
    ((tokens, labels),) = list(shard_loader(folder, "heldout", batch_size=20, shuffle=False))
    assert labels is None and tokens[:, 1].tolist() == list(range(9))
    copy = tmp_path / "copy"
    shutil.copytree(folder["path"], copy)
    data = np.load(copy / "train-00003.npy")
    np.save(copy / "train-00003.npy", data[::-1])
    with pytest.raises(ShardError, match="train-00003.npy: checksum"):
        shard_loader({**folder, "path": str(copy)}, batch_size=4)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 60), world=st.integers(1, 5), seed=st.integers(0, 3), drop=st.booleans(),
       epoch=st.integers(0, 3))  # fmt: skip
def test_sampler_partitions_every_epoch(n, world, seed, drop, epoch) -> None:
    samplers = [EpochSampler(n, seed=seed, rank=r, world_size=world, drop_last=drop) for r in range(world)]
    for s in samplers:
        s.set_epoch(epoch)
    parts = [list(s) for s in samplers]
    flat = sum(parts, [])
    assert len(flat) == len(set(flat)) and set(flat) <= set(range(n))
    assert len(flat) == (n - n % world if drop else n)
    if drop:
        assert len({len(p) for p in parts}) == 1
    s = samplers[0]
    s.set_epoch(epoch, start=2)  # resuming mid-epoch continues the same order
    assert list(s) == parts[0][2:]
