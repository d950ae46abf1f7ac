"""Task families (harness.tasks): which family a trial belongs to (from capabilities), each family's
refusals at validation naming the field, the joint family's model config and allowed codes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.config.trial import ConfigError, TrialConfig, build_trial
from harness.data.registry import load_dataset
from harness.data.types import DatasetShape
from harness.errors import UserError
from harness.evaluation import load_samples
from harness.run.store import CheckpointStore, model_config_for
from harness.run.trial import sample_to_disk
from harness.tasks import joint, text, video
from harness.tasks import registry as task_registry
from harness.tasks.base import Task
from harness.tasks.registry import GENERATION, task_for
from models.modalities import Layout

SMALL_CANVASES = {"name": "digit-canvases", "options": {"num_train": 12, "num_heldout": 6}}
SMALL_CAPTIONS = {"name": "captioned-canvases", "options": {"num_train": 12, "num_heldout": 6}}


def refusal(d: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        build_trial(d)
    return str(info.value)


# ---- the family from capabilities ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("d", "family"),
    [
        ({"data": {"name": "digits"}}, GENERATION),
        ({"data": SMALL_CAPTIONS}, GENERATION),  # captions unused: the scene class is the condition
        ({"data": SMALL_CAPTIONS, "model": {"text": {"encoder": "learned"}}}, text.TASK),
        ({"data": SMALL_CANVASES}, joint.TASK),
        ({"data": SMALL_CANVASES, "sampler": {"condition_on": "image"}}, joint.TASK),
        ({"data": {"name": "moving-digits"}, "eval": {"metrics": ["fvd"]}}, video.TASK),
    ],
)
def test_task_for_picks_the_family_from_capabilities(d: dict, family: Task) -> None:
    trial = build_trial(d)
    assert trial.task() is family and trial.task().name == family.name
    assert task_for(trial, trial.shape()) is family


def test_registered_families_have_distinct_names_and_the_base_family_is_not_among_them() -> None:
    names = [t.name for t in task_registry.TASKS.values()]
    assert sorted(names) == sorted(task_registry.TASKS) and len(set(names)) == len(names)
    assert {joint.TASK.name, text.TASK.name, video.TASK.name} <= set(names)
    assert GENERATION.name not in task_registry.TASKS


def test_two_families_claiming_one_trial_are_refused_naming_both() -> None:
    class Greedy(Task):
        name = "greedy unit family"

        def applies(self, trial: TrialConfig, shape: DatasetShape) -> bool:
            return bool(shape.modalities)

    trial = build_trial({"data": SMALL_CANVASES})
    task_registry.register(Greedy())
    try:
        with pytest.raises(UserError) as info:
            task_for(trial, trial.shape())
        assert "'greedy unit family'" in str(info.value) and repr(joint.TASK.name) in str(info.value)
        with pytest.raises(ValueError, match="registered twice"):
            task_registry.register(Greedy())
    finally:
        task_registry.unregister("greedy unit family")
    assert task_for(trial, trial.shape()) is joint.TASK


# ---- each family's refusals, at validation -------------------------------------------------------


@pytest.mark.parametrize(
    ("d", "words"),
    [
        (
            {"eval": {"metrics": ["miou"]}},
            ["eval.metrics", "miou", "sampler.condition_on: image", "'digits'"],
        ),
        (
            {"data": SMALL_CANVASES, "eval": {"metrics": ["miou"]}},
            ["eval.metrics", "miou", "sampler.condition_on: image", "None"],
        ),
        (
            {"data": SMALL_CANVASES, "eval": {"metrics": ["miou"]}, "sampler": {"condition_on": "labels"}},
            ["eval.metrics", "miou", "'labels'"],
        ),
        ({"eval": {"metrics": ["fid", "fvd"]}}, ["eval.metrics", "fvd", "video", "image"]),
        (
            {"data": {"name": "moving-digits"}, "eval": {"metrics": ["fid"]}},
            ["eval.metrics", "fid", "video"],
        ),
        (
            {"data": {"name": "moving-digits"}, "eval": {"metrics": ["is_mean"]}},
            ["eval.metrics", "is_mean"],
        ),
        (
            {
                "eval": {
                    "metrics": ["fid"],
                    "extra_protocols": [{"extractor": "digits-cnn", "metrics": ["fvd"]}],
                }
            },
            ["eval.extra_protocols[0].metrics", "fvd"],
        ),
        ({"model": {"text": {"encoder": "learned"}}}, ["model.text", "'digits'", "no captions"]),
        pytest.param(
            {"data": SMALL_CANVASES, "model": {"text": {"encoder": "learned"}}},
            ["model.text", "joint"],
            id="text-on-joint",
        ),
        ({"sampler": {"condition_on": "image"}}, ["sampler.condition_on", "'image'", "'digits'"]),
        (
            {
                "data": {"name": "moving-digits"},
                "eval": {"metrics": ["fvd"]},
                "sampler": {"condition_on": "image"},
            },
            ["sampler.condition_on", "'moving-digits'"],
        ),
        (
            {
                "data": SMALL_CAPTIONS,
                "model": {"text": {"encoder": "learned"}},
                "sampler": {"condition_on": "image"},
            },
            ["sampler.condition_on", "captions"],
        ),
        ({"data": SMALL_CANVASES, "sampler": {"condition_on": "depth"}}, ["sampler.condition_on", "'depth'"]),
        ({"model": {"patch": [3, 3]}}, ["model.patch", "[3, 3]", "[8, 8]"]),
        ({"data": SMALL_CANVASES, "model": {"patch": [2, 2, 2]}}, ["model.patch", "[2, 2, 2]"]),
        (
            {"data": SMALL_CANVASES, "eval": {"metrics": ["caption_agreement"]}},
            ["eval.metrics", "caption_agreement", "no classes"],
        ),
    ],
)
def test_a_family_refuses_what_it_would_fail_on_naming_the_field(d: dict, words: list[str]) -> None:
    message = refusal(d)
    assert all(w in message for w in words), message


def test_a_missing_modality_lists_the_datas_modalities() -> None:
    message = refusal({"data": SMALL_CANVASES, "sampler": {"condition_on": "depth"}})
    shape = build_trial({"data": SMALL_CANVASES}).shape()
    assert all(repr(m.name) in message for m in shape.modalities)


@pytest.mark.parametrize(
    "d",
    [
        {"data": SMALL_CANVASES, "eval": {"metrics": ["miou"]}, "sampler": {"condition_on": "image"}},
        {"data": SMALL_CANVASES, "eval": {"metrics": ["fid"]}, "sampler": {"condition_on": "labels"}},
        {
            "data": SMALL_CAPTIONS,
            "model": {"text": {"encoder": "learned"}},
            "eval": {"metrics": ["caption_agreement"]},
        },
        {"data": {"name": "moving-digits"}, "eval": {"metrics": ["fvd", "kid_mean"]}},
        {"data": {"name": "digits"}, "eval": {"metrics": ["fid", "caption_agreement"]}},  # its classes
    ],
)
def test_what_a_family_supports_is_accepted(d: dict) -> None:
    build_trial(d)


# ---- the joint family ----------------------------------------------------------------------------


def test_the_joint_model_config_has_one_segment_per_modality() -> None:
    trial = build_trial({"data": SMALL_CANVASES, "model": {"timestep": "explicit", "size": "small"}})
    shape = trial.shape()
    config = model_config_for(trial)
    assert config.modalities == shape.modalities and config.layout == Layout(shape.modalities)
    assert config.vocab_size == sum(m.vocab_size for m in shape.modalities) == shape.vocab_size
    assert config.grid == (sum(m.seq_len for m in shape.modalities),) == shape.grid
    assert (config.timestep, config.size, config.num_classes) == ("explicit", "small", shape.num_classes)
    assert config.num_ids == config.vocab_size + len(shape.modalities)  # a [MASK] per modality
    plain = model_config_for(build_trial({}))
    assert not plain.modalities and plain.num_ids == plain.vocab_size + 1


def expected_allowed(shape: DatasetShape) -> torch.Tensor:
    """(L, V): position i of modality m may take the codes [offset_m, offset_m + K_m) only."""
    allowed = torch.zeros(math.prod(shape.grid), shape.vocab_size, dtype=torch.bool)
    start = offset = 0
    for m in shape.modalities:
        allowed[start : start + m.seq_len, offset : offset + m.vocab_size] = True
        start, offset = start + m.seq_len, offset + m.vocab_size
    return allowed


@pytest.mark.parametrize("canvas", [16, 18])
def test_joint_allowed_tokens_restrict_each_position_to_its_modalitys_codes(canvas: int) -> None:
    data = {"name": "digit-canvases", "options": {"canvas": canvas, "num_train": 4, "num_heldout": 2}}
    trial = build_trial({"data": data})
    shape = trial.shape()
    allowed = trial.task().allowed_tokens(shape)
    assert allowed.dtype == torch.bool and torch.equal(allowed, expected_allowed(shape))
    assert GENERATION.allowed_tokens(build_trial({}).shape()) is None  # one modality: every code


def test_a_joint_baseline_keeps_to_each_modalitys_codes_and_the_given_modality(tmp_path: Path) -> None:
    """A data baseline needs no training: its samples go to disk through the task's allowed codes and
    the given modality is put back (its chance level at the task)."""
    trial = build_trial(
        {
            "data": SMALL_CANVASES,
            "sampler": {"name": "class_marginals", "condition_on": "image"},
            "eval": {"num_samples": 8, "batch_size": 8, "metrics": ["miou"]},
        }
    )
    samples = load_samples(sample_to_disk(trial, CheckpointStore(tmp_path), seed=0))
    shape, allowed = trial.shape(), expected_allowed(trial.shape())
    assert samples.tokens.shape == (8, math.prod(shape.grid))
    assert allowed.gather(1, samples.tokens.T.clamp(max=shape.vocab_size - 1)).T.all()  # in range
    assert int(samples.tokens.max()) < shape.vocab_size  # no [MASK] left
    heldout = load_dataset(trial.data.name, "heldout", **trial.data.options)
    layout = heldout.tokenizer.layout
    given = layout.split(heldout.tokens[torch.arange(8) % len(heldout)])["image"]
    assert torch.equal(layout.split(samples.tokens)["image"], given)


# ---- what validation accepts runs ---------------------------------------------------------------


def test_caption_agreement_on_a_class_conditional_trial_is_scored(
    tmp_path: Path, warm_eval_cache, one_thread
) -> None:
    """Accepted at validation, so scored after training: the samples carry their classes."""
    from harness.run.trial import run_trial

    trial = build_trial(
        {
            "train": {"steps": 3, "batch_size": 8, "warmup_steps": 0, "checkpoint_every": 0},
            "sampler": {"num_steps": 2},
            "eval": {"num_samples": 20, "batch_size": 20, "metrics": ["fid", "caption_agreement"]},
        }
    )
    record = run_trial(trial, store_root=tmp_path / "store", study_dir=tmp_path / "study")
    assert record.status == "finished", record.error
    assert 0.0 <= record.metrics["caption_agreement"] <= 1.0
    protocol = record.protocols["caption_agreement"]
    assert protocol["option.classifier_heldout_accuracy"] is not None


def test_an_extractor_of_the_wrong_kind_is_refused_at_validation() -> None:
    message = refusal({"eval": {"extractor": "moving-digits-cnn3d", "metrics": ["fid"]}})
    assert "eval.extractor" in message
