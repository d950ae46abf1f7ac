"""``train.steps`` as a study axis: learning curves from one training.

With a learning rate that does not depend on the number of steps (constant after warm-up), a
training continues from the longest shorter finished training of its trajectory, and ends bit
for bit where a run of its own length from scratch ends; a cosine schedule shares nothing. A
grid study trains a trajectory's trainings as one job, shortest first, and its plan counts the
longest one's steps once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.config.study import load_study
from harness.config.trial import TrialConfig, build_trial
from harness.run.plan import make_plan, training_chains
from harness.run.store import CheckpointStore
from models.checkpoint import load_checkpoint

TINY = {
    "train": {"steps": 3, "batch_size": 8, "warmup_steps": 2, "checkpoint_every": 0},
    "model": {"size": "tiny"},
    "sampler": {"num_steps": 2},
    "eval": {"num_samples": 20, "batch_size": 20, "metrics": ["fid"]},
}


def tiny(**train) -> TrialConfig:
    d = {k: dict(v) for k, v in TINY.items()}
    d["train"].update(train)
    return build_trial(d)


def _same_state(a: Path, b: Path) -> None:
    x, y = load_checkpoint(a), load_checkpoint(b)
    assert x["step"] == y["step"]
    for part in ("model", "ema"):
        assert x[part].keys() == y[part].keys()
        for name in x[part]:
            assert torch.equal(x[part][name], y[part][name]), f"{part}.{name}"


def _steps(folder: Path) -> list[int]:
    lines = (folder / "curve.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if line.strip()]


def test_a_longer_run_continues_the_shorter_one_bit_for_bit(tmp_path: Path, one_thread) -> None:
    short, long = tiny(steps=3), tiny(steps=7)
    shared = CheckpointStore(tmp_path / "shared")
    shared.ensure(short)
    shared.ensure(long)
    h = long.training_hash()
    assert shared.continued_from(h) == {"training_hash": short.training_hash(), "steps": 3}
    alone = CheckpointStore(tmp_path / "alone")
    alone.ensure(long)
    assert alone.continued_from(h) is None
    _same_state(shared.checkpoint(h), alone.checkpoint(h))  # weights, EMA and step
    steps = _steps(shared.folder(h))
    assert steps == sorted(set(steps)) and 3 in steps and steps[-1] == 7  # the whole curve


def test_a_cosine_schedule_shares_nothing(tmp_path: Path, one_thread) -> None:
    short, long = tiny(steps=3, lr_decay="cosine"), tiny(steps=7, lr_decay="cosine")
    assert short.trajectory_hash() is None
    store = CheckpointStore(tmp_path)
    store.ensure(short)
    store.ensure(long)
    assert store.continued_from(long.training_hash()) is None
    assert _steps(store.folder(long.training_hash()))[0] < 3  # trained from its first step


def test_a_trajectory_is_everything_but_the_number_of_steps() -> None:
    base = tiny(steps=3)
    assert base.trajectory_hash() == tiny(steps=9, checkpoint_every=2).trajectory_hash()
    for other in (tiny(lr=2e-3), tiny(warmup_steps=1), tiny(batch_size=4), tiny(lr_decay="cosine")):
        assert other.trajectory_hash() != base.trajectory_hash()
    assert base.training_hash() != tiny(steps=9).training_hash()  # each length keeps its own folder


def test_the_longest_intact_shorter_run_is_the_start(tmp_path: Path, one_thread) -> None:
    store = CheckpointStore(tmp_path)
    two, four = tiny(steps=2), tiny(steps=4)
    store.ensure(two)
    store.ensure(four)
    assert store.shorter_run(tiny(steps=6)) == (four.training_hash(), 4)
    assert store.shorter_run(tiny(steps=4)) == (two.training_hash(), 2)  # shorter only, not itself
    assert store.shorter_run(tiny(steps=2)) is None
    store.checkpoint(four.training_hash()).write_bytes(b"damaged")  # its done.json's sha256 fails
    assert store.shorter_run(tiny(steps=6)) == (two.training_hash(), 2)


def test_chains_group_a_trajectory_shortest_first() -> None:
    trainings = [tiny(steps=7), tiny(steps=3), tiny(steps=5), tiny(steps=4, lr_decay="cosine")]
    trainings.append(tiny(steps=2, lr_decay="cosine"))
    chains = training_chains(trainings)
    assert sorted([t.train.steps for t in chain] for chain in chains) == [[2], [3, 5, 7], [4]]


def test_the_plan_counts_a_trajectorys_longest_run_once(tmp_path: Path, write_study) -> None:
    def plan(steps: list[int], decay: str):
        study = write_study(
            f"curve_{decay}_{len(steps)}",
            overrides={"train.lr_decay": decay},
            space={"train.steps": steps},
        )
        return make_plan(load_study(study), tmp_path / "study", CheckpointStore(tmp_path / "store"))

    curve, longest = plan([10, 20, 40], "constant"), plan([40], "constant")
    assert len(curve.pending_trainings) == 3
    assert curve.train_flops == pytest.approx(longest.train_flops)
    cosine, cosine_longest = plan([10, 20, 40], "cosine"), plan([40], "cosine")
    assert cosine.train_flops == pytest.approx(cosine_longest.train_flops * 70 / 40)


@pytest.mark.slow  # a study through Ray Tune
def test_a_study_over_train_steps_trains_its_trajectory_once(runs_root, write_study, ray_session) -> None:
    """Through Ray Tune: the trainings of [10, 20] are one job, the 20-step one continued from the
    10-step checkpoint; every snapshot is sampled."""
    from harness.runner import execute, prepare

    study = write_study("curve", overrides={"train.lr_decay": "constant"}, space={"train.steps": [10, 20]})
    run = prepare(study, runs_root)
    records = execute(run)
    assert sorted((r.status, r.config["train"]["steps"]) for r in records) == [
        ("finished", 10),
        ("finished", 20),
    ]
    tune_files = {p.name for p in (runs_root / "curve" / "ray").rglob("*") if p.is_file()}
    assert "result.json" in tune_files  # Tune reads it back when a fit ends: no warning per trial
    assert not {"progress.csv"} & tune_files and not any(n.startswith("events.out") for n in tune_files)
    short, long = sorted(run.plan.trainings, key=lambda t: t.train.steps)
    assert run.store.continued_from(long.training_hash()) == {
        "training_hash": short.training_hash(),
        "steps": 10,
    }
