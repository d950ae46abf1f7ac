"""The training loader of streamed splits: each sample once per epoch in seeded per-epoch orders,
micro-batch k the same under any number of ranks (rank r holding rows r, r + W, ...), resuming
at k reading what an uninterrupted run reads, worker processes that change nothing, and tokens
kept in their stored dtype on disk."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data.registry import get_dataset
from harness.data.shard_loader import MicroBatchSampler, RowStream, row_loader
from harness.data.sources import shard_files
from harness.data.sources.shards import ShardError, ShardOptions, ShardRows, write_shards

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


def _rows(folder, split: str = "train") -> ShardRows:
    return get_dataset("shards").stream(split, **folder).rows


def _ids(loader) -> tuple[list[int], list[int]]:
    """The samples each batch says it holds, checked against the tokens read for them."""
    ids = []
    for index, tokens in loader:
        assert tokens.dtype == torch.long and tokens.shape == (len(index), 4)
        assert (tokens[:, 0] * VOCAB + tokens[:, 1]).tolist() == index.tolist()
        ids += index.tolist()
    return ids


def test_every_sample_once_per_epoch_new_order_each_epoch_same_for_the_seed(folder) -> None:
    rows = _rows(folder)
    stream = _ids(row_loader(rows, batch_size=10, seed=3, stop=31))  # 310 positions: 3 epochs and 1
    epochs = [stream[e * N : (e + 1) * N] for e in range(3)]
    assert all(sorted(order) == list(range(N)) for order in epochs) and len({tuple(o) for o in epochs}) == 3
    assert _ids(row_loader(rows, batch_size=7, seed=3, stop=45))[: 3 * N] == stream[: 3 * N]
    assert _ids(row_loader(rows, batch_size=10, seed=4, stop=10))[:N] != epochs[0]
    assert _ids(row_loader(rows, batch_size=10, shuffle=False, stop=11))[:N] == list(range(N))
    data = get_dataset("shards").stream("train", **folder)
    assert data.tokens is None and len(data) == N and data.labels.tolist() == [i % 10 for i in range(N)]


def test_micro_batch_k_is_the_same_under_any_world_size_and_resumes_at_k(folder) -> None:
    rows = _rows(folder)
    whole = [index.tolist() for index, _ in row_loader(rows, batch_size=12, seed=1, stop=20)]
    for world in (2, 3, 4):
        ranks = [
            list(row_loader(rows, batch_size=12, seed=1, rank=r, world_size=world, stop=20))
            for r in range(world)
        ]
        for k, batch in enumerate(whole):
            parts = [ranks[r][k][0].tolist() for r in range(world)]
            assert all(parts[r] == batch[r::world] for r in range(world))  # rank r: rows r, r + W, ...
    resumed = [index.tolist() for index, _ in row_loader(rows, batch_size=12, seed=1, start=13, stop=20)]
    assert resumed == whole[13:]
    batches = RowStream(rows).micro_batches(13, batch_size=12, seed=1, rank=0, world_size=1)
    assert [next(batches)[0].tolist() for _ in range(7)] == whole[13:]
    batches.close()


def test_workers_give_the_same_batches_as_the_main_process(folder) -> None:
    rows = _rows(folder)
    ids = _ids(row_loader(rows, batch_size=10, seed=5, stop=25))
    assert _ids(row_loader(rows, batch_size=10, seed=5, stop=25, num_workers=2)) == ids


def test_tokens_stay_on_disk_in_their_stored_dtype_and_are_checked_per_read(folder, tmp_path) -> None:
    rows = _rows(folder)
    assert all(file.dtype == np.int16 for shard in rows.files for file in shard)
    assert rows.read(np.array([5, 100, 5, 4])).tolist() == [
        [0, 5, 7, 3],
        [2, 0, 7, 3],
        [0, 5, 7, 3],
        [0, 4, 7, 3],
    ]
    copy = tmp_path / "copy"
    shutil.copytree(folder["path"], copy)
    data = np.load(copy / "train-00002.npy")
    data[3, 1] = VOCAB  # out of range, written as the tokenizer would not
    np.save(copy / "train-00002.npy", data)
    options = ShardOptions.parse({**folder, "path": str(copy)})
    bad = ShardRows(options, "train", verify="never")
    assert bad.read(np.arange(32)).shape == (32, 4)  # other shards read fine
    with pytest.raises(ShardError, match=r"train-00002.npy: token ids outside \[0, 50\)"):
        bad.read(np.array([2 * 16 + 3]))
    with open(copy / "train-00004.npy", "r+b") as f:
        f.truncate(f.seek(0, 2) - 8)  # half of the last row gone
    with pytest.raises(ShardError, match="train-00004.npy: shorter than its header says"):
        bad.read(np.array([4 * 16 + 15]))


def test_checksums_are_verified_once_per_machine_until_a_file_changes(folder, tmp_path, monkeypatch) -> None:
    """Data-parallel ranks on one machine hash a folder once (a stamp in the cache folder); a
    shard changed afterwards is hashed again and refused."""
    copy = tmp_path / "copy"
    shutil.copytree(folder["path"], copy)
    monkeypatch.setenv("UNMASK_CACHE", str(tmp_path / "cache"))
    hashed = []
    sha256_file = shard_files.sha256_file
    monkeypatch.setattr(shard_files, "sha256_file", lambda path: hashed.append(path) or sha256_file(path))
    options = {**folder, "path": str(copy)}
    for _ in range(3):
        get_dataset("shards").stream("train", **options)
    assert len(hashed) == 14  # the 7 shards and their 7 label files, once
    data = np.load(copy / "train-00003.npy")
    np.save(copy / "train-00003.npy", data[::-1])
    with pytest.raises(ShardError, match="train-00003.npy: checksum"):
        get_dataset("shards").stream("train", **options)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), b=st.integers(1, 6), world=st.sampled_from([1, 2, 3]), seed=st.integers(0, 3),
       k=st.integers(0, 30))  # fmt: skip
def test_sampler_partitions_each_micro_batch_and_each_epoch(n, b, world, seed, k) -> None:
    B = b * world
    samplers = [MicroBatchSampler(n, B, seed=seed, rank=r, world_size=world) for r in range(world)]
    one = MicroBatchSampler(n, B, seed=seed)
    assert [s.batch(k).tolist() for s in samplers] == [one.batch(k)[r::world].tolist() for r in range(world)]
    stream = np.concatenate([one.batch(j) for j in range((2 * n + B - 1) // B)])
    assert sorted(stream[:n].tolist()) == sorted(stream[n : 2 * n].tolist()) == list(range(n))


def _copy(folder, tmp_path) -> dict:
    shutil.copytree(folder["path"], tmp_path / "copy")
    return {**folder, "path": str(tmp_path / "copy")}


@pytest.mark.parametrize("dtype", [np.float32, np.bool_])
def test_a_shard_of_another_dtype_than_integers_is_refused_naming_it(folder, tmp_path, dtype) -> None:
    """A float32 shard holding 45.5 once read back as 45; its checksum matching changes nothing."""
    options = _copy(folder, tmp_path)
    data = np.load(f"{options['path']}/train-00001.npy").astype(dtype)
    shard_files.rewrite_file(options["path"], "train-00001.npy", data)
    with pytest.raises(ShardError, match=rf"train-00001.npy: dtype {np.dtype(dtype)}; expected integer ids"):
        ShardRows(ShardOptions.parse(options), "train", verify="never")


def test_an_id_out_of_range_in_the_last_row_is_refused_before_any_read(folder, tmp_path, monkeypatch) -> None:
    """The once-per-machine verification scans every id a chunk of rows at a time (here 2 rows),
    so a streamed folder whose checksums match is refused up front, not at the batch reaching
    the row; the refusal leaves no stamp behind."""
    options = _copy(folder, tmp_path)
    monkeypatch.setenv("UNMASK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(shard_files, "CHUNK_BYTES", 2 * 4 * 2)  # 2 rows of 4 int16
    data = np.load(f"{options['path']}/train-00006.npy")  # rows 96..102: 7 rows
    data[6, 2] = VOCAB
    shard_files.rewrite_file(options["path"], "train-00006.npy", data)
    for _ in range(2):
        with pytest.raises(ShardError, match=r"train-00006.npy: token ids outside \[0, 50\): 50 at row 6"):
            get_dataset("shards").stream("train", **options)
    data[6, 2] = -1
    shard_files.rewrite_file(options["path"], "train-00006.npy", data)
    with pytest.raises(ShardError, match=r"train-00006.npy: token ids outside \[0, 50\): -1 at row 6"):
        get_dataset("shards").stream("train", **options)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc")
def test_reading_holds_no_file_open_between_reads(tmp_path) -> None:
    """A handle kept per shard ran out of descriptors (400 shards of 2 rows under ``ulimit -n
    256`` failed after 19 batches): each read opens its shard's file and closes it again."""
    tokens = np.arange(800 * 4).reshape(800, 4) % VOCAB
    root = write_shards(tmp_path / "many", {"train": (tokens, None)}, grid=(2, 2), vocab_size=VOCAB,
                        num_classes=0, shard_size=2)  # fmt: skip
    rows = ShardRows(ShardOptions(str(root), (2, 2), VOCAB), "train", verify="never")
    before = len(os.listdir("/proc/self/fd"))
    index = np.random.default_rng(0).permutation(800)
    assert torch.equal(rows.read(index), torch.from_numpy(tokens[index]))
    assert len(os.listdir("/proc/self/fd")) == before
