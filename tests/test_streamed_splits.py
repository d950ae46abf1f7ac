"""Whoever needs a split's size, shape or tokenizer, not its tokens, opens it streamed where the
dataset can stream (a shard folder: ImageNet as VQ ids is ~10 GB as int64 tensors)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from harness.config.trial import build_trial
from harness.data.registry import DATASETS, get_dataset, load_dataset, open_split
from harness.data.sources.shards import write_shards
from harness.run import trial as trial_module
from harness.runner import warm_datasets


@pytest.fixture
def options(tmp_path) -> dict:
    train, heldout = load_dataset("digits", "train"), load_dataset("digits", "heldout")
    root = tmp_path / "digits-shards"
    splits = {
        "train": (train.tokens.numpy(), train.labels.numpy()),
        "heldout": (heldout.tokens.numpy(), None),
    }
    write_shards(root, splits, grid=(8, 8), vocab_size=17, num_classes=10, shard_size=400)
    return {"path": str(root), "grid": [8, 8], "vocab_size": 17, "num_classes": 10}


@pytest.fixture
def no_train_load(monkeypatch) -> None:
    """The shard folder's ``load`` of its training split fails: only streaming may open it."""
    shards = get_dataset("shards")

    def load(split: str, **options):
        if split == "train":
            raise AssertionError("the training split was loaded into memory")
        return shards.load(split, **options)

    monkeypatch.setitem(DATASETS, "shards", dataclasses.replace(shards, load=load))


def test_open_split_streams_a_shard_folder_and_loads_a_small_dataset(options) -> None:
    streamed = open_split("shards", "train", **options)
    assert streamed.tokens is None and len(streamed) == len(load_dataset("digits", "train"))
    assert (streamed.grid, streamed.vocab_size, streamed.num_classes) == ((8, 8), 17, 10)
    loaded = open_split("digits", "train")
    assert loaded.rows is None and loaded.tokens.shape == (len(loaded), 64)


def test_the_drivers_dataset_summary_reads_no_training_rows(options, no_train_load, tmp_path) -> None:
    trial = build_trial({"data": {"name": "shards", "options": options}, "eval": {"extractor": "digits-cnn"}})
    warm_datasets([trial], tmp_path, tmp_path / "cache")
    (summary,) = json.loads((tmp_path / "datasets.json").read_text())
    assert summary["num_train"] == len(load_dataset("digits", "train")) and summary["grid"] == [8, 8]


@pytest.mark.parametrize("sampler, opened", [("euler", "open_split"), ("class_marginals", "load_dataset")])
def test_a_model_trials_samples_open_the_split_streamed_a_baselines_load_it(
    monkeypatch, tmp_path, sampler, opened
) -> None:
    """A baseline draws from the training tokens; a model's samples only decode through the tokenizer."""
    calls = []

    def spy(name):
        def opening(*args, **kwargs):
            calls.append(name)
            raise LookupError("stop here")

        return opening

    monkeypatch.setattr(trial_module, "open_split", spy("open_split"))
    monkeypatch.setattr(trial_module, "load_dataset", spy("load_dataset"))
    trial = build_trial({"sampler": {"name": sampler}})
    with pytest.raises(LookupError):
        trial_module.sample_to_disk(trial, trial_module.CheckpointStore(tmp_path), seed=0)
    assert calls == [opened]
