"""Trainer and checkpoints: resume bit for bit, checkpoints rebuild the model alone, learning uses context."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.config.trial import ConfigError, TrialConfig, build_trial
from harness.data.registry import get_dataset, load_dataset
from harness.data.shard_loader import RowStream
from harness.data.sources.shards import write_shards
from models import trainer
from models.backbone import ModelConfig
from models.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from models.diagnostics import context_check, heldout_masked_ce, unigram_entropy
from models.trainer import TrainConfig, init_state, lr_at, save_state, set_tf32, train

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


def _fingerprint(batches) -> str:
    """sha256 of every micro-batch's rows, masked inputs, times and conditions, in order."""
    h = hashlib.sha256()
    for batch in batches:
        for value in (batch.x_1, batch.x_t, batch.t, batch.y):
            h.update(value.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize(
    ("changes", "pinned"),
    [({}, "7efb33adf75199ae"), ({"grad_accum": 2, "corruption": "maskgit"}, "0cea0b1c969852cb")],
)
def test_in_memory_training_draws_the_batches_it_always_drew(digits, monkeypatch, changes, pinned):
    """The embedded datasets train on a pinned sequence of micro-batches (rows, t, masks, dropped
    classes; values recorded before shard folders were streamed): the README's published numbers
    were trained on it, so a change to how data reaches the trainer must leave it alone."""
    data, _ = digits
    seen = []
    draw = trainer.draw_micro_batch

    def recording(*args, **kwargs):
        seen.append(draw(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(trainer, "draw_micro_batch", recording)
    model_config, config = _configs(**changes)
    train(model_config, config, data.tokens, data.labels)
    assert len(seen) == config.steps * config.grad_accum
    assert _fingerprint(seen) == pinned


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


def test_new_train_options_leave_existing_hashes_alone():
    """Checkpoints cached before tf32 / fused_adamw / activation_checkpointing existed keep their
    address: a default TrialConfig hashes as before these options (values computed before the
    change), spelled-out defaults too; a non-default value is another training."""
    default = TrialConfig()
    assert (default.training_hash(), default.trial_hash()) == ("4c010d3d5219b402", "2d8c9e70bd57f275")
    explicit = build_trial(
        {"train": {"tf32": False, "fused_adamw": "auto", "activation_checkpointing": False}}
    )
    assert explicit.training_hash() == default.training_hash()
    for key, value in (("tf32", True), ("fused_adamw", True), ("fused_adamw", False)):
        assert build_trial({"train": {key: value}}).training_hash() != default.training_hash()
    with pytest.raises(ConfigError, match=r"train.fused_adamw\S* = 'sometimes': Input should be 'auto'"):
        build_trial({"train": {"fused_adamw": "sometimes"}})


def test_tf32_is_set_when_training_starts_and_only_for_cuda(digits):
    flags = lambda: (torch.get_float32_matmul_precision(), torch.backends.cudnn.conv.fp32_precision)  # noqa: E731
    before = flags()
    model_config, config = _configs(tf32=True)
    train(model_config, config, digits[0].tokens, digits[0].labels)  # on CPU: nothing changes
    assert flags() == before
    try:
        set_tf32(True, "cuda")  # setting the flags needs no GPU
        assert flags() == ("high", "tf32") and torch.backends.cuda.matmul.fp32_precision == "tf32"
        set_tf32(False, "cuda")  # a reused worker drops a previous training's TF32
        assert flags() == ("highest", "ieee")
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.conv.fp32_precision = before[1]


def test_fused_adamw_auto_true_false(monkeypatch):
    model_config, _ = _configs()
    assert not init_state(model_config, TrainConfig(), "cpu").optimizer.defaults["fused"]  # auto: CUDA only
    assert init_state(model_config, TrainConfig(fused_adamw=True), "cpu").optimizer.defaults["fused"]
    assert not init_state(model_config, TrainConfig(fused_adamw=False), "cpu").optimizer.defaults["fused"]
    monkeypatch.setattr(trainer, "_get_fused_kernels_supported_devices", lambda: ["cuda"])
    with pytest.raises(ValueError, match=r"train.fused_adamw = True .* device 'cpu'"):
        init_state(model_config, TrainConfig(fused_adamw=True), "cpu")
    with pytest.raises(ValueError, match="train.fused_adamw"):
        TrainConfig(fused_adamw="yes")


def test_activation_checkpointing_recomputes_blocks_and_keeps_gradients(digits):
    model_config, _ = _configs()
    x_t = digits[0].tokens[:8].clone()
    x_t[:, ::2] = model_config.mask_id
    t, y = torch.rand(8), digits[0].labels[:8]
    calls, grads = [], []
    for flag in (False, True):
        state = init_state(model_config, TrainConfig(activation_checkpointing=flag))
        with torch.no_grad():  # non-zero head and modulation, so that every gradient is non-trivial
            for p in state.model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        state.model.blocks[0].register_forward_pre_hook(lambda *_, flag=flag: calls.append(flag))
        state.model.train()
        state.model(x_t, t, y).logsumexp(-1).mean().backward()
        grads.append([p.grad for p in state.model.parameters()])
    assert calls.count(False) == 1 and calls.count(True) == 2  # the block ran again in backward
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


GPU_CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_runs_every_path_tiny_on_cpu(tmp_path):
    """The prepared GPU check (benchmarks/gpu_check.py) at tiny sizes on CPU: training, sampling
    with CFG and the DiT-XL probe (here a small model) all run and report their figures."""
    out = tmp_path / "gpu_check.json"
    args = ["--device", "cpu", "--tiny", "--threads", "1", "--json", str(out)]
    result = subprocess.run(
        [sys.executable, str(GPU_CHECK), *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    train, sample = report["train"], report["sample"]
    assert train["fits"] and train["batch"] == 8 and torch.isfinite(torch.tensor(train["loss"]))
    assert train["tokens_per_s"] == pytest.approx(train["samples_per_s"] * 64)
    assert sample["samples_per_s"] > 0 and sample["nfe"] == 2
    assert {k: v["fits"] for k, v in report["xl_probe"].items()} == {"plain": True, "checkpointing": True}
    assert "samples/s" in result.stdout and "GiB" in result.stdout


def test_gpu_check_halves_the_batch_until_it_fits():
    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    gpu_check = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", gpu_check)  # its dataclasses look their module up
    spec.loader.exec_module(gpu_check)
    tried = []

    def run(batch: int) -> dict:
        tried.append(batch)
        if batch > 48:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"peak_gib": 1.0}

    cpu = torch.device("cpu")
    result = gpu_check.largest_fitting(run, 256, cpu)
    assert tried == [256, 128, 64, 32] and result == {"batch": 32, "fits": True, "peak_gib": 1.0}
    assert gpu_check.largest_fitting(lambda b: run(10**6), 4, cpu) == {"fits": False}

    def broken(batch: int) -> dict:
        raise RuntimeError("not a memory error")

    with pytest.raises(RuntimeError, match="not a memory error"):  # only memory errors halve the batch
        gpu_check.largest_fitting(broken, 4, cpu)


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


@pytest.fixture(scope="module")
def digit_shards(tmp_path_factory, digits):
    """The digits training split as a shard folder, streamed (tokens left on disk)."""
    data, _ = digits
    root = tmp_path_factory.mktemp("streamed") / "digits"
    split = {"train": (data.tokens.numpy(), data.labels.numpy())}
    write_shards(root, split, grid=(8, 8), vocab_size=17, num_classes=10, shard_size=400)
    return get_dataset("shards").stream("train", path=str(root), grid=[8, 8], vocab_size=17, num_classes=10)


@pytest.mark.parametrize("changes", [{}, {"grad_accum": 2, "corruption": "maskgit", "loss": "elbo"}])
def test_a_streamed_training_interrupted_after_a_checkpoint_resumes_bit_for_bit(
    tmp_path, digit_shards, monkeypatch, changes
):
    """A shard folder read through the loader, stopped at step 6 of 12 after its periodic
    checkpoint at step 4 (mid-epoch) and resumed: it reads the micro-batches an uninterrupted
    run reads from step 4 on, and ends with its weights and EMA."""
    seen = []
    read = trainer.read_micro_batch

    def recording(index, *args, **kwargs):
        seen.append(index.tolist())
        return read(index, *args, **kwargs)

    monkeypatch.setattr(trainer, "read_micro_batch", recording)
    model_config, config = _configs(checkpoint_every=4, **changes)
    stream, labels = RowStream(digit_shards.rows), digit_shards.labels
    straight = train(model_config, config, stream, labels)
    batches, seen[:] = list(seen), []

    def interrupt(step: int, metrics: dict) -> None:
        if step == 6:
            raise KeyboardInterrupt

    ckpt = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        train(model_config, config, stream, labels, checkpoint_path=ckpt, log=interrupt, log_every=1)
    assert load_checkpoint(ckpt)["step"] == 4 and seen == batches[: 6 * config.grad_accum]
    seen[:] = []
    resumed = train(model_config, config, stream, labels, checkpoint_path=ckpt)
    k = 4 * config.grad_accum
    assert seen == batches[k:] and len(batches) == 12 * config.grad_accum
    assert len({i for batch in batches for i in batch}) == len(batches) * 16  # no sample twice in an epoch
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values(), strict=True):
        assert torch.equal(a, b)
