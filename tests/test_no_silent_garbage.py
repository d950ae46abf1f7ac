"""No silent garbage: a number that comes from a diverged or broken run is never recorded.

A training whose loss or gradient norm stops being finite raises (on every rank) and writes no
checkpoint from that step; the evaluator refuses non-finite samples and non-finite metric
values; a trial record holding a NaN or an infinity cannot be built or written, and strict
JSON is read back strictly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import socket
from collections.abc import Iterator
from pathlib import Path

import divergence_ranks
import pytest
import torch
from divergence_ranks import MODEL, tiny_config, tiny_data

from harness.config.trial import build_trial
from harness.evaluation import FID, METRICS, Evaluator, MetricResult
from harness.run import trial as trial_module
from harness.run.ledger import Ledger, TrialRecord, nonfinite_fields, strict_loads
from harness.run.store import CheckpointStore
from harness.run.trial import run_trial
from models.checkpoint import load_checkpoint
from models.trainer import TrainingDivergedError, init_state, save_state, train, train_step


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --- training ---------------------------------------------------------------------------------------


def test_an_infinite_lr_stops_the_training_at_the_step_whose_loss_is_nan(tmp_path):
    """lr = inf turns every weight into NaN or inf in step 1: step 2's loss is NaN. The check
    runs only at the end (log_every > steps) and still names step 2, and nothing is saved."""
    tokens, labels = tiny_data()
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(TrainingDivergedError) as caught:
        train(MODEL, tiny_config(lr=math.inf), tokens, labels, checkpoint_path=path, log_every=50)
    message = str(caught.value)
    assert caught.value.step == 2
    assert message.startswith("training diverged at step 2: loss nan (last finite loss ")
    assert message.endswith(" at step 1)")
    assert not path.exists()


def test_a_huge_lr_is_caught_by_the_gradient_norm_and_the_last_checkpoint_is_finite(tmp_path):
    """lr = 1e30 keeps the loss finite (about 1e31) but the gradient norm overflows at step 2;
    the checkpoint of step 1 (every step is a checkpoint step) is the last one written."""
    tokens, labels = tiny_data()
    path = tmp_path / "checkpoint.pt"
    logged = []
    with pytest.raises(TrainingDivergedError, match=r"diverged at step 2: gradient norm inf \(last finite"):
        train(
            MODEL,
            tiny_config(lr=1e30, checkpoint_every=1),
            tokens,
            labels,
            checkpoint_path=path,
            log=lambda step, metrics: logged.append((step, metrics["train/loss"])),
            log_every=1,
        )
    assert [step for step, _ in logged] == [1] and math.isfinite(logged[0][1])
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 1
    for part in ("model", "ema"):
        assert all(torch.isfinite(v).all() for v in ckpt[part].values() if v.is_floating_point())


def test_a_nan_weight_stops_the_first_step_and_the_checkpoint_is_left_alone(tmp_path):
    tokens, labels = tiny_data()
    config = tiny_config(lr=1e-3, checkpoint_every=1)
    state = init_state(MODEL, config)
    with torch.no_grad():
        next(state.model.parameters()).view(-1)[0] = math.nan
    path = tmp_path / "checkpoint.pt"
    save_state(path, state, config)  # step 0: train() resumes from it
    with pytest.raises(
        TrainingDivergedError, match=r"diverged at step 1: loss nan \(no finite step before it\)"
    ):
        train(MODEL, config, tokens, labels, checkpoint_path=path)
    assert load_checkpoint(path)["step"] == 0


def test_a_non_finite_ema_is_never_saved(tmp_path):
    """The EMA never enters the loss: its weights are counted before the save."""
    tokens, labels = tiny_data()
    config = tiny_config(lr=1e-3)
    state = init_state(MODEL, config)
    with torch.no_grad():
        next(state.ema.parameters()).view(-1)[:3] = math.inf
    path = tmp_path / "checkpoint.pt"
    save_state(path, state, config)
    with pytest.raises(
        TrainingDivergedError, match=r"diverged at step 5: 3 non-finite values in the weights"
    ):
        train(MODEL, config, tokens, labels, checkpoint_path=path)
    assert load_checkpoint(path)["step"] == 0


def test_train_step_alone_raises():
    tokens, labels = tiny_data()
    config = tiny_config(lr=math.inf)
    state, scheduler = init_state(MODEL, config), config.build_scheduler()
    assert math.isfinite(train_step(state, tokens, labels, config, scheduler, "cpu"))
    with pytest.raises(TrainingDivergedError, match="diverged at step 2: loss nan"):
        train_step(state, tokens, labels, config, scheduler, "cpu")


def test_every_data_parallel_rank_stops_at_the_same_step(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(divergence_ranks.run_rank, args=(port, str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    assert ranks[0][0] == "training diverged at step 2: loss nan (last finite loss 2 at step 1)"
    assert ranks[0][1].startswith("training diverged at step 2: loss nan (last finite loss ")


def _tiny_trial(**train):
    return build_trial(
        {
            "train": {"steps": 5, "batch_size": 8, "warmup_steps": 0, "checkpoint_every": 0, **train},
            "model": {"size": "tiny"},
            "sampler": {"num_steps": 2},
            "eval": {"num_samples": 20, "batch_size": 20},
        }
    )


def test_a_diverged_trial_is_failed_and_its_checkpoint_is_never_done(tmp_path):
    trial = _tiny_trial(lr=1e30)
    record = run_trial(trial, store_root=tmp_path / "store", study_dir=tmp_path / "study")
    assert record.status == "failed" and not record.metrics
    assert "TrainingDivergedError: training diverged at step 2: gradient norm inf" in record.error
    store = CheckpointStore(tmp_path / "store")
    assert not store.is_done(trial.training_hash())
    assert not (store.folder(trial.training_hash()) / "done.json").exists()
    assert not (store.folder(trial.training_hash()) / "samples").exists()
    text = Ledger(tmp_path / "study").path(trial.trial_hash()).read_text()
    assert strict_loads(text)["status"] == "failed"  # strict JSON: no NaN, no Infinity
    curve = (store.folder(trial.training_hash()) / "curve.jsonl").read_text()
    assert [strict_loads(line)["step"] for line in curve.splitlines()] == [1]


def test_a_trial_whose_metric_is_nan_is_recorded_failed_naming_it(tmp_path, monkeypatch):
    """Whatever produced it, a NaN metric makes the trial failed (a baseline: nothing trains)."""

    def nan_fid(trial, folders, cache_dir):
        return {"fid": math.nan, "nfe": 1.0}, {}, {}

    monkeypatch.setattr(trial_module, "evaluate_trial", nan_fid)
    trial = build_trial(
        {"sampler": {"name": "class_marginals"}, "eval": {"num_samples": 20, "batch_size": 20}}
    )
    record = run_trial(trial, store_root=tmp_path / "store", study_dir=tmp_path / "study")
    assert record.status == "failed" and "metrics.fid = nan" in record.error
    text = Ledger(tmp_path / "study").path(trial.trial_hash()).read_text()
    assert strict_loads(text)["metrics"] == {}


# --- evaluation -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluator(warm_eval_cache: Path) -> Evaluator:
    return Evaluator("digits", metrics=None, cache_dir=warm_eval_cache)


def test_the_evaluator_refuses_nan_or_inf_samples(evaluator):
    images = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # (N, 1, 8, 8)
    images[0, 0, 0, :2] = math.nan
    images[3, 0, 1, 1] = math.inf
    with pytest.raises(ValueError, match=r"image samples: 3 of 1280 values are NaN or infinite"):
        evaluator.evaluate(images, 0)


def test_a_collapsed_model_gets_finite_metrics(evaluator):
    """Every sample the same image: the features have zero covariance, FID stays finite."""
    images = torch.full((20, 1, 8, 8), 0.5)  # (N, 1, 8, 8)
    results = {r.name: r.value for r in evaluator.evaluate(images, 0)}
    assert FID in results and all(math.isfinite(v) for v in results.values()), results
    assert results[FID] > 0


def test_a_non_finite_metric_value_is_an_error(evaluator):
    broken = dataclasses.replace(METRICS[FID], compute=lambda *args: math.nan)
    features = evaluator.features(torch.rand(4, 1, 8, 8))
    with pytest.raises(ValueError, match=r"fid came out nan on 4 samples"):
        broken(features, evaluator.reference_stats)
    protocol = evaluator.protocol(METRICS[FID], 4, (0,), "none")
    with pytest.raises(ValueError, match=r"fid: non-finite value = inf"):
        MetricResult(FID, math.inf, False, protocol)
    with pytest.raises(ValueError, match=r"ci_high = nan"):
        MetricResult(FID, 1.0, False, protocol, 0.5, math.nan)


# --- the ledger -------------------------------------------------------------------------------------


def _record(**changes) -> TrialRecord:
    fields = {"trial_hash": "t1", "training_hash": "h1", "status": "finished", "config": {}}
    return TrialRecord(**{**fields, **changes})


def test_a_record_with_a_nan_metric_cannot_be_built_or_written(tmp_path):
    with pytest.raises(ValueError, match=r"metrics\.fid = nan"):
        _record(metrics={"fid": math.nan, "kid_mean": 0.1})
    with pytest.raises(ValueError, match=r"training_curve\[0\]\[1\]\.train/loss = inf"):
        _record(status="failed", training_curve=[[1, {"train/loss": math.inf}]])
    record = _record(metrics={"fid": 1.0})
    object.__setattr__(record, "metrics", {"fid": math.nan})  # past the constructor's check
    ledger = Ledger(tmp_path)
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        ledger.write(record)
    assert not ledger.path("t1").exists()


def test_records_round_trip_as_strict_json(tmp_path):
    record = _record(metrics={"fid": 1.5, "tiny": 1e-300, "huge": 1e300}, intervals={"fid": [1.0, 2.0]})
    assert TrialRecord.from_json(record.to_json()) == record
    Ledger(tmp_path).write(record)
    assert Ledger(tmp_path).get("t1") == record
    for constant in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(ValueError, match=f"{constant} in JSON"):
            strict_loads(f'{{"fid": {constant}}}')
        with pytest.raises(ValueError, match=f"{constant} in JSON"):
            TrialRecord.from_json(record.to_json().replace("1.5", constant))
    assert nonfinite_fields({"a": [1.0, {"b": -math.inf}], "c": "nan"}) == ["a[1].b = -inf"]
