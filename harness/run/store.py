"""Content-addressed checkpoint store: one folder per distinct training config.

    <root>/<training_hash>/config.json      the training part of the trial config
    <root>/<training_hash>/checkpoint.pt    latest state (periodic, then final)
    <root>/<training_hash>/curve.jsonl      training curve, one line per logged step
    <root>/<training_hash>/done.json        written last: the training finished, and the
                                            checkpoint's size and sha256
    <root>/<training_hash>/continued_from.json   the shorter training of the same trajectory
                                            it started from (its hash and steps), if any
    <root>/<training_hash>/samples/<settings>/seed_<k>/samples.npz
    <root>/quarantine/<training_hash>.<UTC timestamp>/   a damaged checkpoint, its done.json, curve
    <root>/quarantine/samples/<training_hash>/<settings>/seed_<k>.<UTC timestamp>/   damaged samples

Trials that need the same checkpoint wait on a file lock instead of training twice; a
training interrupted at any point continues from its last periodic checkpoint. A finished
checkpoint is verified before it is handed out (size and sha256 against done.json, hashed once
per process and file; a done.json without them: the file loads); a damaged one is moved to the
quarantine and trained again, under the same lock. A training whose learning rate does not
depend on its number of steps (``TrialConfig.trajectory_hash``) starts from the finished
checkpoint of the longest shorter training of its trajectory, when the store has one: the state
it would have reached itself at that step, bit for bit. A launcher
(``harness.ray.distributed``) can run the training data parallel: every worker calls
``train_into`` with its rank, and rank 0 writes the checkpoint and the curve.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from harness.cache import (
    QUARANTINE,
    atomic_copy,
    atomic_write_text,
    quarantine,
    sha256_file,
    stamped,
    warn_quarantined,
)
from harness.config.trial import TrialConfig, trajectory_of
from harness.data.registry import open_split
from harness.data.shard_loader import RowStream
from models.backbone import ModelConfig
from models.checkpoint import CheckpointError, load_checkpoint
from models.data_parallel import DataParallel
from models.trainer import TrainConfig, train

if TYPE_CHECKING:
    import torch

# launcher(trial, folder): trains the trial's checkpoint into the store folder (harness.ray.distributed)
Launcher = Callable[[TrialConfig, Path], None]

CHECKPOINT, DONE, CONFIG, CONTINUED = "checkpoint.pt", "done.json", "config.json", "continued_from.json"
# What a training wrote, moved aside together when its checkpoint is damaged (config.json and the
# samples stay: the samples of finished trials keep pointing where they were).
TRAINING_OUTPUTS = (DONE, CHECKPOINT, "curve.jsonl", "heldout_ce.txt", CONTINUED)

# Keyed by (path, size, mtime_ns), so that many trials on one checkpoint check it once per process.
_hashed: dict[tuple[str, int, int], str] = {}  # -> sha256 of the file
_loaded: set[tuple[str, int, int]] = set()  # checkpoints seen to load


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
        return self.folder(training_hash) / CHECKPOINT

    def is_done(self, training_hash: str) -> bool:
        return (self.folder(training_hash) / DONE).is_file()

    def mark_done(self, training_hash: str, seconds: float) -> None:
        """Writes done.json: the training took ``seconds`` and left this checkpoint (size, sha256)."""
        path = self.checkpoint(training_hash)
        if not path.is_file():
            raise CheckpointError(f"the training finished without writing {str(path)!r}")
        size, digest = _sha256(path)
        done = {"seconds": seconds, "checkpoint": {"size": size, "sha256": digest}}
        atomic_write_text(self.folder(training_hash) / DONE, json.dumps(done))

    def verify(self, training_hash: str) -> str | None:
        """None when the finished checkpoint is intact; else what is wrong with it."""
        path = self.checkpoint(training_hash)
        try:
            expected = json.loads((self.folder(training_hash) / DONE).read_text()).get("checkpoint")
            if expected is None:  # a done.json from before checksums: the file must load
                return _load_problem(path)
            wanted = (expected["size"], expected["sha256"])
        except (OSError, ValueError, AttributeError, KeyError, TypeError) as err:
            return f"{DONE} is unreadable ({type(err).__name__}: {err})"
        try:
            actual = _sha256(path)
        except FileNotFoundError:
            return f"{CHECKPOINT} is missing"
        if actual != wanted:
            return f"{CHECKPOINT} ({actual[0]} bytes) does not match the size and sha256 in {DONE}"
        return None

    def heal(self, training_hash: str) -> str | None:
        """Under the training's lock: None when its finished checkpoint is intact (or it has none
        yet); else what was wrong, its outputs now in the quarantine (the training runs again)."""
        if not self.is_done(training_hash) or self.verify(training_hash) is None:
            return None
        with file_lock(self.folder(training_hash) / "lock"):
            problem = self.verify(training_hash) if self.is_done(training_hash) else None
            if problem is not None:
                self.quarantine(training_hash, problem)
            return problem

    def quarantine(self, training_hash: str, reason: str) -> Path:
        """Moves the training's outputs to ``<root>/quarantine/<training_hash>.<UTC timestamp>/``."""
        folder = self.folder(training_hash)
        target = stamped(self.root / QUARANTINE, training_hash)
        target.mkdir(parents=True)
        for name in TRAINING_OUTPUTS:  # done.json first: the training stops counting as finished
            if (folder / name).exists():
                os.replace(folder / name, target / name)
        warn_quarantined(folder, target, f"{reason}; its training runs again")
        return target

    def quarantine_samples(self, folder: Path, reason: str) -> Path | None:
        """Moves a damaged sample folder to ``<root>/quarantine/samples/<its path under root>``."""
        below = folder.parent.relative_to(self.root)
        return quarantine(folder, self.root / QUARANTINE / "samples" / below, reason)

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
        if self.is_done(h) and self.verify(h) is None:
            return self.checkpoint(h)
        with file_lock(folder / "lock"):
            if self._usable(h):  # another trial trained (or healed) it while we waited
                return self.checkpoint(h)
            atomic_write_text(folder / CONFIG, json.dumps(trial.training_part(), indent=2, sort_keys=True))
            started = time.perf_counter()
            if not self.checkpoint(h).is_file():  # a fresh start: from a shorter run if there is one
                self._continue_shorter(trial)

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
            self.mark_done(h, time.perf_counter() - started)
        return self.checkpoint(h)

    def shorter_run(self, trial: TrialConfig, verified: bool = True) -> tuple[str, int] | None:
        """(training hash, steps) of the longest finished, intact training of the trial's
        trajectory that is shorter than it; None when there is none (or nothing is shared).
        ``verified=False`` (a plan's estimate) takes done.json's word and hashes no checkpoint."""
        trajectory = trial.trajectory_hash()
        if trajectory is None:
            return None
        best: tuple[str, int] | None = None
        for config in self.root.glob(f"*/{CONFIG}"):
            h = config.parent.name
            if h == trial.training_hash() or not self.is_done(h):
                continue
            try:
                part = json.loads(config.read_text())
            except (OSError, ValueError):
                continue
            steps = part.get("train", {}).get("steps")
            if (
                not isinstance(steps, int)
                or not steps < trial.train.steps
                or trajectory_of(part) != trajectory
            ):
                continue
            if (best is None or steps > best[1]) and (not verified or self.verify(h) is None):
                best = (h, steps)
        return best

    def _continue_shorter(self, trial: TrialConfig) -> None:
        """Copies the shorter run's checkpoint and curve into the trial's folder (the training
        then resumes from them) and records where they came from."""
        found = self.shorter_run(trial)
        if found is None:
            return
        donor, steps = found
        folder = self.folder(trial.training_hash())
        curve = self.folder(donor) / "curve.jsonl"
        if curve.is_file():
            atomic_write_text(folder / "curve.jsonl", curve.read_text())
        atomic_copy(self.checkpoint(donor), self.checkpoint(trial.training_hash()))
        atomic_write_text(folder / CONTINUED, json.dumps({"training_hash": donor, "steps": steps}))

    def continued_from(self, training_hash: str) -> dict | None:
        """{training_hash, steps} of the shorter run a training started from; None if none."""
        path = self.folder(training_hash) / CONTINUED
        return json.loads(path.read_text()) if path.is_file() else None

    def _usable(self, training_hash: str) -> bool:
        """Under the lock: whether the checkpoint is finished and intact. A damaged finished one,
        or a periodic one that would not load to resume from, is moved to the quarantine."""
        path = self.checkpoint(training_hash)
        if self.is_done(training_hash):
            problem = self.verify(training_hash)
            if problem is None:
                return True
            self.quarantine(training_hash, problem)
        elif path.is_file() and (problem := _load_problem(path)) is not None:
            self.quarantine(training_hash, f"the periodic checkpoint cannot be resumed from: {problem}")
        return False

    def training_seconds(self, training_hash: str) -> float:
        path = self.folder(training_hash) / DONE
        return float(json.loads(path.read_text())["seconds"]) if path.is_file() else 0.0


def _key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _sha256(path: Path) -> tuple[int, str]:
    """(size, sha256) of a file, hashed once per process while its size and mtime stay the same."""
    key = _key(path)
    if key not in _hashed:
        _hashed[key] = sha256_file(path)
    return key[1], _hashed[key]


def _load_problem(path: Path) -> str | None:
    """None when the checkpoint loads (checked once per process and file), else the error."""
    try:
        key = _key(path)
    except FileNotFoundError:
        return f"{CHECKPOINT} is missing"
    if key not in _loaded:
        try:
            load_checkpoint(path)
        except CheckpointError as err:
            return str(err)
        _loaded.add(key)
    return None


def train_into(
    trial: TrialConfig,
    folder: Path,
    device: str | torch.device = "cpu",
    *,
    parallel: DataParallel | None = None,
    on_log: Callable[[int, dict], None] | None = None,
) -> None:
    """Trains (or resumes) the trial's checkpoint in its store folder; the only process, or rank 0
    of ``parallel``, appends each logged step to ``curve.jsonl``. Every rank loads the data, or,
    for a dataset that streams (shard folders), its conditions, and reads its rows of each
    micro-batch from disk (``harness.data.shard_loader``)."""
    data = open_split(trial.data.name, "train", **trial.data.options)
    tokens = data.tokens if data.rows is None else RowStream(data.rows)
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
            tokens,
            trial.task().training_conditions(model_config, data),
            checkpoint_path=folder / "checkpoint.pt",
            device=device,
            log=log,
            log_every=max(1, trial.train.steps // 20),
            parallel=parallel,
        )
