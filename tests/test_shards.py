"""Pre-tokenized shard folders: round trip, checks against the manifest and the config, no-IO shapes."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from harness.config.trial import ConfigError, build_trial
from harness.data.registry import DATASETS, dataset_shape, get_dataset, load_dataset, real_images
from harness.data.sources import shards
from harness.data.sources.shard_files import rewrite_file
from harness.data.sources.shards import ShardError, write_shards
from harness.run.store import train_into
from models.checkpoint import load_checkpoint


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


def _add_label_maps(folder, classes: int = 3) -> None:
    """Label maps beside every train shard (each token's id mod ``classes``), in the manifest."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["splits"]["train"]:
        entry["segments"] = entry["tokens"].replace(".npy", "-segments.npy")
        np.save(folder / entry["segments"], (np.load(folder / entry["tokens"]) % classes).astype(np.int16))
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("segment_classes", [0, 3])
def test_a_streamed_split_reads_what_loading_loads(folder, segment_classes) -> None:
    """``stream`` keeps the tokens on disk (none in memory) and reads any rows as ``load`` gives
    them, the joint image + label-map sequences too; labels load alike."""
    _add_label_maps(folder)
    options = _options(folder, segment_classes=segment_classes)
    loaded = load_dataset("shards", "train", **options)
    streamed = get_dataset("shards").stream("train", **options)
    assert streamed.tokens is None and len(streamed) == len(loaded) == 1500
    index = np.random.default_rng(0).permutation(1500)[:100]
    assert torch.equal(streamed.rows.read(index), loaded.tokens[index])
    assert loaded.tokens.shape[1] == (128 if segment_classes else 64)
    assert torch.equal(streamed.labels, loaded.labels)


def test_training_on_a_shard_folder_streams_it_never_loading_the_split(folder, tmp_path, monkeypatch) -> None:
    """The store's training path reads a shard folder through the loader: loading the split
    (every token in memory as int64) would fail here."""

    def refuse(*args, **kwargs):
        raise AssertionError("the training loaded the whole split")

    monkeypatch.setattr(shards, "load_split", refuse)
    trial = build_trial(
        {
            "data": {"name": "shards", "options": _options(folder)},
            "model": {"size": "tiny", "depth": 1, "width": 32, "heads": 2},
            "train": {"steps": 3, "batch_size": 8, "warmup_steps": 0, "checkpoint_every": 0},
            "eval": {"extractor": "digits-cnn"},
        }
    )
    train_into(trial, tmp_path)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3


def test_a_streamed_training_is_not_taken_for_one_drawn_from_memory(folder, monkeypatch) -> None:
    """Streaming reads seeded epoch orders, not the in-memory draws: the training hash says so,
    so a checkpoint trained the other way is never resumed or reused as this one."""
    d = {"data": {"name": "shards", "options": _options(folder)}, "eval": {"extractor": "digits-cnn"}}
    streamed = build_trial(d).training_hash()
    monkeypatch.setitem(DATASETS, "shards", dataclasses.replace(get_dataset("shards"), stream=None))
    assert build_trial(d).training_hash() != streamed
    # a dataset held in memory keeps the hash it always had (data_order is not added)
    digits = build_trial({})
    assert "data_order" not in digits.training_part()


def _edit_manifest(folder, edit) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("field", ["sha256", "count", "tokens"])
def test_a_manifest_entry_lacking_a_field_is_refused_naming_it(folder, field) -> None:
    _edit_manifest(folder, lambda m: m["splits"]["train"][2].pop(field))
    with pytest.raises(ShardError, match=rf"manifest.json: splits.train\[2\] has no '{field}'; expected"):
        get_dataset("shards").stream("train", **_options(folder))
    wrong = "400" if field == "count" else 5
    _edit_manifest(folder, lambda m: m["splits"]["train"][2].update({field: wrong}))
    with pytest.raises(ShardError, match=rf"manifest.json: splits.train\[2\].{field} is .*; expected"):
        load_dataset("shards", "train", **_options(folder))


def _labels(folder, k: int) -> np.ndarray:
    return np.load(folder / f"train-{k:05d}-labels.npy")


LABEL_DAMAGE = {  # how a label file goes wrong -> what the refusal says
    "missing on one shard": (
        lambda f: _edit_manifest(f, lambda m: m["splits"]["train"][1].pop("labels")),
        r"train-00001.npy: no labels \(-labels.npy\) beside it, but 3 of the split's 4 shards have them",
    ),
    "one row short": (
        lambda f: rewrite_file(f, "train-00002-labels.npy", _labels(f, 2)[:-1]),
        r"train-00002-labels.npy: shape \(399,\), its shard has \(400,\)",
    ),
    "the null class": (
        lambda f: rewrite_file(f, "train-00003-labels.npy", np.where(np.arange(300) == 7, 10, _labels(f, 3))),
        r"train-00003-labels.npy: labels outside \[0, 10\): 10 at row 7 \(num_classes",
    ),
    "floats": (
        lambda f: rewrite_file(f, "train-00000-labels.npy", _labels(f, 0) + 0.7),
        r"train-00000-labels.npy: dtype float64; expected integer",
    ),
    "changed after writing": (
        lambda f: np.save(f / "train-00003-labels.npy", _labels(f, 3)[::-1]),
        r"train-00003-labels.npy: checksum does not match",
    ),
}


@pytest.mark.parametrize("damage", list(LABEL_DAMAGE))
@pytest.mark.parametrize("how", ["stream", "load"])
def test_damaged_labels_are_refused_before_training(folder, tmp_path, monkeypatch, damage, how) -> None:
    """Labels went missing, unconditioned, or failed mid-training with an IndexError; now each
    label file is checksummed with its shard and checked for count, dtype and range up front."""
    monkeypatch.setenv("UNMASK_CACHE", str(tmp_path / "cache"))
    get_dataset("shards").stream("train", **_options(folder))  # a stamp for the intact folder
    change, message = LABEL_DAMAGE[damage]
    change(folder)
    with pytest.raises(ShardError, match=message):
        getattr(get_dataset("shards"), how)("train", **_options(folder))


def test_a_conditional_training_split_needs_labels_and_older_folders_still_read(tmp_path) -> None:
    """num_classes > 0 makes the model class-conditional: its train split without labels is
    refused (a held-out split may lack them). Label files whose checksum a folder never recorded
    (written before the writer recorded them) are read, their contents checked."""
    data = load_dataset("digits", "train")
    root = write_shards(tmp_path / "unlabelled", {"train": (data.tokens.numpy(), None)}, grid=(8, 8),
                        vocab_size=17, num_classes=10, shard_size=400)  # fmt: skip
    with pytest.raises(ShardError, match=r"train-00000.npy: no labels .* but num_classes is 10"):
        get_dataset("shards").stream("train", **_options(root))
    root = write_shards(tmp_path / "older", {"train": (data.tokens.numpy(), data.labels.numpy())},
                        grid=(8, 8), vocab_size=17, num_classes=10, shard_size=400)  # fmt: skip
    _edit_manifest(root, lambda m: [entry.pop("files") for entry in m["splits"]["train"]])
    assert torch.equal(get_dataset("shards").stream("train", **_options(root)).labels, data.labels)


def test_a_folder_tokenized_again_in_place_is_read_again_by_a_worker(tmp_path, monkeypatch) -> None:
    """A worker keeps its evaluators (extractor, reference images and features) between trials;
    after the folder is written again under the same options, the next trial reads its new
    reference, and until then the kept one is reused."""
    from harness.run import trial as trial_module

    read: list[float] = []

    class Recording:
        def __init__(self, dataset: str, **kwargs) -> None:
            read.append(float(real_images(dataset, "train", **kwargs["data_options"])[0].sum()))

    monkeypatch.setattr(trial_module, "Evaluator", Recording)
    trial_module._evaluator.cache_clear()
    train = load_dataset("digits", "train")
    images = (train.images()[:, 0, :, :, None].numpy() * 255).astype(np.uint8)  # NHWC

    def write(reference: np.ndarray) -> None:
        splits = {"train": (train.tokens.numpy(), train.labels.numpy())}
        write_shards(root, splits, grid=(8, 8), vocab_size=17, num_classes=10, reference={"train": reference})

    root = tmp_path / "in-place"
    write(images)
    trial = build_trial(
        {"data": {"name": "shards", "options": _options(root)}, "eval": {"extractor": "digits-cnn"}}
    )
    for _ in range(2):
        trial_module.trial_evaluators(trial, tmp_path / "cache")
    assert len(read) == 1  # kept between trials
    write(255 - images)  # the same options, other pixels
    trial_module.trial_evaluators(trial, tmp_path / "cache")
    assert len(read) == 2 and read[1] != read[0]
    trial_module._evaluator.cache_clear()


def test_a_folder_a_study_could_not_read_is_found_before_it_starts(folder, tmp_path) -> None:
    """Validation reads no file; before a study starts on this machine each dataset's files are
    checked: no folder, a manifest that is no JSON object, no training shards, and no training
    reference images for a trial scored against them are each named (one line per dataset)."""
    from harness.runner import missing_files

    def problems(options: dict, metrics: tuple[str, ...] = ("fid",)) -> list[str]:
        trial = build_trial(
            {
                "data": {"name": "shards", "options": options},
                "eval": {"extractor": "digits-cnn", "metrics": list(metrics)},
            }
        )
        return missing_files([trial])

    (line,) = problems(_options(folder))  # the fixture keeps held-out reference images only
    assert line.startswith("data 'shards'") and "no reference images of split 'train'" in line
    shards.shards_check(False, **_options(folder))  # unscored: the shards alone suffice
    assert "no manifest.json" in problems(_options(tmp_path / "nowhere"))[0]
    broken = tmp_path / "broken"
    broken.mkdir()
    for text, words in (("{not json", "unreadable"), ("[1, 2]", "expected a JSON object")):
        (broken / "manifest.json").write_text(text)
        assert words in problems(_options(broken))[0]
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["splits"].pop("train")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="no shards of split 'train'"):
        shards.shards_check(False, **_options(folder))
