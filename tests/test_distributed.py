"""Data-parallel training: rank shards partition one micro-batch, DDP with N workers takes the same
steps as one process on the whole batch, and a study with resources.workers = 2 trains through
Ray Train (gloo on CPU) inside its Tune trial."""

from __future__ import annotations

import socket

import pytest
import stream_ranks
import torch
from conftest import make_runs_root, study_file

from harness.config.study import Resources
from harness.config.trial import ConfigError, build_trial
from harness.data.registry import load_dataset
from harness.data.sources.shards import write_shards
from harness.ray.distributed import check_workers_fit
from harness.run.ledger import Ledger
from harness.run.store import CheckpointStore, train_into
from harness.runner import execute, prepare
from models.backbone import ModelConfig
from models.checkpoint import load_checkpoint, model_from_checkpoint
from models.data_parallel import draw_micro_batch, training_loss
from models.losses import LOSSES, masked_positions
from models.modalities import Layout, Modality
from models.trainer import TrainConfig, read_micro_batch

MODEL = ModelConfig(vocab_size=17, grid=(4, 4), num_classes=3, size="tiny")


def _draw(config: TrainConfig, shard: tuple[int, int], tokens, labels):
    generator = torch.Generator().manual_seed(7)
    batch = draw_micro_batch(tokens, labels, config, config.build_scheduler(), MODEL, generator, shard)
    return batch, generator.get_state()


@pytest.mark.parametrize("loss", ["masked_ce", "elbo", "all_token_ce"])
@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("corruption", ["interpolant", "maskgit"])
def test_shards_partition_the_micro_batch_and_weights_give_its_loss(loss, world_size, corruption):
    """Rank r keeps rows [r B/N, (r+1) B/N) of the one micro-batch every rank draws (the
    generator ends alike on every rank), and mean_r(w_r loss(shard_r)) = loss(whole batch) for
    any logits, so DDP's mean of the ranks' gradients is the whole batch's gradient."""
    config = TrainConfig(batch_size=24, loss=loss, corruption=corruption, class_dropout=0.3)
    tokens, labels = torch.randint(0, 17, (50, 16)), torch.randint(0, 3, (50,))
    full, full_state = _draw(config, (0, 1), tokens, labels)
    shards = [_draw(config, (r, world_size), tokens, labels) for r in range(world_size)]
    for batch, state in shards:
        assert batch.x_1.shape == (24 // world_size, 16) and torch.equal(state, full_state)
    for field in ("x_1", "x_t", "t", "y"):
        joined = torch.cat([getattr(batch, field) for batch, _ in shards])
        assert torch.equal(joined, getattr(full, field))
    logits = torch.randn(24, 16, 18, generator=torch.Generator().manual_seed(1))  # (B, L, V)
    scheduler, fn = config.build_scheduler(), LOSSES[loss]

    def loss_of(batch, rows):
        return fn(logits[rows], batch.x_1, masked_positions(batch.x_t, MODEL.mask_id), batch.t, scheduler)

    b = 24 // world_size
    weighted = [
        batch.weights[0] * loss_of(batch, slice(r * b, (r + 1) * b)) for r, (batch, _) in enumerate(shards)
    ]
    assert torch.stack(weighted).mean() == pytest.approx(loss_of(full, slice(None)).item(), rel=1e-5)
    if loss == "masked_ce" and corruption == "interpolant":
        assert len({round(batch.weights[0], 6) for batch, _ in shards}) > 1  # unequal masked counts


@pytest.mark.parametrize("loss", ["masked_ce", "elbo"])
def test_joint_model_shards_weight_each_modality(loss):
    """Several modalities: each modality's masked CE has its own normaliser, so each gets its
    own w_r, and the mean over ranks of the weighted per-modality sums is the whole batch's loss."""
    layout = Layout((Modality("a", 5, (4, 4)), Modality("b", 3, (2, 2))))
    model_config = ModelConfig.joint(layout)
    config = TrainConfig(batch_size=24, loss=loss)
    tokens = layout.join({"a": torch.randint(0, 5, (50, 16)), "b": torch.randint(0, 3, (50, 4))})
    scheduler = config.build_scheduler()

    def draw(shard):
        generator = torch.Generator().manual_seed(3)
        return draw_micro_batch(tokens, None, config, scheduler, model_config, generator, shard)

    full = draw((0, 1))
    assert full.t.shape == (24, 2)  # one time per modality
    logits = torch.randn(24, 20, layout.num_ids, generator=torch.Generator().manual_seed(2))
    whole = training_loss(logits, full.x_1, full.x_t, full.t, config, scheduler, model_config)
    parts = []
    for r in range(2):
        batch, rows = draw((r, 2)), slice(r * 12, (r + 1) * 12)
        parts.append(
            training_loss(
                logits[rows], batch.x_1, batch.x_t, batch.t, config, scheduler, model_config, batch.weights
            )
        )
    assert torch.stack(parts).mean().item() == pytest.approx(whole.item(), rel=1e-5)


def test_worker_requests_are_checked_against_the_cluster():
    check_workers_fit(Resources(cpu=1, workers=2), {"CPU": 2.0}, trial_share=False)
    with pytest.raises(ConfigError, match=r"resources.workers = 2 .* needs 3 CPU"):
        check_workers_fit(Resources(cpu=1, workers=2), {"CPU": 2.0}, trial_share=True)
    with pytest.raises(ConfigError, match=r"resources.gpu = 1.0 each needs 4 GPU"):
        check_workers_fit(Resources(cpu=1, gpu=1, workers=4), {"CPU": 8.0, "GPU": 2.0}, trial_share=False)


def test_batch_size_must_split_over_the_workers(tmp_path):
    from harness.config.study import load_study

    path = study_file(tmp_path, "odd", overrides={"train.batch_size": 15}, resources={"cpu": 1, "workers": 2})
    with pytest.raises(ConfigError, match=r"train.batch_size = 15 is not divisible by resources.workers = 2"):
        load_study(path)


@pytest.mark.parametrize("workers", [1, 2])
def test_with_train_workers_every_training_ends_before_a_sampling_trial_starts(
    tmp_path, monkeypatch, workers
):
    """A sampling trial waiting for its training holds its share; with Ray Train workers that
    share can be what the training's workers wait for (a deadlock on a full cluster), so the
    grid runs its trainings first, as a Tuner of their own. Without workers one Tuner serves
    both (a worker that trained keeps its imports for the trials after it)."""
    from harness.ray import dispatch

    spec = prepare(study_file(tmp_path, "g", space={"sampler.num_steps": [2, 4]}), tmp_path / "runs").spec
    phases: list[list[str]] = []
    monkeypatch.setattr(
        dispatch.RayDispatcher,
        "_tune",
        lambda self, fn, space, **kw: phases.append([j["kind"] for j in space["job"]["grid_search"]]),
    )
    monkeypatch.setattr(dispatch.RayDispatcher, "cluster_resources", lambda self: {"CPU": 8.0})
    spec = spec.model_copy(update={"resources": Resources(cpu=1, workers=workers)})
    trainings, trials = [build_trial({"train": {"steps": 3}})], [build_trial({}), build_trial({"seed": 1})]
    ctx = dispatch.TrialContext(str(tmp_path), str(tmp_path), None, 1.0, 0.0)
    dispatch.RayDispatcher().run_grid(spec, trainings, trials, ctx)
    both = [dispatch.TRAIN, dispatch.SAMPLE, dispatch.SAMPLE]
    assert phases == ([both] if workers == 1 else [[dispatch.TRAIN], [dispatch.SAMPLE] * 2])


def test_two_ray_train_workers_take_the_steps_of_one_process(tmp_path, warm_eval_cache, ray_session):
    """A grid study with resources.workers = 2: its training runs on two gloo workers (a
    TorchTrainer inside the Tune trial), its checkpoint loads and samples, and its weights
    equal those of one process trained on the whole batch (lr high enough that a wrong shard
    or loss weight shows)."""
    root = make_runs_root(tmp_path / "runs", warm_eval_cache)
    overrides = {
        "train.steps": 4,
        "train.batch_size": 16,
        "train.grad_accum": 2,
        "train.lr": 0.02,
        "train.warmup_steps": 0,
        "model.depth": 1,
        "model.width": 32,
        "model.heads": 2,
    }
    study = study_file(tmp_path, "ddp", overrides=overrides, resources={"cpu": 1, "workers": 2})
    run = prepare(study, root)
    (trial,) = run.plan.trials
    records = execute(run)
    assert [r.status for r in records] == ["finished"]
    assert Ledger(root / "ddp").get(trial.trial_hash()).status == "finished"
    store = CheckpointStore(root / "checkpoints")
    assert store.is_done(trial.training_hash())
    _, ckpt = model_from_checkpoint(store.checkpoint(trial.training_hash()))
    assert ckpt["step"] == 4 and [step for step, _ in store.curve(trial.training_hash())] == [1, 2, 3, 4]

    single = tmp_path / "single"
    single.mkdir()
    train_into(build_trial(trial.model_dump(mode="json")), single)
    reference = load_checkpoint(single / "checkpoint.pt")
    for name, value in reference["model"].items():
        torch.testing.assert_close(ckpt["model"][name], value, rtol=1e-4, atol=1e-5)
    losses = [m["train/loss"] for _, m in store.curve(trial.training_hash())]
    assert losses == pytest.approx([m["train/loss"] for _, m in CheckpointStore(tmp_path).curve("single")])


@pytest.mark.parametrize("loss", ["masked_ce", "elbo"])
@pytest.mark.parametrize("world_size", [2, 4])
def test_streamed_ranks_hold_strided_rows_and_weights_give_the_micro_batch_loss(loss, world_size):
    """Rows read from disk: rank r holds rows r, r + W, ... of the micro-batch (a TokenStream's
    cut), draws t, masks and dropped classes for all B rows (the generator ends alike on every
    rank) and keeps its rows'; mean_r(w_r loss(rank r)) = loss(whole micro-batch)."""
    config = TrainConfig(batch_size=24, loss=loss, class_dropout=0.3)
    tokens, labels = torch.randint(0, 17, (50, 16)), torch.randint(0, 3, (50,))
    index, scheduler = torch.randperm(50)[:24], config.build_scheduler()  # one micro-batch's samples

    def read(rank: int, world: int):
        generator, rows = torch.Generator().manual_seed(7), index[rank::world]
        batch = read_micro_batch(
            rows, tokens[rows], labels, config, scheduler, MODEL, generator, (rank, world)
        )
        return batch, generator.get_state()

    full, full_state = read(0, 1)
    assert torch.equal(full.x_1, tokens[index]) and torch.equal(
        full.y[full.y != MODEL.null_class], labels[index][full.y != MODEL.null_class]
    )
    logits = torch.randn(24, 16, 18, generator=torch.Generator().manual_seed(1))  # (B, L, V)
    whole = training_loss(logits, full.x_1, full.x_t, full.t, config, scheduler, MODEL)
    parts = []
    for r in range(world_size):
        batch, state = read(r, world_size)
        assert torch.equal(state, full_state)
        for field in ("x_1", "x_t", "t", "y"):
            assert torch.equal(getattr(batch, field), getattr(full, field)[r::world_size])
        rows = slice(r, None, world_size)
        parts.append(
            training_loss(
                logits[rows], batch.x_1, batch.x_t, batch.t, config, scheduler, MODEL, batch.weights
            )
        )
    assert torch.stack(parts).mean().item() == pytest.approx(whole.item(), rel=1e-5)


def test_two_gloo_ranks_streaming_a_shard_folder_take_the_steps_of_one_process(tmp_path):
    """``train_into`` on a shard folder, as two data-parallel workers call it: each reads its
    rows of every micro-batch from disk, and rank 0's checkpoint equals one process's."""
    data = load_dataset("digits", "train")
    root = write_shards(tmp_path / "digits", {"train": (data.tokens.numpy(), data.labels.numpy())},
                        grid=(8, 8), vocab_size=17, num_classes=10, shard_size=400)  # fmt: skip
    options = {"path": str(root), "grid": [8, 8], "vocab_size": 17, "num_classes": 10}
    trial = build_trial(
        {
            "data": {"name": "shards", "options": options},
            "model": {"size": "tiny", "depth": 1, "width": 32, "heads": 2},
            "train": {"steps": 4, "batch_size": 16, "grad_accum": 2, "lr": 0.02, "warmup_steps": 0},
            "eval": {"extractor": "digits-cnn"},
        }
    ).model_dump(mode="json")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "ranks").mkdir()
    torch.multiprocessing.spawn(
        stream_ranks.run_rank, args=(2, port, trial, str(tmp_path / "ranks")), nprocs=2
    )
    (tmp_path / "single").mkdir()
    train_into(build_trial(trial), tmp_path / "single")
    ranks, single = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("ranks", "single"))
    assert ranks["step"] == single["step"] == 4
    for name, value in single["model"].items():
        torch.testing.assert_close(ranks["model"][name], value, rtol=1e-4, atol=1e-5)
