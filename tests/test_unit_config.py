"""The typed trial config (harness.config.trial): refusals that name the field, the value and the
alternatives; what the training and trial hashes depend on. Study files: test_study_files.py."""

from __future__ import annotations

from typing import Any

import pytest

from harness.config.recipes import RECIPES
from harness.config.trial import OMITTED_AT_DEFAULT, ConfigError, TrialConfig, build_trial, check_key
from harness.data.registry import DATASETS
from harness.evaluation import EXTRACTORS, METRICS
from harness.generation.baselines import BASELINES
from harness.run.store import model_config_for
from models.backbone import SIZE_PRESETS
from models.losses import LOSSES
from models.samplers import RANDOMIZATIONS, SAMPLERS, UNMASK_SCHEDULES
from models.schedulers import SCHEDULERS


def refusal(d: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        build_trial(d)
    return str(info.value)


def nested(key: str, value: Any) -> dict[str, Any]:
    """{"a": {"b": value}} for "a.b"."""
    out: dict[str, Any] = {}
    *parents, leaf = key.split(".")
    d = out
    for part in parents:
        d = d.setdefault(part, {})
    d[leaf] = value
    return out


# ---- unknown keys, wrong types, unknown names ----------------------------------------------------


@pytest.mark.parametrize(
    ("key", "closest"),
    [
        ("train.stepz", "train.steps"),
        ("sampler.maskgit.shedule", "sampler.maskgit.schedule"),
        ("eval.metric", "eval.metrics"),
        ("modle.size", "model.size"),
    ],
)
def test_an_unknown_key_is_named_with_its_closest_valid_key(key: str, closest: str) -> None:
    message = refusal(nested(key, 1))
    assert f"unknown config key {key!r}" in message and f"did you mean {closest!r}" in message


def test_open_sections_are_checked_by_their_owner_not_by_the_key_list() -> None:
    for key in ("data.options.anything", "train.scheduler_params.p", "model.text.encoder"):
        check_key(key)  # no error: the dataset, the scheduler and the text config check these
    message = refusal({"data": {"name": "digits", "options": {"sed": 1}}})
    assert "data.options.sed" in message and "did you mean 'seed'" in message


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("train.steps", "abc", ["train.steps", "'abc'", "integer"]),
        ("train.steps", 0, ["train.steps", "0", "greater than or equal to 1"]),
        ("sampler.temperature", "hot", ["sampler.temperature", "'hot'"]),
        ("sampler.top_p", 1.5, ["sampler.top_p", "1.5"]),
        ("train.betas", [0.9], ["train.betas", "[0.9]"]),
        ("eval.sample_seeds", "x", ["eval.sample_seeds", "'x'"]),
        ("train.corruption", "bernoulli", ["train.corruption", "'bernoulli'", "'interpolant'", "'maskgit'"]),
        ("model.timestep", 1, ["model.timestep", "'explicit'", "'implicit'"]),
    ],
)
def test_a_wrong_value_names_the_field_and_the_value(key: str, value: Any, words: list[str]) -> None:
    message = refusal(nested(key, value))
    assert all(w in message for w in words), message


def test_every_bad_field_is_named_at_once() -> None:
    message = refusal({"train": {"steps": "abc", "lr": -1.0}, "sampler": {"num_steps": 0}})
    assert "train.steps = 'abc'" in message and "train.lr = -1.0" in message
    assert "sampler.num_steps = 0" in message


@pytest.mark.parametrize(
    ("key", "bad", "known", "closest"),
    [
        ("data.name", "digitz", DATASETS, "digits"),
        ("sampler.name", "eulr", [*SAMPLERS, *BASELINES], "euler"),
        ("train.scheduler", "linaer", SCHEDULERS, "linear"),
        ("train.loss", "masked_cee", LOSSES, "masked_ce"),
        ("model.size", "tinyy", SIZE_PRESETS, "tiny"),
        ("eval.extractor", "digits-cnnn", EXTRACTORS, "digits-cnn"),
        ("sampler.maskgit.schedule", "cosin", UNMASK_SCHEDULES, "cosine"),
        ("sampler.maskgit.randomization", "linearr", RANDOMIZATIONS, "linear"),
        ("recipe", "maskgitt", RECIPES, "maskgit"),
    ],
)
def test_an_unknown_registry_name_lists_every_known_one(key: str, bad: str, known, closest: str) -> None:
    message = refusal(nested(key, bad))
    assert key in message and repr(bad) in message
    assert all(repr(name) in message for name in known), message
    assert f"did you mean {closest!r}" in message


def test_an_unknown_metric_lists_the_metric_registry() -> None:
    message = refusal({"eval": {"metrics": ["fid", "fidd"]}})
    assert "eval.metrics" in message and "'fidd'" in message and "did you mean 'fid'" in message
    assert all(repr(name) in message for name in METRICS.names())
    message = refusal({"eval": {"extra_protocols": [{"extractor": "digits-cnn", "metrics": ["kid"]}]}})
    assert "eval.extra_protocols.0.metrics" in message and "'kid'" in message


# ---- what the hashes depend on -------------------------------------------------------------------


def test_a_trial_round_trips_through_its_json_dump() -> None:
    trial = build_trial(
        {"seed": 3, "train": {"steps": 7, "lr": 5e-4}, "sampler": {"name": "maskgit", "num_steps": 4}}
    )
    again = build_trial(trial.model_dump(mode="json"))
    assert again == trial
    assert (again.trial_hash(), again.training_hash()) == (trial.trial_hash(), trial.training_hash())


def test_hashes_do_not_depend_on_key_order() -> None:
    a = build_trial({"train": {"steps": 7, "lr": 5e-4}, "sampler": {"num_steps": 3}, "seed": 1})
    b = build_trial({"seed": 1, "sampler": {"num_steps": 3}, "train": {"lr": 5e-4, "steps": 7}})
    assert a.trial_hash() == b.trial_hash() and a.training_hash() == b.training_hash()


def test_the_training_part_is_seed_data_model_train() -> None:
    trial = build_trial({})
    assert set(trial.training_part()) == set(TrialConfig.TRAINING_KEYS)
    baseline = build_trial({"sampler": {"name": next(iter(BASELINES))}})
    assert set(baseline.training_part()) == {"seed", "data"}


@pytest.mark.parametrize(
    "change",
    [
        {"sampler": {"temperature": 0.7}},
        {"sampler": {"num_steps": 3}},
        {"sampler": {"name": "maskgit"}},
        {"sampler": {"cfg_scale": 2.0}},
        {"eval": {"num_samples": 40}},
        {"eval": {"metrics": ["fid"]}},
    ],
)
def test_a_sampling_change_keeps_the_training_hash_and_changes_the_trial_hash(change: dict) -> None:
    base, changed = build_trial({}), build_trial(change)
    assert changed.training_hash() == base.training_hash()
    assert changed.trial_hash() != base.trial_hash()


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 1},
        {"train": {"lr": 5e-4}},
        {"train": {"steps": 7}},
        {"train": {"corruption": "maskgit"}},
        {"model": {"timestep": "explicit"}},
        {"model": {"size": "small"}},
        {"data": {"options": {"num_heldout": 100}}},
    ],
)
def test_a_training_change_changes_both_hashes(change: dict) -> None:
    base, changed = build_trial({}), build_trial(change)
    assert changed.training_hash() != base.training_hash()
    assert changed.trial_hash() != base.trial_hash()


def test_a_baseline_ignores_the_model_the_training_and_the_sampler_options() -> None:
    name = next(iter(BASELINES))
    plain = build_trial({"sampler": {"name": name}})
    for change in (
        {"model": {"size": "small", "timestep": "explicit"}},
        {"train": {"steps": 7, "lr": 5e-4}},
        {"sampler": {"temperature": 0.5, "num_steps": 3}},
    ):
        other = build_trial({**change, "sampler": {"name": name, **change.get("sampler", {})}})
        assert other.trial_hash() == plain.trial_hash(), change
        assert other.training_hash() == plain.training_hash(), change
    assert build_trial({"sampler": {"name": name}, "seed": 1}).trial_hash() != plain.trial_hash()
    assert build_trial({"sampler": {"name": name}, "eval": {"num_samples": 40}}).trial_hash() != (
        plain.trial_hash()
    )


def test_the_recipe_is_a_label_that_changes_no_hash() -> None:
    overrides = RECIPES["maskgit"].overrides
    d: dict[str, Any] = {}
    for key, value in overrides.items():
        section, *rest = key.split(".")
        target = d.setdefault(section, {})
        for part in rest[:-1]:
            target = target.setdefault(part, {})
        target[rest[-1]] = value
    labelled, unlabelled = build_trial({**d, "recipe": "maskgit"}), build_trial(d)
    assert labelled.recipe == "maskgit"
    assert labelled.trial_hash() == unlabelled.trial_hash()
    assert labelled.training_hash() == unlabelled.training_hash()


@pytest.mark.parametrize(
    ("key", "other"),
    [
        ("train.tf32", True),
        ("train.activation_checkpointing", True),
        ("train.fused_adamw", False),
        ("model.patch", [2, 2]),
    ],
)
def test_a_field_added_later_changes_no_hash_at_its_default(key: str, other: Any) -> None:
    assert key in OMITTED_AT_DEFAULT
    plain = build_trial({})
    at_default = build_trial(nested(key, OMITTED_AT_DEFAULT[key]))
    assert at_default.training_hash() == plain.training_hash()
    assert at_default.trial_hash() == plain.trial_hash()
    changed = build_trial(nested(key, other))
    assert changed.training_hash() != plain.training_hash()


# ---- what build_trial accepts, the model can be built from -------------------------------------


@pytest.mark.parametrize(
    "d",
    [
        pytest.param(
            {"model": {"width": 30}},
            id="width-not-divisible-by-heads",
        ),
        pytest.param(
            {"data": {"name": "digit-canvases"}, "model": {"patch": [3, 3]}},
            id="joint-patch-does-not-tile",
        ),
    ],
)
def test_a_trial_build_trial_accepts_has_a_buildable_model(d: dict) -> None:
    try:
        trial = build_trial(d)
    except ConfigError:
        return  # refused where it is read: fine
    model_config_for(trial)  # must not raise after validation passed


@pytest.mark.parametrize(
    "d",
    [
        {"model": {"size": "small", "patch": [2, 2]}},
        {"data": {"name": "digit-canvases"}, "model": {"patch": [2, 2]}},
        {"data": {"name": "moving-digits"}, "model": {"patch": [1, 2, 2]}, "eval": {"metrics": ["fvd"]}},
        {"model": {"width": 32, "heads": 4}},
    ],
)
def test_a_valid_model_section_is_accepted_and_built(d: dict) -> None:
    config = model_config_for(build_trial(d))
    assert config.patch == (tuple(d["model"]["patch"]) if "patch" in d["model"] else None)


@pytest.mark.parametrize("count", [2, 3, 4, 5])
@pytest.mark.parametrize("metric", ["fid", "kid_mean", "precision", "recall", "is_mean"])
def test_a_protocol_scores_at_least_the_samples_each_metric_is_defined_on(count: int, metric: str) -> None:
    """Precision and recall need each sample's k-th neighbour other than itself (k = 3): four
    samples, and four reference images in an extra protocol's subset; the others two."""
    need = METRICS[metric].min_count
    assert need == (4 if metric in ("precision", "recall") else 2)
    extra = {"extractor": "digits-cnn", "metrics": [metric], "num_reference": count}
    for eval_section in (
        {"num_samples": count, "batch_size": count, "metrics": [metric]},
        {"metrics": ["fid"], "extra_protocols": [extra]},
    ):
        if count >= need:
            build_trial({"eval": eval_section})
        else:
            with pytest.raises(ConfigError, match=f"{count}; expected at least {need}, the fewest {metric}"):
                build_trial({"eval": eval_section})
