"""One source of every default: base.yaml is the code's defaults, the trial's train section is
models.trainer.TrainConfig, every sampler gets options it accepts, and the hashes that name
stored checkpoints and ledgers are those of the code before the defaults moved."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import yaml

from harness.config.files import read_base
from harness.config.study import expand_grid, load_study, sample_random
from harness.config.trial import SamplerSection, TrainSection, TrialConfig, build_trial
from harness.generation.sampling import build_sampler
from models.samplers import SAMPLERS, EulerSampler
from models.schedulers import Linear
from models.trainer import TrainConfig

SEARCH_SPACES = Path(__file__).resolve().parents[1] / "search_spaces"


def test_base_yaml_is_every_default_of_the_code() -> None:
    """Every key and value, both ways: a default changed in either place fails here."""
    assert yaml.safe_load((SEARCH_SPACES / "base.yaml").read_text()) == TrialConfig().model_dump(mode="json")


def test_the_train_section_is_the_trainer_config_without_its_seed() -> None:
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    assert list(TrainSection.model_fields) == [n for n in names if n != "seed"]
    assert TrainConfig(**TrainSection().model_dump()) == TrainConfig()
    changed = TrainSection(
        steps=7, lr=0.5, betas=(0.8, 0.9), scheduler="polynomial", scheduler_params={"n": 2}
    )
    assert TrainConfig(seed=3, **changed.model_dump()) == TrainConfig(
        steps=7, lr=0.5, betas=(0.8, 0.9), scheduler="polynomial", scheduler_params={"n": 2.0}, seed=3
    )


def test_train_config_for_a_trial_carries_its_seed() -> None:
    from harness.run.store import train_config_for

    trial = build_trial({"seed": 5, "train": {"steps": 3}})
    assert train_config_for(trial) == TrainConfig(seed=5, steps=3)


@pytest.mark.parametrize(
    ("field", "value"),
    [("steps", 0), ("lr", 0.0), ("ema_decay", 1.5), ("t_eps", 1.0), ("lr_decay", "linear"),
     ("corruption", "bert"), ("scheduler", "cosin"), ("loss", "l2"), ("seed", 1),
     ("scheduler_params", {"power": 2})],
)  # fmt: skip
def test_the_train_section_refuses_what_the_trainer_would(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        build_trial({"train": {field: value}})


# ---- hashes ---------------------------------------------------------------------------------------
#
# Checkpoints are stored under TrialConfig.training_hash() and ledger records under trial_hash().
# The expected values were computed on commit 32fb5ec (before the harness was split into rooms,
# base.yaml became the code's defaults and small.yaml took its training scale): per study, the
# number of trials and the first 16 hex digits of
# sha256("\n".join(sorted("<training_hash> <trial_hash>" per trial))). No study was skipped: the
# paper/full studies name their shard folder's grid, vocabulary and classes, so they resolve
# without the data. Their training hashes changed once on purpose, when shard folders began
# to train streamed in seeded epoch orders (``data_order``): no checkpoint of theirs is reused.
#
# Changed on purpose since: the trials built from the `maskgit` and `discrete_interpolant` recipes
# (quickstart.yaml, paper/*/maskgit_vs_di.yaml, paper/*/main_result.yaml) name their count rule
# (sampler.maskgit.counts: maskgit, Google's; reference, the paper's code), so they sample other
# counts and their trial hashes moved; their training hashes, and every other trial, did not.

# (training_hash, trial_hash): base.yaml is the code's defaults, so its trial is the bare
# TrialConfig(), whose hashes on 32fb5ec these are; small.yaml holds the values base.yaml had then
# (the CPU-scale training of the embedded studies), so its trial keeps old base.yaml's hashes.
BASE_YAML_HASHES = ("4c010d3d5219b402", "2d8c9e70bd57f275")
SMALL_YAML_HASHES = ("86494407994e8902", "52778b0f62e850ce")

STUDY_HASHES = {
    "benchmark_check.yaml": (12, "2f22976a312cdc54"),
    "cost_aware.yaml": (40, "37f971f34632dbba"),
    "paper/full/ablation_scheduler.yaml": (15, "c08f7d94050083b7"),
    "paper/full/ablation_weighting.yaml": (6, "35fc06075f1b3126"),
    "paper/full/fig3_euler_cfg.yaml": (10, "671d28afcefd48a9"),
    "paper/full/fig3_euler_nfe.yaml": (32, "cdebac3af8538070"),
    "paper/full/fig3_euler_temperature.yaml": (12, "6c82bafd87f730e0"),
    "paper/full/fig3_mgm_cfg.yaml": (5, "47e7ef73164d9789"),
    "paper/full/fig3_mgm_nfe.yaml": (10, "ba85ef7d82908c9a"),
    "paper/full/fig3_mgm_temperature.yaml": (6, "9ef36386a07de24e"),
    "paper/full/learning_curve.yaml": (16, "afc328fa531d6473"),
    "paper/full/learning_curve_small.yaml": (6, "edc0a8e7dc23bb9d"),
    "paper/full/main_result.yaml": (4, "84a2e819a107fa57"),
    "paper/full/maskgit_vs_di.yaml": (9, "dfb98687b231cede"),
    "paper/mini/ablation_scheduler.yaml": (12, "2a4c03fcd918acee"),
    "paper/mini/ablation_weighting.yaml": (6, "b96407714abfb407"),
    "paper/mini/fig3_euler_cfg.yaml": (10, "291f2588397f7047"),
    "paper/mini/fig3_euler_nfe.yaml": (20, "c9a94251f9b39326"),
    "paper/mini/fig3_euler_temperature.yaml": (12, "5e3904fed142a49b"),
    "paper/mini/fig3_mgm_cfg.yaml": (5, "7a9e461c74e80403"),
    "paper/mini/fig3_mgm_nfe.yaml": (10, "aab30e5ad375c6cb"),
    "paper/mini/fig3_mgm_temperature.yaml": (6, "99beba7037a913cd"),
    "paper/mini/learning_curve.yaml": (20, "5afda10b3516c607"),
    "paper/mini/learning_curve_small.yaml": (4, "378df82b633c985a"),
    "paper/mini/main_result.yaml": (4, "fd8d872ea2a6172c"),
    "paper/mini/maskgit_vs_di.yaml": (9, "be14c98c326bb872"),
    "quickstart.yaml": (50, "6da58782d7191ace"),
    "samplers.yaml": (80, "623dd84a7887dd1e"),
    "segmentation_quickstart.yaml": (61, "8add19ac1a91af14"),
    "text_quickstart.yaml": (17, "709809519866c375"),
    "video_quickstart.yaml": (12, "00c858b7029d2c1d"),
}

# Three quickstart trials in full: (recipe, model.timestep, sampler.name, num_steps, temperature,
# cfg_scale) -> (training_hash, trial_hash).
QUICKSTART_HASHES = {
    (None, "explicit", "euler", 4, 0.8, 1.0): ("ace9287410838211", "53ac8728b27cd15b"),
    ("maskgit", "implicit", "maskgit", 16, 1.0, 1.0): ("38886670a2533f71", "c846129edc2fa4ff"),  # counts
    (None, "explicit", "class_marginals", 4, 0.8, 1.0): ("1221e2512d69d08a", "a1abc1c999ce4ea8"),
}


def _trials(study: str) -> list[TrialConfig]:
    spec = load_study(SEARCH_SPACES / study)
    return expand_grid(spec) if spec.search.algorithm == "grid" else sample_random(spec)


def test_base_yaml_trial_keeps_its_hashes() -> None:
    trial = build_trial(yaml.safe_load((SEARCH_SPACES / "base.yaml").read_text()))
    assert (trial.training_hash(), trial.trial_hash()) == BASE_YAML_HASHES
    assert trial == TrialConfig()


def test_small_yaml_trial_keeps_old_base_yaml_hashes() -> None:
    trial = build_trial(read_base(SEARCH_SPACES / "small.yaml"))
    assert (trial.training_hash(), trial.trial_hash()) == SMALL_YAML_HASHES


@pytest.mark.parametrize("study", sorted(STUDY_HASHES))
def test_every_study_keeps_its_trial_and_training_hashes(study: str) -> None:
    pairs = sorted(f"{t.training_hash()} {t.trial_hash()}" for t in _trials(study))
    digest = hashlib.sha256("\n".join(pairs).encode()).hexdigest()[:16]
    assert (len(pairs), digest) == STUDY_HASHES[study]


def test_quickstart_trials_keep_their_hashes() -> None:
    found = {}
    for t in _trials("quickstart.yaml"):
        s = t.sampler
        key = (t.recipe, t.model.timestep, s.name, s.num_steps, s.temperature, s.cfg_scale)
        if key in QUICKSTART_HASHES:
            found[key] = (t.training_hash(), t.trial_hash())
    assert found == QUICKSTART_HASHES


# ---- samplers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_registered_sampler_gets_options_it_accepts(name: str) -> None:
    sampler = build_sampler(name, Linear(), **SamplerSection(name=name).options())
    assert isinstance(sampler, SAMPLERS[name])


@dataclasses.dataclass(frozen=True)
class PlainEuler(EulerSampler):
    """A sampler registered without an options section of its own."""


def test_a_sampler_without_a_section_gets_the_common_options(monkeypatch) -> None:
    monkeypatch.setitem(SAMPLERS._entries, "plain_euler", PlainEuler)
    section = SamplerSection(name="plain_euler", num_steps=3, temperature=0.7)
    assert set(section.options()) == {"num_steps", "temperature", "top_k", "top_p", "exclude_mask"}
    sampler = build_sampler("plain_euler", Linear(), **section.options())
    assert isinstance(sampler, PlainEuler) and (sampler.num_steps, sampler.temperature) == (3, 0.7)
