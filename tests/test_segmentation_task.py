"""Segmentation as unmasking, end to end: the digit-canvases joint data, clamped sampling,
mIoU with its protocol in the ledger and MLflow, and the report's mIoU section."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_runs_root, study_file

import run_study
from harness.config.trial import ConfigError, build_trial
from harness.data.registry import dataset_shape, load_dataset
from harness.data.sources.canvases import INK, compose
from harness.evaluation import load_samples
from harness.run.ledger import Ledger
from reports.mlflow_source import study_table

SMALL = {"num_train": 64, "num_heldout": 16}


def test_canvases_are_seeded_and_the_label_map_is_the_ink_of_the_named_digits() -> None:
    digits = load_dataset("digits", "heldout")
    a = compose(digits.images(), digits.labels, 50, seed=3)
    b = compose(digits.images(), digits.labels, 50, seed=3)
    c = compose(digits.images(), digits.labels, 50, seed=4)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    ink = a.images[:, 0] > INK  # (N, H, W)
    assert torch.equal(a.label_maps > 0, ink)
    for n in range(50):
        first, relation, second = a.layout[n].tolist()
        present = set((a.label_maps[n].unique() - 1).tolist()) - {-1}
        assert present <= {first, second}
        # the first digit's ink lies in the first half along the relation's axis
        axis = 1 if relation == 0 else 0  # left of: columns; above: rows
        first_ink = (a.label_maps[n] == first + 1).nonzero()[:, axis]
        if first != second and len(first_ink):
            assert first_ink.max() < 8
        words = a.captions[n].split()
        assert words[1] == str(first) and words[-1] == str(second)


def test_joint_dataset_tokens_split_back_into_image_and_labels() -> None:
    data = load_dataset("digit-canvases", "heldout", **SMALL)
    layout = data.tokenizer.layout
    assert data.tokens.shape == (16, 512) and layout.names == ["image", "labels"]
    assert dataset_shape("digit-canvases", **SMALL).modalities == layout.modalities
    parts = layout.split(data.tokens)
    assert parts["image"].max() < 17 and parts["labels"].max() < 11
    maps = data.tokenizer.decode_labels(data.tokens)
    assert torch.equal(maps > 0, data.images()[:, 0] > INK)


def test_condition_on_must_name_a_modality_and_does_not_change_old_hashes() -> None:
    with pytest.raises(ConfigError, match="sampler.condition_on: 'depth'.*'image', 'labels'"):
        build_trial({"data": {"name": "digit-canvases"}, "sampler": {"condition_on": "depth"}})
    with pytest.raises(ConfigError, match="not a modality of dataset 'digits'"):
        build_trial({"sampler": {"condition_on": "image"}})
    # Hashes of a config that does not use the new fields are those of the caches already on disk.
    default = build_trial({})
    assert (default.training_hash(), default.trial_hash()) == ("4c010d3d5219b402", "2d8c9e70bd57f275")
    canvases = {"data": {"name": "digit-canvases"}}
    base = build_trial({**canvases, "sampler": {"name": "class_marginals"}})
    given = build_trial({**canvases, "sampler": {"name": "class_marginals", "condition_on": "image"}})
    assert base.trial_hash() != given.trial_hash()  # a baseline's task is part of its identity


@pytest.fixture(scope="module")
def segmentation_study(tmp_path_factory, warm_eval_cache, ray_session) -> dict:
    """A tiny joint study through the CLI: segmentation trials, the chance line, label -> image."""
    tmp = tmp_path_factory.mktemp("segmentation")
    root = make_runs_root(tmp / "runs", warm_eval_cache)
    study = study_file(
        tmp,
        "seg",
        overrides={
            "data.name": "digit-canvases",
            "data.options": SMALL,
            "model.timestep": "explicit",
            "model.patch": [2, 2],
            "sampler.condition_on": "image",
            "eval.num_samples": 20,
            "eval.batch_size": 20,
            "eval.metrics": ["miou"],
            "eval.sample_seeds": [0, 1],
        },
        variants={
            "segment": {},
            "chance": {"sampler.name": "class_marginals"},
            "labels_to_image": {
                "sampler.condition_on": "labels",
                "eval.metrics": ["fid"],
                "eval.extractor": "digits-cnn",
                "eval.sample_seeds": [0],
            },
        },
        space={"sampler.name": ["euler", "maskgit"], "sampler.num_steps": [1, 2]},
        metric="miou",
        concurrency=2,
    )
    uri = f"sqlite:///{root}/mlflow.db"
    assert run_study.main(["run", str(study), "--runs-root", str(root), "--tracking-uri", uri]) == 0
    return {"root": root, "uri": uri, "records": Ledger(root / "seg").records()}


def test_segmentation_trials_log_miou_with_its_protocol(segmentation_study) -> None:
    records = segmentation_study["records"]
    assert records and all(r.status == "finished" for r in records), [r.error for r in records]
    segment = [r for r in records if r.config["sampler"].get("condition_on") == "image"]
    assert len(segment) == 5  # 2 samplers x 2 NFE + the chance line
    for r in segment:
        assert 0.0 <= r.metrics["miou"] <= 1.0
        protocol = r.protocols["miou"]
        assert protocol["direction"] == "max" and protocol["num_samples"] == 20
        assert "2 sample sets" in protocol["uncertainty"]
    # The samplers and the chance line are what is compared, not part of how: one protocol,
    # so the report ranks them in one column.
    assert len({r.protocols["miou"]["key"] for r in segment}) == 1
    assert {r.config["sampler"]["name"] for r in segment} == {"euler", "maskgit", "class_marginals"}
    table = study_table(segmentation_study["uri"], "seg").table
    assert table["miou"].notna().sum() == 5 and table["fid"].notna().sum() == 4


def test_given_modality_is_kept_and_the_other_generated(segmentation_study) -> None:
    heldout = load_dataset("digit-canvases", "heldout", **SMALL)
    layout = heldout.tokenizer.layout
    for r in segmentation_study["records"]:
        given = r.config["sampler"].get("condition_on")
        samples = load_samples(Path(r.artifacts["samples_dir"]) / "seed_0")
        given_rows = heldout.tokens[torch.arange(20) % len(heldout)]  # held-out inputs, cycled
        parts, truth = layout.split(samples.tokens), layout.split(given_rows)
        other = "labels" if given == "image" else "image"
        assert torch.equal(parts[given], truth[given])
        assert parts[other].max() < layout.modalities[layout.index(other)].vocab_size  # no [MASK] left


def test_report_shows_miou(segmentation_study) -> None:
    report = (segmentation_study["root"] / "seg" / "report.md").read_text()
    assert "mIoU" in report
