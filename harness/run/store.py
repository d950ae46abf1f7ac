"""Content-addressed checkpoint store: one folder per distinct training config.

    <root>/<training_hash>/config.json      the training part of the trial config
    <root>/<training_hash>/checkpoint.pt    latest state (periodic, then final)
    <root>/<training_hash>/curve.jsonl      training curve, one line per logged step
    <root>/<training_hash>/done.json        written last: the training finished
    <root>/<training_hash>/samples/<settings>/seed_<k>/samples.npz

Trials that need the same checkpoint wait on a file lock instead of training twice; a
training interrupted at any point continues from its last periodic checkpoint. A launcher
(``harness.ray.distributed``) can run the training data parallel: every worker calls
``train_into`` with its rank, and rank 0 writes the checkpoint and the curve.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from harness.cache import atomic_write_text
from harness.config.trial import TrialConfig
from harness.data.registry import load_dataset
from models.backbone import ModelConfig
from models.data_parallel import DataParallel
from models.trainer import TrainConfig, train

if TYPE_CHECKING:
    import torch

# launcher(trial, folder): trains the trial's checkpoint into the store folder (harness.ray.distributed)
Launcher = Callable[[TrialConfig, Path], None]


def model_config_for(trial: TrialConfig) -> ModelConfig:
    """The network's config: the trial's model section and what its task derives from the data."""
    return trial.task().model_config(trial, trial.shape())


def train_config_for(trial: TrialConfig) -> TrainConfig:
    return TrainConfig(seed=trial.seed, **trial.train.model_dump())


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class CheckpointStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def folder(self, training_hash: str) -> Path:
        return self.root / training_hash

    def checkpoint(self, training_hash: str) -> Path:
        return self.folder(training_hash) / "checkpoint.pt"

    def is_done(self, training_hash: str) -> bool:
        return (self.folder(training_hash) / "done.json").is_file()

    def curve(self, training_hash: str) -> list[tuple[int, dict]]:
        """The training curve, one entry per step (a step redone after a resume keeps its last value)."""
        path = self.folder(training_hash) / "curve.jsonl"
        if not path.is_file():
            return []
        by_step = {}
        for line in path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                by_step[entry["step"]] = entry["metrics"]
        return sorted(by_step.items())

    def ensure(
        self,
        trial: TrialConfig,
        device: str = "cpu",
        progress: bool = False,
        on_log: Callable[[int, dict], None] | None = None,
        launcher: Launcher | None = None,
    ) -> Path:
        """The finished checkpoint of the trial's training config, training it if needed.

        ``on_log(step, metrics)`` is called at each logged step (about 20 per training) when
        the training runs here; ``launcher`` runs it elsewhere instead (data parallel).
        """
        h = trial.training_hash()
        folder = self.folder(h)
        if self.is_done(h):
            return self.checkpoint(h)
        with file_lock(folder / "lock"):
            if self.is_done(h):  # another trial trained it while we waited
                return self.checkpoint(h)
            atomic_write_text(
                folder / "config.json", json.dumps(trial.training_part(), indent=2, sort_keys=True)
            )
            started = time.perf_counter()

            def log(step: int, metrics: dict) -> None:
                if on_log is not None:
                    on_log(step, metrics)
                if progress:
                    print(
                        f"    [{h[:8]}] step {step}/{trial.train.steps} loss {metrics['train/loss']:.3f}",
                        flush=True,
                    )

            if launcher is None:
                train_into(trial, folder, device, on_log=log)
            else:
                launcher(trial, folder)
            atomic_write_text(folder / "done.json", json.dumps({"seconds": time.perf_counter() - started}))
        return self.checkpoint(h)

    def training_seconds(self, training_hash: str) -> float:
        path = self.folder(training_hash) / "done.json"
        return float(json.loads(path.read_text())["seconds"]) if path.is_file() else 0.0


def train_into(
    trial: TrialConfig,
    folder: Path,
    device: str | torch.device = "cpu",
    *,
    parallel: DataParallel | None = None,
    on_log: Callable[[int, dict], None] | None = None,
) -> None:
    """Trains (or resumes) the trial's checkpoint in its store folder; the only process, or rank 0
    of ``parallel``, appends each logged step to ``curve.jsonl``. Every rank loads the data."""
    data = load_dataset(trial.data.name, "train", **trial.data.options)
    model_config = model_config_for(trial)
    writes = parallel is None or parallel.rank == 0
    with (folder / "curve.jsonl").open("a") if writes else nullcontext() as curve:

        def log(step: int, metrics: dict) -> None:
            if curve is not None:
                curve.write(json.dumps({"step": step, "metrics": metrics}) + "\n")
                curve.flush()
            if on_log is not None:
                on_log(step, metrics)

        train(
            model_config,
            train_config_for(trial),
            data.tokens,
            trial.task().training_conditions(model_config, data),
            checkpoint_path=folder / "checkpoint.pt",
            device=device,
            log=log,
            log_every=max(1, trial.train.steps // 20),
            parallel=parallel,
        )
