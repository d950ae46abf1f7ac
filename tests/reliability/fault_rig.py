"""The rig of the fault scenarios (tests/reliability/faults.py): the tiny study every scenario runs,
the ``run_study.py`` driver process and the workspace that starts it (its folder, evaluator cache
and process tag), and the files of one study under a runs root with the plan they must match.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from conftest import PYTHON, REPO, kill_tagged, study_file, subprocess_env

from harness.run.ledger import TrialRecord
from harness.runner import prepare

STEPS, PERIODIC = 60, 20  # train.steps and train.checkpoint_every of every scenario's study
SPACE = {"sampler.num_steps": [2, 3, 4]}  # three sampling trials of the one checkpoint
STUDY_FIELDS = {
    "overrides": {"train.steps": STEPS, "train.checkpoint_every": PERIODIC},
    "space": SPACE,
    "concurrency": 1,
}
MARKER_TIMEOUT, CLI_TIMEOUT = 240.0, 300.0  # seconds: a study here takes 40-60 s on 2 busy cores
POLL = 0.02  # seconds between looks at the filesystem while waiting to strike


class NotLandedError(RuntimeError):
    """The driver ended (or the moment passed) before the fault could be injected where intended."""


class DriverTimeoutError(RuntimeError):
    """A command ran past CLI_TIMEOUT: the harness hung (it was killed, with everything it started)."""


class SkipScenario(Exception):  # noqa: N818 (a skip, not an error)
    """The machine cannot inject this fault (e.g. no permission to mount a filesystem)."""


# ---- the processes -------------------------------------------------------------------------------


@dataclass
class Driver:
    """One ``run_study.py`` process in its own session; stdout and stderr go to files."""

    process: subprocess.Popen
    out: Path
    err: Path
    tag: str
    command: str

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = MARKER_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise NotLandedError(
                    f"the driver exited {self.process.returncode} before {what}{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise NotLandedError(f"waited {timeout:.0f} s for {what}{self.tail()}")
            time.sleep(POLL)

    def kill(self) -> None:
        """SIGKILL to the driver's process group (its session), then to every tagged process."""
        with contextlib.suppress(ProcessLookupError):  # the group is gone already
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)
        kill_tagged(self.tag)

    def finish(self, timeout: float = CLI_TIMEOUT) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise DriverTimeoutError(f"the driver ran past {timeout:.0f} s{self.tail()}") from None

    def tail(self) -> str:
        return f"\n--- stdout:\n{self.stdout[-1500:]}\n--- stderr:\n{self.stderr[-2500:]}"


@dataclass
class Workspace:
    """A scenario's folder, the evaluator cache its drivers use, and the tag its processes carry."""

    folder: Path
    cache: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex)
    drivers: int = 0

    def study(self, name: str, **fields) -> Path:
        overrides = {**STUDY_FIELDS["overrides"], **fields.pop("overrides", {})}
        return study_file(self.folder / "studies", name, **{**STUDY_FIELDS, **fields, "overrides": overrides})

    def start(self, command: str, target: Path | str, root: Path) -> Driver:
        self.drivers += 1
        out, err = (self.folder / f"driver{self.drivers}-{command}.{s}" for s in ("out", "err"))
        env = {**subprocess_env(self.tag), "UNMASK_CACHE": str(self.cache)}
        for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):  # the scenario's own store and Ray only
            env.pop(key, None)
        argv = [PYTHON, "run_study.py", command, str(target), "--runs-root", str(root)]
        with out.open("w") as stdout, err.open("w") as stderr:
            process = subprocess.Popen(
                [*argv, "--tracking-uri", uri(root)],
                cwd=REPO,
                env=env,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        return Driver(process, out, err, self.tag, command)

    def cli(self, command: str, target: Path | str, root: Path) -> Driver:
        """Runs a command to its end (killed past CLI_TIMEOUT: DriverTimeoutError)."""
        driver = self.start(command, target, root)
        driver.finish()
        return driver

    def private_cache(self) -> Path:
        """A copy of the warm cache for a scenario that damages it; later drivers use the copy."""
        copy = self.folder / "cache"
        shutil.copytree(self.cache, copy, ignore=shutil.ignore_patterns("quarantine"))
        self.cache = copy
        return copy


def uri(root: Path) -> str:
    return f"sqlite:///{root.resolve()}/mlflow.db"


# ---- what is on disk -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Study:
    """The files of one study under a runs root, and its plan (made before anything ran)."""

    root: Path
    name: str
    trial_hashes: tuple[str, ...]
    training_hash: str

    @classmethod
    def plan(cls, study: Path, root: Path) -> Study:
        run = prepare(study, root)
        (training,) = run.plan.trainings
        hashes = tuple(sorted(t.trial_hash() for t in run.plan.trials))
        return cls(root, run.spec.name, hashes, training.training_hash())

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def store(self) -> Path:
        return self.root / "checkpoints"

    @property
    def training(self) -> Path:
        return self.store / self.training_hash

    def record(self, trial_hash: str) -> Path:
        return self.dir / "ledger" / f"{trial_hash}.json"

    def records(self) -> list[Path]:
        return sorted((self.dir / "ledger").glob("*.json"))

    def done(self) -> bool:
        return (self.training / "done.json").is_file()

    def curve_steps(self, curve: Path | None = None) -> list[int]:
        path = curve or self.training / "curve.jsonl"
        lines = path.read_text().splitlines() if path.is_file() else []
        return [json.loads(line)["step"] for line in lines if line.endswith("}")]  # a line being written

    def samples(self) -> list[Path]:
        return sorted(self.training.glob("samples/*/seed_*/samples.npz"))

    def finished_files(self) -> dict[Path, tuple[int, str]]:
        """(mtime, sha256) of each finished record and of the finished training's outputs."""
        paths = [p for p in self.records() if record_status(p) == "finished"]
        if self.done():
            paths += [self.training / n for n in ("done.json", "checkpoint.pt", "curve.jsonl")]
        return fingerprints(paths)


def fingerprints(paths: list[Path]) -> dict[Path, tuple[int, str]]:
    """(mtime, sha256) of each file: what ``compare`` checks later."""
    return {p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in paths}


def record_status(path: Path) -> str | None:
    try:
        return TrialRecord.from_json(path.read_text()).status
    except (OSError, ValueError):
        return None
