"""The trial plan of a study, and what it will cost, before anything runs."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from harness.config.study import StudySpec, expand_grid, sample_random
from harness.config.trial import TrialConfig
from harness.run.ledger import Ledger
from harness.run.store import CheckpointStore, model_config_for
from models.backbone import DiscreteDiT, ModelConfig


@dataclass(frozen=True)
class Plan:
    trials: list[TrialConfig]
    trainings: list[TrialConfig]  # one per distinct training config
    pending_trials: list[TrialConfig]
    pending_trainings: list[TrialConfig]
    train_flops: float
    sample_flops: float

    def describe(self, flops_per_second: float, gpu_tflops: float | None = None) -> str:
        """The plan in words; with ``gpu_tflops`` (a sustained rate per GPU), GPU-hours instead
        of time at ``flops_per_second`` (this machine's measured CPU rate)."""

        def hours(flops: float) -> str:
            seconds = flops / flops_per_second
            return f"{seconds / 3600:.2f} h" if seconds > 5400 else f"{seconds / 60:.1f} min"

        stored = len(self.trainings) - len(self.pending_trainings)
        finished = len(self.trials) - len(self.pending_trials)
        head = (
            f"{len(self.trainings)} training(s) ({stored} in the store), "
            f"{len(self.trials)} sampling/eval trial(s) ({finished} finished)\n"
        )
        if gpu_tflops:
            rate = gpu_tflops * 1e12 * 3600
            return head + (
                f"estimated compute: training {self.train_flops / 1e12:.4g} TFLOP"
                f" ({self.train_flops / rate:,.0f} GPU-h), sampling {self.sample_flops / 1e12:.4g} TFLOP"
                f" ({self.sample_flops / rate:,.1f} GPU-h)"
                f" at {gpu_tflops:g} TFLOP/s sustained per GPU"
            )
        return head + (
            f"estimated compute: training {self.train_flops / 1e12:.1f} TFLOP ({hours(self.train_flops)}), "
            f"sampling {self.sample_flops / 1e12:.2f} TFLOP ({hours(self.sample_flops)}) "
            f"at {flops_per_second / 1e9:.0f} GFLOP/s"
        )


class _ParametersOnMeta(TorchFunctionMode):
    """Builds a network's parameters without their memory or their initialisation: ``torch.empty``
    (how modules allocate parameters) goes to the meta device and ``torch.nn.init.*`` returns its
    tensor untouched; the rest (position tables, small buffers) runs on the CPU as usual. Building
    the whole network under ``torch.device("meta")`` instead runs factories and initialisers
    through the reference decompositions, which import torch._dynamo (~1.5 s) on the path of every
    ``validate`` and ``run``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        if func is torch.empty:
            kwargs = {**kwargs, "device": "meta"}
        return func(*args, **kwargs)


def parameter_count(trial: TrialConfig) -> int:
    """Parameters of the trial's network, built on the meta device (no memory, no time)."""
    return _parameter_count(model_config_for(trial))


@functools.lru_cache(maxsize=256)  # a study's trials share a few networks
def _parameter_count(config: ModelConfig) -> int:
    with _ParametersOnMeta():
        return sum(p.numel() for p in DiscreteDiT(config).parameters())


def _positions(t: TrialConfig) -> int:
    """Transformer positions of the trial's network (FLOPs ~ parameters x positions)."""
    return t.task().positions(t, t.shape())


def training_chains(trainings: list[TrialConfig]) -> list[list[TrialConfig]]:
    """The trainings grouped by trajectory (``TrialConfig.trajectory_hash``), each group shortest
    first. A group trains as one job, each training continuing from the one before it, so that
    ``train.steps`` as an axis costs its largest value once; a training whose learning rate
    depends on its length is a group of its own."""
    groups: dict[str, list[TrialConfig]] = {}
    for t in trainings:
        groups.setdefault(t.trajectory_hash() or t.training_hash(), []).append(t)
    return [sorted(group, key=lambda t: t.train.steps) for group in groups.values()]


def make_plan(spec: StudySpec, study_dir: Path, store: CheckpointStore) -> Plan:
    trials = expand_grid(spec) if spec.search.algorithm == "grid" else sample_random(spec)
    trainings = list({t.training_hash(): t for t in trials if not t.sampler.is_baseline}.values())
    finished = Ledger(study_dir, heal=False).finished()  # the driver heals it, under its lock
    pending = [t for t in trials if t.trial_hash() not in finished]
    pending_trainings = [t for t in trainings if not store.is_done(t.training_hash())]
    train_flops = sample_flops = 0.0
    for chain in training_chains(pending_trainings):  # a chain trains its longest run's steps once
        t, shorter = chain[-1], store.shorter_run(chain[0], verified=False)
        steps = t.train.steps - (shorter[1] if shorter else 0)
        train_flops += (
            6 * parameter_count(t) * _positions(t) * t.train.batch_size * t.train.grad_accum * steps
        )
    for t in pending:
        guided = 2 if t.sampler.cfg_scale != 1 else 1
        calls = t.sampler.num_steps * guided * t.eval.num_samples * len(t.eval.sample_seeds)
        sample_flops += 2 * parameter_count(t) * _positions(t) * calls
    return Plan(trials, trainings, pending, pending_trainings, train_flops, sample_flops)


def measured_flops_per_second(size: int = 512, repeats: int = 5) -> float:
    """This machine's achieved float32 matmul throughput (a ceiling for the estimate)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)
