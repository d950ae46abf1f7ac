"""What runs inside a Tune trial's worker: the trainables the dispatcher hands to Ray Tune
(``harness.ray.dispatch``), each training or sampling through the harness's own functions.

A grid study's jobs are trainings (``kind: train``: a chain of trainings of one trajectory) and
sampling trials (``kind: sample``); a search's trials train their checkpoint if the store lacks
it, then sample. Either reports to Tune what the driver's progress lines and the ledger show.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cache import CACHE_ENV
from harness.config.study import StudySpec, apply_assignment
from harness.config.trial import TrialConfig
from harness.ray.distributed import DataParallelLauncher
from harness.ray.progress import TRAIN
from harness.run.ledger import Ledger, TrialRecord
from harness.run.store import CheckpointStore
from harness.run.trial import run_trial, set_threads


class TrialFailedError(RuntimeError):
    """Raised inside a Tune trial so that Tune's FailureConfig retries it."""


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs besides its config; bound once with tune.with_parameters."""

    store_root: str
    study_dir: str
    cache_dir: str | None
    cpu: float
    gpu: float
    workers: int = 1  # data-parallel training workers (Ray Train), each holding cpu and gpu


def _launcher(ctx: TrialContext, report_to_tune: bool) -> DataParallelLauncher | None:
    """Ray Train workers for the trial's training when the study asks for more than one."""
    if ctx.workers == 1:
        return None
    storage = str((Path(ctx.study_dir) / "ray").resolve())
    return DataParallelLauncher(ctx.workers, ctx.cpu, ctx.gpu, storage, ctx.cache_dir, report_to_tune)


def _device(ctx: TrialContext) -> str:
    import torch

    return "cuda" if ctx.gpu > 0 and torch.cuda.is_available() else "cpu"


def _report(record: TrialRecord) -> None:
    from ray import tune

    tune.report({**record.metrics, "trial_hash": record.trial_hash, "status": record.status})


def _train_trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """Trains the job's chain (``harness.run.plan.training_chains``): each training of one
    trajectory, shortest first, each continuing from the one before it in the store."""
    from ray import tune

    _worker_setup(ctx)
    store = CheckpointStore(ctx.store_root)
    chain = [TrialConfig.model_validate(t) for t in config.get("chain", [])]
    launcher = _launcher(ctx, report_to_tune=True)
    for trial in [*chain, TrialConfig.model_validate(config["trial"])]:

        def on_log(step: int, metrics: dict, steps: int = trial.train.steps) -> None:
            tune.report({"step": step, "steps": steps, "loss": metrics["train/loss"]})

        store.ensure(trial, device=_device(ctx), on_log=on_log, launcher=launcher)
    steps = trial.train.steps
    tune.report({"step": steps, "steps": steps, "done": 1})


def _worker_setup(ctx: TrialContext) -> None:
    """Torch threads = the trial's cpu share; every cache lookup in this worker (tokenizers, token
    grids, extractors) goes to the study's cache folder, whatever the worker's environment says."""
    set_threads(ctx.cpu)
    if ctx.cache_dir:
        os.environ[CACHE_ENV] = ctx.cache_dir


def _host() -> str:
    """``<hostname>/<Ray node id>`` of the worker this runs in."""
    import socket

    import ray

    return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()}"


def _finish(trial: TrialConfig, ctx: TrialContext) -> None:
    existing = Ledger(ctx.study_dir).get(trial.trial_hash())
    if existing is not None and existing.status == "finished":
        _report(existing)
        return
    record = run_trial(
        trial,
        store_root=Path(ctx.store_root),
        study_dir=Path(ctx.study_dir),
        cache_dir=Path(ctx.cache_dir) if ctx.cache_dir else None,
        device=_device(ctx),
        host=_host(),
    )
    if record.status != "finished":
        raise TrialFailedError(record.error)
    _report(record)


def _sample_trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    _worker_setup(ctx)
    _finish(TrialConfig.model_validate(config["trial"]), ctx)


def grid_trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """A grid study's job: a training (``kind: train``) or a sampling trial (``kind: sample``).
    One Tuner runs both, so a worker that trained serves the sampling trials after it with its
    imports, checkpoints and reference sets already loaded (``reuse_actors``)."""
    job = config["job"]
    if job["kind"] == TRAIN:
        _train_trainable(job, ctx)
    else:
        _sample_trainable(job, ctx)


def search_trainable(config: dict[str, Any], ctx: TrialContext, spec: StudySpec) -> None:
    _worker_setup(ctx)
    trial = apply_assignment(spec, config)
    if ctx.workers > 1 and not trial.sampler.is_baseline:  # train on the workers, then sample here
        CheckpointStore(ctx.store_root).ensure(trial, launcher=_launcher(ctx, report_to_tune=False))
    _finish(trial, ctx)
