"""The checkpoint store (harness.run.store): one folder per training config, done.json written last,
the training curve, train once / reuse, the file lock between trials of one checkpoint."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from harness.config.trial import TrialConfig, build_trial
from harness.run import store as store_module
from harness.run.store import CheckpointStore, file_lock, model_config_for

TINY = {
    "train": {"steps": 3, "batch_size": 8, "warmup_steps": 0, "checkpoint_every": 0},
    "model": {"size": "tiny"},
    "sampler": {"num_steps": 2},
    "eval": {"num_samples": 20, "batch_size": 20, "metrics": ["fid"]},
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_trial(**sections) -> TrialConfig:
    d = {k: dict(v) for k, v in TINY.items()}
    for section, fields in sections.items():
        d.setdefault(section, {}).update(fields)
    return build_trial(d)


def fake_training(trial: TrialConfig, folder: Path, *args, **kwargs) -> None:
    """Stands in for train_into: leaves a checkpoint file (done.json records its size and sha256)."""
    (folder / "checkpoint.pt").write_bytes(b"a checkpoint of " + trial.training_hash().encode())


def curve_steps(folder: Path) -> list[int]:
    lines = (folder / "curve.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if line.strip()]


def test_ensure_writes_the_documented_folder_layout(tmp_path: Path) -> None:
    trial = tiny_trial()
    store = CheckpointStore(tmp_path / "store")
    h = trial.training_hash()
    path = store.ensure(trial)
    folder = store.folder(h)
    assert folder == tmp_path / "store" / h and path == store.checkpoint(h) == folder / "checkpoint.pt"
    assert {"config.json", "checkpoint.pt", "curve.jsonl", "done.json"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "config.json").read_text()) == trial.training_part()
    assert curve_steps(folder) == sorted(set(curve_steps(folder))) and curve_steps(folder)[-1] == 3
    assert store.training_seconds(h) > 0
    assert [p.name for p in (tmp_path / "store").iterdir()] == [h]  # nothing else in the root


def test_the_checkpoint_carries_the_model_config_of_the_trial(tmp_path: Path) -> None:
    from models.checkpoint import model_from_checkpoint

    trial = tiny_trial()
    net, _ = model_from_checkpoint(CheckpointStore(tmp_path).ensure(trial), map_location="cpu")
    assert net.config == model_config_for(trial)
    shape = trial.shape()
    assert (net.config.vocab_size, net.config.grid, net.config.num_classes) == (
        shape.vocab_size,
        shape.grid,
        shape.num_classes,
    )


def test_is_done_only_once_done_json_is_written(tmp_path: Path) -> None:
    trial = tiny_trial()
    store = CheckpointStore(tmp_path)
    h = trial.training_hash()
    seen: list[tuple[bool, bool]] = []
    assert not store.is_done(h)
    store.ensure(trial, on_log=lambda step, metrics: seen.append((store.is_done(h), step)))
    assert seen and not any(done for done, _ in seen)  # never done while training
    assert store.is_done(h)
    (store.folder(h) / "done.json").unlink()
    assert store.checkpoint(h).is_file() and not store.is_done(h)  # a checkpoint alone is not done


def test_curve_keeps_the_last_value_of_a_redone_step_in_step_order(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    assert store.curve("absent") == []
    folder = store.folder("h")
    folder.mkdir(parents=True)
    lines = [
        {"step": 1, "metrics": {"train/loss": 3.0}},
        {"step": 2, "metrics": {"train/loss": 2.0}},
        {"step": 3, "metrics": {"train/loss": 1.5}},
        {"step": 2, "metrics": {"train/loss": 2.5}},  # resumed from step 1: step 2 redone
        {"step": 3, "metrics": {"train/loss": 1.25}},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n\n"
    (folder / "curve.jsonl").write_text(text)
    assert store.curve("h") == [
        (1, {"train/loss": 3.0}),
        (2, {"train/loss": 2.5}),
        (3, {"train/loss": 1.25}),
    ]


def test_an_interrupted_training_resumes_and_its_curve_has_each_step_once(tmp_path: Path) -> None:
    trial = tiny_trial(train={"steps": 4, "checkpoint_every": 2})
    store = CheckpointStore(tmp_path)
    h = trial.training_hash()

    def crash_at_3(step: int, metrics: dict) -> None:
        if step == 3:
            raise KeyboardInterrupt("killed after step 3 was logged, before its checkpoint")

    with pytest.raises(KeyboardInterrupt):
        store.ensure(trial, on_log=crash_at_3)
    assert not store.is_done(h) and store.checkpoint(h).is_file()
    assert curve_steps(store.folder(h)) == [1, 2, 3]
    store.ensure(trial)  # continues from the step-2 checkpoint: step 3 is redone
    assert store.is_done(h)
    raw = [json.loads(line) for line in (store.folder(h) / "curve.jsonl").read_text().splitlines()]
    assert [e["step"] for e in raw] == [1, 2, 3, 3, 4]
    curve = store.curve(h)
    assert [step for step, _ in curve] == [1, 2, 3, 4]
    assert curve[2][1] == raw[3]["metrics"]  # the redone step's last value


def test_ensure_trains_once_and_a_second_call_reuses_it(tmp_path: Path, monkeypatch) -> None:
    trial = tiny_trial()
    store = CheckpointStore(tmp_path)
    calls = []
    real = store_module.train_into
    monkeypatch.setattr(store_module, "train_into", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = store.ensure(trial)
    before = {
        p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.folder(trial.training_hash()).iterdir()
    }
    # Another trial of the same training config (only a sampling setting differs) reuses it.
    other = tiny_trial(sampler={"temperature": 0.5})
    assert other.training_hash() == trial.training_hash() and other.trial_hash() != trial.trial_hash()
    assert store.ensure(other) == first and store.ensure(trial) == first
    after = {
        p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.folder(trial.training_hash()).iterdir()
    }
    assert len(calls) == 1 and after == before


def test_a_different_training_config_gets_its_own_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(store_module, "train_into", fake_training)
    store = CheckpointStore(tmp_path)
    trials = [tiny_trial(), tiny_trial(train={"lr": 5e-4}), tiny_trial(model={"timestep": "explicit"})]
    for trial in trials:
        store.ensure(trial)
    assert len({t.training_hash() for t in trials}) == 3
    assert {p.name for p in tmp_path.iterdir()} == {t.training_hash() for t in trials}


def test_a_launcher_trains_instead_and_done_json_follows_it(tmp_path: Path, monkeypatch) -> None:
    def no_local_training(*args, **kwargs):
        raise AssertionError("a launcher was given: nothing trains in this process")

    monkeypatch.setattr(store_module, "train_into", no_local_training)
    store = CheckpointStore(tmp_path)
    trial = tiny_trial()
    launched = []

    def launcher(t: TrialConfig, folder: Path) -> None:
        assert not store.is_done(t.training_hash())
        assert (folder / "config.json").is_file()  # written before the launch
        launched.append((t, folder))
        fake_training(t, folder)

    store.ensure(trial, launcher=launcher)
    assert launched == [(trial, store.folder(trial.training_hash()))]
    assert store.is_done(trial.training_hash())


def _ensure_in_thread(store: CheckpointStore, trial: TrialConfig, out: list) -> threading.Thread:
    thread = threading.Thread(target=lambda: out.append(store.ensure(trial)), daemon=True)
    thread.start()
    return thread


def test_a_trial_waits_on_the_lock_and_reuses_what_the_holder_trained(tmp_path: Path, monkeypatch) -> None:
    trainings = []
    monkeypatch.setattr(store_module, "train_into", lambda trial, folder, *a, **k: trainings.append(folder))
    store = CheckpointStore(tmp_path)
    trial = tiny_trial()
    folder = store.folder(trial.training_hash())
    out: list[Path] = []
    with file_lock(folder / "lock"):  # another trial is training this checkpoint
        thread = _ensure_in_thread(store, trial, out)
        time.sleep(0.5)
        assert thread.is_alive() and not out  # it waits instead of training alongside
        fake_training(trial, folder)  # the holder finishes
        store.mark_done(trial.training_hash(), 1.0)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert out == [store.checkpoint(trial.training_hash())] and trainings == []


def test_concurrent_trials_of_one_checkpoint_train_it_once(tmp_path: Path, monkeypatch) -> None:
    trainings = []

    def slow_training(trial, folder, *args, **kwargs) -> None:
        trainings.append(folder)
        time.sleep(0.3)
        fake_training(trial, folder)

    monkeypatch.setattr(store_module, "train_into", slow_training)
    store = CheckpointStore(tmp_path)
    trial = tiny_trial()
    out: list[Path] = []
    threads = [_ensure_in_thread(store, t, out) for t in (trial, tiny_trial(sampler={"temperature": 0.7}))]
    for thread in threads:
        thread.join(timeout=30)
    assert len(trainings) == 1 and len(out) == 2 and len(set(out)) == 1
