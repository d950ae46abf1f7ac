"""Trainer and checkpoints: resume bit for bit, checkpoints rebuild the model alone, learning uses context."""

from __future__ import annotations

import pytest
import torch

from harness.datasets import load_dataset
from models.backbone import ModelConfig
from models.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from models.diagnostics import context_check, heldout_masked_ce, unigram_entropy
from models.trainer import TrainConfig, lr_at, save_state, train

SMALL = {"size": "tiny", "depth": 1, "width": 32, "heads": 2}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "heldout")


def _configs(timestep: str = "explicit", **train_changes):
    model = ModelConfig(vocab_size=17, grid=(8, 8), num_classes=10, timestep=timestep, **SMALL)
    train_config = TrainConfig(steps=12, batch_size=16, lr=3e-3, warmup_steps=3, **train_changes)
    return model, train_config


@pytest.mark.parametrize("changes", [{}, {"grad_accum": 2, "corruption": "maskgit", "loss": "elbo"}])
def test_resume_continues_bit_for_bit(tmp_path, digits, changes):
    data, _ = digits
    model_config, config = _configs(**changes)
    straight = train(model_config, config, data.tokens, data.labels)
    half = TrainConfig.from_dict({**config.to_dict(), "steps": 5})
    ckpt = tmp_path / "run.pt"
    train(model_config, half, data.tokens, data.labels, checkpoint_path=ckpt)
    assert load_checkpoint(ckpt)["step"] == 5
    resumed = train(model_config, config, data.tokens, data.labels, checkpoint_path=ckpt)
    assert resumed.step == straight.step == config.steps
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_rebuilds_model_with_identical_logits(tmp_path, digits):
    data, _ = digits
    model_config, config = _configs()
    state = train(model_config, config, data.tokens, data.labels)
    path = tmp_path / "ckpt.pt"
    save_state(path, state, config)
    for use_ema, reference in ((False, state.model), (True, state.ema)):
        loaded, ckpt = model_from_checkpoint(path, use_ema=use_ema)
        assert ckpt["model_config"] == model_config.to_dict()
        assert TrainConfig.from_dict(ckpt["train_config"]) == config
        x = data.tokens[:8].clone()
        x[:, ::3] = model_config.mask_id
        t, y = torch.rand(8), data.labels[:8]
        with torch.no_grad():
            assert torch.equal(loaded(x, t, y), reference(x, t, y))


def test_ema_tracks_but_lags_the_model(digits):
    data, _ = digits
    model_config, config = _configs()
    state = train(model_config, config, data.tokens, data.labels)
    differs = any(
        not torch.equal(a, b) for a, b in zip(state.model.parameters(), state.ema.parameters(), strict=True)
    )
    assert differs
    no_ema = train(
        model_config, TrainConfig.from_dict({**config.to_dict(), "ema_decay": 0.0}), data.tokens, data.labels
    )
    for a, b in zip(no_ema.model.parameters(), no_ema.ema.parameters(), strict=True):
        assert torch.equal(a, b)


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(corrupt)
    partial = tmp_path / "partial.pt"
    torch.save({"model": {}}, partial)
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(partial)


def test_lr_warms_up_then_decays():
    config = TrainConfig(steps=100, lr=1.0, warmup_steps=10, lr_decay="cosine")
    assert lr_at(0, config) == pytest.approx(0.1)
    assert lr_at(9, config) == pytest.approx(1.0)
    assert lr_at(10, config) == pytest.approx(1.0)
    assert lr_at(55, config) == pytest.approx(0.5)
    assert lr_at(99, config) < 0.01


def test_bad_train_config_names_the_field():
    with pytest.raises(ValueError, match="train.corruption"):
        TrainConfig(corruption="bert")
    with pytest.raises(KeyError, match="cosine"):
        TrainConfig(scheduler="cosin")


@pytest.mark.slow
def test_tiny_model_learns_digits_and_uses_context(digits):
    """Held-out masked CE well below the unigram entropy, and a masked token is predicted
    clearly better when its neighbours are given than when everything is masked."""
    data, heldout = digits
    torch.manual_seed(0)
    model_config = ModelConfig(
        vocab_size=17,
        grid=(8, 8),
        num_classes=10,
        timestep="implicit",
        size="tiny",
        depth=2,
        width=64,
        heads=4,
    )
    config = TrainConfig(steps=400, batch_size=64, lr=2e-3, warmup_steps=20)
    state = train(model_config, config, data.tokens, data.labels)
    scheduler = config.build_scheduler()
    ce = heldout_masked_ce(state.model, heldout.tokens, heldout.labels, scheduler, model_config.mask_id)
    assert ce < unigram_entropy(data.tokens, 17) - 0.4
    gap = context_check(state.model, heldout.tokens, heldout.labels, scheduler, model_config.mask_id)
    assert gap["ce_one_masked"] < gap["ce_all_masked"] - 0.08
