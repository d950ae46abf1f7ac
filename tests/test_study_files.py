"""Study files (harness.config.study): refusals that name the field, variants crossed with the space
and the seeds, recipes under the overrides, bases that name bases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.config.recipes import RECIPES
from harness.config.study import DISTRIBUTIONS, expand_grid, load_study
from harness.config.trial import ConfigError

BASE_YAML = Path(__file__).resolve().parents[1] / "search_spaces" / "base.yaml"


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
