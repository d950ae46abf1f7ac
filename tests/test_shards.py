"""Pre-tokenized shard folders: round trip, checks against the manifest and the config, no-IO shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.config.trial import ConfigError, build_trial
from harness.data.registry import dataset_shape, load_dataset, real_images
from harness.data.sources.shards import ShardError, write_shards


@pytest.fixture
def folder(tmp_path):
    train, heldout = load_dataset("digits", "train"), load_dataset("digits", "heldout")
    images = (heldout.images()[:, 0, :, :, None].numpy() * 255).astype(np.uint8)  # NHWC
    write_shards(
        tmp_path / "digits-shards",
        {"train": (train.tokens.numpy(), train.labels.numpy()), "heldout": (heldout.tokens.numpy(), None)},
        grid=(8, 8),
        vocab_size=17,
        num_classes=10,
        shard_size=400,
        reference={"heldout": images},
    )
    return tmp_path / "digits-shards"


def _options(folder, **changes) -> dict:
    return {"path": str(folder), "grid": [8, 8], "vocab_size": 17, "num_classes": 10, **changes}


def test_round_trip_over_several_shards(folder) -> None:
    train = load_dataset("shards", "train", **_options(folder))
    expected = load_dataset("digits", "train")
    assert len(list(folder.glob("train-*-labels.npy"))) == 4  # 1,500 tokens in shards of 400
    assert torch.equal(train.tokens, expected.tokens) and torch.equal(train.labels, expected.labels)
    heldout = load_dataset("shards", "heldout", **_options(folder))
    assert heldout.labels is None and heldout.tokens.shape == (297, 64)
    x, _ = real_images("shards", "heldout", **_options(folder))
    assert x.shape == (297, 1, 8, 8) and float(x.max()) <= 1.0


def test_shape_needs_no_data_and_bad_options_are_config_errors(tmp_path) -> None:
    shape = dataset_shape("shards", **_options(tmp_path / "absent", grid=[32, 32], vocab_size=16384))
    assert shape.grid == (32, 32) and shape.vocab_size == 16384
    with pytest.raises(ConfigError, match="missing \\['path'\\]"):
        build_trial({"data": {"name": "shards", "options": {"grid": [8, 8], "vocab_size": 17}}})


def test_mismatches_and_corruption_name_the_file_or_field(folder, tmp_path) -> None:
    with pytest.raises(ShardError, match="data.options.vocab_size"):
        load_dataset("shards", "train", **_options(folder, vocab_size=18))
    with pytest.raises(ShardError, match="nowhere': no manifest.json"):  # bad input: run_study exits 2
        load_dataset("shards", "train", **_options(tmp_path / "nowhere"))
    shard = folder / "train-00001.npy"
    data = np.load(shard)
    data[0, 0] = (data[0, 0] + 1) % 17
    np.save(shard, data)
    with pytest.raises(ShardError, match="train-00001.npy: checksum"):
        load_dataset("shards", "train", **_options(folder))
    with pytest.raises(ShardError, match="tokenizer"):
        load_dataset("shards", "heldout", **_options(folder)).tokenizer.decode(torch.zeros(1, 64).long())
