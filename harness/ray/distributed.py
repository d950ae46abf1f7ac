"""Data-parallel training of one checkpoint with Ray Train, launched from inside a Ray Tune trial.

A ``TorchTrainer`` runs N workers (gloo on CPU, NCCL on GPU); each loads the data (a shard
folder is streamed instead: each worker reads only its rows of every micro-batch from disk,
``harness.data.shard_loader``), wraps the model with ``ray.train.torch.prepare_model`` (DDP) and
trains its rows of every micro-batch (``models.data_parallel``: the same optimizer steps as one
process on the whole batch). Rank 0
writes the checkpoint and the training curve into the store folder, which every node must
mount; every rank reports each logged step with ``ray.train.report``, and inside a Tune trial
those reports reach the trial's results. With the store's file lock held by the caller, a
failed training is retried by Tune and resumes from its last periodic checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cache import CACHE_ENV
from harness.config.study import Resources
from harness.config.trial import ConfigError, TrialConfig
from harness.run.store import train_into
from harness.run.trial import set_threads
from models.data_parallel import DataParallel


@dataclass(frozen=True)
class DataParallelLauncher:
    """A ``harness.run.store.Launcher``: trains a trial's checkpoint on ``workers`` Ray Train workers,
    each holding ``cpu`` CPUs and ``gpu`` GPUs (GPU workers when ``gpu > 0``)."""

    workers: int
    cpu: float
    gpu: float
    storage_path: str  # Ray Train's own run records (absolute)
    cache_dir: str | None = None
    report_to_tune: bool = False  # forward the workers' reports to the enclosing Tune trial

    def scaling_config(self):
        from ray.train import ScalingConfig

        per_worker = {"CPU": self.cpu, **({"GPU": self.gpu} if self.gpu > 0 else {})}
        return ScalingConfig(num_workers=self.workers, use_gpu=self.gpu > 0, resources_per_worker=per_worker)

    def __call__(self, trial: TrialConfig, folder: Path) -> None:
        from ray.train import RunConfig
        from ray.train.torch import TorchTrainer

        callbacks = []
        if self.report_to_tune:
            from ray.tune.integration.ray_train import TuneReportCallback

            callbacks.append(TuneReportCallback())
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={
                "trial": trial.model_dump(mode="json"),
                "folder": str(Path(folder).resolve()),
                "cache_dir": self.cache_dir,
                "cpu": self.cpu,
            },
            scaling_config=self.scaling_config(),
            run_config=RunConfig(
                name=f"train_{trial.training_hash()}", storage_path=self.storage_path, callbacks=callbacks
            ),
        )
        trainer.fit()


def check_workers_fit(resources: Resources, available: dict[str, float], trial_share: bool) -> None:
    """A request larger than the cluster waits forever: refuse it up front. ``trial_share``: the
    Tune trial holds a share of its own (to sample) while its workers train."""
    shares = resources.workers + int(trial_share)
    for name, each in (("cpu", resources.cpu), ("gpu", resources.gpu)):
        have = available.get(name.upper(), 0.0)
        if shares * each > have:
            raise ConfigError(
                f"resources.workers = {resources.workers} with resources.{name} = {each} each needs "
                f"{shares * each:g} {name.upper()}(s) per trial; the cluster has {have:g}"
            )


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: rank r of N trains its shard of every micro-batch."""
    import ray.train
    import ray.train.torch

    if config["cache_dir"]:
        os.environ[CACHE_ENV] = config["cache_dir"]
    set_threads(config["cpu"])
    trial = TrialConfig.model_validate(config["trial"])
    context = ray.train.get_context()
    parallel = DataParallel(
        context.get_world_rank(), context.get_world_size(), wrap=ray.train.torch.prepare_model
    )

    def report(step: int, metrics: dict) -> None:  # every rank, same steps: report is a barrier
        ray.train.report({"step": step, "steps": trial.train.steps, "loss": metrics["train/loss"]})

    train_into(trial, Path(config["folder"]), ray.train.torch.get_device(), parallel=parallel, on_log=report)
