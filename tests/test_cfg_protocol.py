"""A guided trial's record: the NFE does not depend on how CFG's halves ran, and the record says
how they ran (``protocols["nfe"]["cfg_mode"]``), in the samples' metadata too."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config.trial import build_trial
from harness.evaluation import load_samples
from harness.run.store import CheckpointStore
from harness.run.trial import run_trial, sample_folder
from models.samplers import CFG_MODES
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
