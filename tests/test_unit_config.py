"""The typed trial config and study files (harness.config): refusals that name the field, the value and
the alternatives; what the training and trial hashes depend on; variants, recipes and the space."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.config.recipes import RECIPES
from harness.config.study import DISTRIBUTIONS, expand_grid, load_study
from harness.config.trial import OMITTED_AT_DEFAULT, ConfigError, TrialConfig, build_trial, check_key
from harness.data.registry import DATASETS
from harness.evaluation import EXTRACTORS, METRICS
from harness.generation.baselines import BASELINES
from harness.run.store import model_config_for
from models.backbone import SIZE_PRESETS
from models.losses import LOSSES
from models.samplers import RANDOMIZATIONS, SAMPLERS, UNMASK_SCHEDULES
from models.schedulers import SCHEDULERS

BASE_YAML = Path(__file__).resolve().parents[1] / "search_spaces" / "base.yaml"


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


# ---- study files ---------------------------------------------------------------------------------


def write_study(folder: Path, name: str = "s", **fields: Any) -> Path:
    fields.setdefault("base", str(BASE_YAML))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **fields}, sort_keys=False))
    return path


def study_refusal(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_study(path)
    return str(info.value)


def test_an_unknown_study_field_is_named_with_its_closest(tmp_path: Path) -> None:
    message = study_refusal(write_study(tmp_path, varients={"a": {}}))
    assert "varients" in message and "did you mean 'variants'" in message
    message = study_refusal(write_study(tmp_path, resources={"cpus": 2}))
    assert "resources.cpus" in message and "did you mean 'cpu'" in message


@pytest.mark.parametrize(
    ("axis", "words"),
    [
        ({"normal": [0.5, 1.5]}, ["space.sampler.temperature", "unknown distribution 'normal'"]),
        ({"uniform": [0.5]}, ["space.sampler.temperature.uniform", "[low, high]"]),
        ({"uniform": []}, ["space.sampler.temperature.uniform", "non-empty list"]),
        ({"uniform": [0.5, 1.5], "choice": [1.0]}, ["space.sampler.temperature", "expected a list (grid)"]),
        (0.5, ["space.sampler.temperature", "expected a list (grid)"]),
    ],
)
def test_a_bad_space_distribution_is_named(tmp_path: Path, axis: Any, words: list[str]) -> None:
    path = write_study(
        tmp_path, space={"sampler.temperature": axis}, search={"algorithm": "random", "num_trials": 2}
    )
    message = study_refusal(path)
    assert all(w in message for w in words), message
    if "unknown distribution" in message:
        assert all(repr(kind) in message for kind in DISTRIBUTIONS)


def test_a_space_value_is_probed_at_its_bounds(tmp_path: Path) -> None:
    path = write_study(
        tmp_path,
        space={"sampler.num_steps": {"randint": [0, 4]}},
        search={"algorithm": "random", "num_trials": 2},
    )
    message = study_refusal(path)
    assert "sampler.num_steps" in message and "= 0" in message


def test_variants_cross_the_space_and_the_seeds_and_their_pins_win(tmp_path: Path) -> None:
    path = write_study(
        tmp_path,
        variants={"plain": {}, "mgit": {"sampler.name": "maskgit"}, "pinned": {"sampler.num_steps": 5}},
        space={"sampler.num_steps": [2, 3]},
        seeds=[0, 1],
    )
    trials = expand_grid(load_study(path))
    by_sampler: dict[tuple, int] = {}
    for t in trials:
        by_sampler[(t.sampler.name, t.sampler.num_steps)] = (
            by_sampler.get((t.sampler.name, t.sampler.num_steps), 0) + 1
        )
    # plain and mgit: 2 settings x 2 seeds each; pinned: the space collapses to its pin, x 2 seeds
    assert by_sampler == {
        ("euler", 2): 2,
        ("euler", 3): 2,
        ("maskgit", 2): 2,
        ("maskgit", 3): 2,
        ("euler", 5): 2,
    }
    assert len({t.trial_hash() for t in trials}) == len(trials) == 10
    assert len({t.training_hash() for t in trials}) == 2  # only the seed is a training axis here


def test_duplicate_trials_of_two_variants_are_one_trial(tmp_path: Path) -> None:
    path = write_study(
        tmp_path, variants={"a": {}, "b": {"sampler.name": "euler"}}, space={"sampler.num_steps": [2, 3]}
    )
    assert len(expand_grid(load_study(path))) == 2


def test_a_recipe_variant_sits_under_the_overrides_and_the_variants_own_keys(tmp_path: Path) -> None:
    recipe = RECIPES["maskgit"].overrides
    path = write_study(
        tmp_path,
        overrides={"sampler.num_steps": 3},
        variants={"m": {"recipe": "maskgit", "sampler.temperature": 0.7}},
    )
    (trial,) = expand_grid(load_study(path))
    assert trial.recipe == "maskgit"
    assert (
        trial.sampler.name == recipe["sampler.name"] and trial.train.corruption == recipe["train.corruption"]
    )
    assert trial.sampler.num_steps == 3 != recipe["sampler.num_steps"]  # the study's override wins
    assert trial.sampler.temperature == 0.7 != recipe["sampler.temperature"]  # the variant's key wins


def test_a_variant_naming_an_unknown_recipe_or_key_is_refused(tmp_path: Path) -> None:
    message = study_refusal(write_study(tmp_path, variants={"m": {"recipe": "maskgt"}}))
    assert "variants.m.recipe" in message and "did you mean 'maskgit'" in message
    assert all(repr(name) in message for name in RECIPES)
    message = study_refusal(write_study(tmp_path, variants={"m": {"sampler.temprature": 0.7}}))
    assert "'sampler.temprature'" in message and "did you mean 'sampler.temperature'" in message
    message = study_refusal(write_study(tmp_path, variants={"m": {"train.steps": "many"}}))
    assert "train.steps" in message and "'many'" in message


def test_a_bad_variant_pin_names_its_variant(tmp_path: Path) -> None:
    path = write_study(tmp_path, variants={"good": {}, "bad": {"train.steps": "many"}})
    message = study_refusal(path)
    assert "train.steps" in message and "bad" in message


def test_a_grid_whose_every_trial_is_valid_is_accepted(tmp_path: Path) -> None:
    path = write_study(
        tmp_path,
        metric="miou",
        overrides={
            "data.name": "digit-canvases",
            "data.options": {"num_train": 4, "num_heldout": 2},
            "eval.metrics": ["miou"],
        },
        space={"sampler.condition_on": ["image"], "sampler.num_steps": [2, 3]},
    )
    for trial in expand_grid(load_study(path)):
        assert trial.sampler.condition_on == "image"


def test_the_study_metric_must_be_scored(tmp_path: Path) -> None:
    message = study_refusal(write_study(tmp_path, metric="precision", overrides={"eval.metrics": ["fid"]}))
    assert "'precision'" in message and "eval.metrics" in message
    message = study_refusal(write_study(tmp_path, metric="fidelity"))
    assert "'fidelity'" in message and "'fid'" in message


def test_a_base_can_name_its_own_base_and_a_cycle_is_refused(tmp_path: Path) -> None:
    (tmp_path / "family.yaml").write_text(yaml.safe_dump({"base": str(BASE_YAML), "train": {"steps": 9}}))
    (tmp_path / "member.yaml").write_text(
        yaml.safe_dump({"base": "family.yaml", "sampler": {"num_steps": 3}})
    )
    (trial,) = expand_grid(load_study(write_study(tmp_path, base="member.yaml")))
    assert trial.train.steps == 9 and trial.sampler.num_steps == 3
    assert trial.train.lr == yaml.safe_load(BASE_YAML.read_text())["train"]["lr"]  # the rest from base.yaml
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"base": "b.yaml"}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"base": "a.yaml"}))
    message = study_refusal(write_study(tmp_path, base="a.yaml"))
    assert "cycle" in message and "a.yaml" in message and "b.yaml" in message


def test_a_missing_or_malformed_file_is_named(tmp_path: Path) -> None:
    message = study_refusal(write_study(tmp_path, base="nowhere.yaml"))
    assert "nowhere.yaml" in message and "does not exist" in message
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    message = study_refusal(path)
    assert "list.yaml" in message and "mapping" in message
