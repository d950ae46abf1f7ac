"""A guided trial's record: the NFE does not depend on how CFG's halves ran, and the record says
how they ran (``protocols["nfe"]["cfg_mode"]`` and beside every metric), in the samples' metadata
too; the runs that choose the mode are not the sampling's seconds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.config.trial import build_trial
from harness.evaluation import load_samples
from harness.generation.sampling import generate
from harness.run.store import CheckpointStore
from harness.run.trial import run_trial, sample_folder
from models.backbone import DiscreteDiT, ModelConfig
from models.samplers import CFG_MODES, EulerSampler
from models.samplers import denoiser as denoiser_module

STEPS = 3


def guided_trial(cfg_scale: float):
    return build_trial(
        {
            "train": {"steps": 3, "batch_size": 8, "warmup_steps": 0, "checkpoint_every": 0},
            "sampler": {"name": "euler", "num_steps": STEPS, "cfg_scale": cfg_scale},
            "eval": {"num_samples": 20, "batch_size": 8, "metrics": ["fid"]},
        }
    )


@pytest.mark.parametrize("forced", [None, True, False], ids=["default", "batched", "two-pass"])
def test_guided_nfe_is_the_same_whichever_way_cfg_ran(
    tmp_path: Path, warm_eval_cache, one_thread, monkeypatch, forced
):
    if forced is not None:  # the CPU default's timed choice, made to come out this way
        monkeypatch.setattr(denoiser_module, "choose_batching", lambda batched, two_pass: (forced, batched()))
        denoiser_module._CPU_CHOICES.clear()
    trial = guided_trial(2.0)
    record = run_trial(trial, store_root=tmp_path / "store", study_dir=tmp_path / "study")
    assert record.status == "finished", record.error
    assert record.metrics["nfe"] == STEPS and record.metrics["nfe_unbatched"] == 2 * STEPS
    modes = record.protocols["nfe"]["cfg_mode"].split("+")
    assert set(modes) <= set(CFG_MODES)
    if forced is not None:
        assert modes == [denoiser_module.BATCHED if forced else denoiser_module.TWO_PASS]
    folder = sample_folder(trial, CheckpointStore(tmp_path / "store"), trial.eval.sample_seeds[0])
    assert load_samples(folder).meta["cfg_mode"] == record.protocols["nfe"]["cfg_mode"]


def test_an_unguided_trial_has_no_cfg_mode(tmp_path: Path, warm_eval_cache, one_thread):
    record = run_trial(guided_trial(1.0), store_root=tmp_path / "store", study_dir=tmp_path / "study")
    assert record.status == "finished", record.error
    assert record.metrics["nfe"] == record.metrics["nfe_unbatched"] == STEPS
    assert "nfe" not in record.protocols


def test_every_metric_of_a_guided_trial_records_how_its_samples_were_drawn(
    tmp_path: Path, warm_eval_cache, one_thread
):
    record = run_trial(guided_trial(2.0), store_root=tmp_path / "store", study_dir=tmp_path / "study")
    assert record.status == "finished", record.error
    mode = record.protocols["nfe"]["cfg_mode"]
    assert record.protocols["fid"]["cfg_mode"] == mode
    assert all(p["cfg_mode"] == mode for p in record.protocols.values())


def test_the_cfg_mode_choice_is_not_billed_to_the_samplers_seconds(monkeypatch):
    """The CPU choice runs both modes: those runs are not the sampling's seconds."""
    slow_choice = 0.5

    def choose(batched, two_pass):
        time.sleep(slow_choice)  # stands for the timing runs, one of them slow
        return True, batched()

    monkeypatch.setattr(denoiser_module, "choose_batching", choose)
    denoiser_module._CPU_CHOICES.clear()
    net = DiscreteDiT(ModelConfig(vocab_size=8, grid=(4,), num_classes=2, depth=1, width=16, heads=2))
    out = generate(net.eval(), EulerSampler(num_steps=3), num_samples=4, batch_size=4, cfg_scale=2.0)
    assert out.cfg_mode == denoiser_module.BATCHED and out.seconds < slow_choice
