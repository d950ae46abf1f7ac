"""Faults the harness promises to survive (README "Failure and recovery"), run through the CLI.

Each scenario runs ``run_study.py`` on a tiny digits study (one training of 60 steps with a
periodic checkpoint at 20 and 40, three sampling trials, one at a time) in its own session, hits
it with one fault, and checks what must hold afterwards:

- every planned trial has one ledger record and one MLflow child run (one per trial hash), in the
  state the study should end in (finished; failed for a diverged training);
- the ledger records and the finished training's done.json, checkpoint and curve that existed
  right after the fault are byte-identical at the end (except what the scenario damaged);
- no training ran to its end twice: a curve logs its final step once per completed training, and
  the store's quarantine keeps the curve of a training redone on purpose;
- after ``resume`` the study is complete: exit 0, no MLflow invocation left RUNNING, no Ray
  process left behind, nothing non-finite in the ledger, the curves or MLflow.

A scenario returns a Tally: its problems, and how many results were lost (a planned trial without
its record or child run, a finished file changed or gone) or duplicated (a second child run of a
trial, a training completed twice). tests/reliability/test_faults.py runs each scenario as a slow
test; benchmarks/faults.py runs them all and prints the totals. Processes are ended by their PID
or process group: the driver's session, then whatever carries the scenario's environment tag.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from conftest import (
    PYTHON,
    REPO,
    kill_tagged,
    process_name,
    study_file,
    subprocess_env,
    tagged_pids,
    wait_untagged,
)
from mlflow import MlflowClient

from harness.evaluation import Evaluator
from harness.run.ledger import TrialRecord, strict_loads
from harness.run.store import CheckpointStore
from harness.runner import prepare
from harness.tracking.schema import ROLE_INVOCATION, TAG_ROLE, TAG_TRIAL_HASH, experiment_name, trial_runs

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


@dataclass
class Tally:
    problems: list[str] = field(default_factory=list)
    lost: int = 0
    duplicated: int = 0

    def expect(self, ok: bool, problem: str) -> bool:
        if not ok:
            self.problems.append(problem)
        return ok

    def lose(self, problem: str, count: int = 1) -> None:
        """``count`` results lost: a trial without its record or child run, a finished file changed."""
        self.problems.append(problem)
        self.lost += count

    def duplicate(self, problem: str, count: int = 1) -> None:
        """``count`` results duplicated: a second child run of a trial, a training completed twice."""
        self.problems.append(problem)
        self.duplicated += count

    @property
    def survived(self) -> bool:
        return not self.problems and not self.lost and not self.duplicated


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


def expect_exit(tally: Tally, driver: Driver, code: int, what: str) -> bool:
    return tally.expect(
        driver.process.returncode == code,
        f"{what} exited {driver.process.returncode}, expected {code}{driver.tail()}",
    )


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
        paths = [p for p in self.records() if _status(p) == "finished"]
        if self.done():
            paths += [self.training / n for n in ("done.json", "checkpoint.pt", "curve.jsonl")]
        return fingerprints(paths)


def fingerprints(paths: list[Path]) -> dict[Path, tuple[int, str]]:
    """(mtime, sha256) of each file: what ``compare`` checks later."""
    return {p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in paths}


def _status(path: Path) -> str | None:
    try:
        return TrialRecord.from_json(path.read_text()).status
    except (OSError, ValueError):
        return None


# ---- the checks ----------------------------------------------------------------------------------


def compare(tally: Tally, kept: dict[Path, tuple[int, str]], exempt: set[Path] = frozenset()) -> None:
    """Everything in ``kept`` but ``exempt`` is as it was: a change or loss counts as a lost result."""
    for path, (mtime, digest) in sorted(kept.items()):
        if path in exempt:
            continue
        if not path.is_file():
            tally.lose(f"a finished file is gone: {path}")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            tally.lose(f"a finished file changed: {path}")
        else:
            tally.expect(path.stat().st_mtime_ns == mtime, f"a finished file was rewritten: {path}")


def audit(tally: Tally, study: Study, status: str = "finished", trainings: int = 1) -> None:
    """The end state: each trial once in the ledger and in MLflow with ``status``, nothing
    non-finite recorded, and ``trainings`` completed trainings (quarantined ones included)."""
    audit_ledger(tally, study, status)
    audit_mlflow(tally, study, status)
    audit_trainings(tally, study, status, trainings)


def audit_ledger(tally: Tally, study: Study, status: str) -> None:
    found = {}
    for path in study.records():
        try:
            found[path.stem] = TrialRecord.from_json(path.read_text())  # strict: NaN is refused
        except ValueError as err:
            tally.expect(False, f"an unreadable ledger record at the end: {path} ({err})")
    for h in study.trial_hashes:
        record = found.get(h)
        if record is None:
            tally.lose(f"trial {h} has no ledger record")
        elif record.status != status:
            tally.lose(f"trial {h} is {record.status}, expected {status}: {record.error}")
    extra = sorted(set(found) - set(study.trial_hashes))
    tally.expect(not extra, f"ledger records of trials outside the plan: {extra}")


def audit_mlflow(tally: Tally, study: Study, status: str) -> None:
    client = MlflowClient(tracking_uri=uri(study.root))
    experiment = client.get_experiment_by_name(experiment_name(study.name))
    if experiment is None:
        tally.lose(f"no MLflow experiment for {study.name!r}", len(study.trial_hashes))
        return
    runs = list(trial_runs(client, experiment.experiment_id))
    count = Counter(r.data.tags[TAG_TRIAL_HASH] for r in runs)
    for h in study.trial_hashes:
        if count[h] == 0:
            tally.lose(f"trial {h} has no MLflow child run")
        elif count[h] > 1:
            tally.duplicate(f"trial {h} has {count[h]} MLflow child runs", count[h] - 1)
    wanted = {"finished": "FINISHED", "failed": "FAILED"}[status]
    statuses = sorted({r.info.status for r in runs})
    tally.expect(statuses == [wanted], f"child runs are {statuses}, expected all {wanted}")
    for run in runs:
        bad = {k: v for k, v in run.data.metrics.items() if not math.isfinite(v)}
        tally.expect(not bad, f"non-finite MLflow metrics in run {run.info.run_id}: {bad}")
    invocations = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{TAG_ROLE}` = '{ROLE_INVOCATION}'"
    )
    running = [r.info.run_id for r in invocations if r.info.status == "RUNNING"]
    tally.expect(not running, f"MLflow invocations left RUNNING: {running}")


def invocation_statuses(study: Study) -> list[str]:
    """The statuses of the study's MLflow parent runs (one per run or resume), oldest first."""
    client = MlflowClient(tracking_uri=uri(study.root))
    experiment = client.get_experiment_by_name(experiment_name(study.name))
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{TAG_ROLE}` = '{ROLE_INVOCATION}'"
    )
    return [r.info.status for r in sorted(runs, key=lambda r: r.info.start_time)]


def audit_trainings(tally: Tally, study: Study, status: str, trainings: int) -> None:
    curves = [
        study.training / "curve.jsonl",
        *sorted(study.store.glob(f"quarantine/{study.training_hash}.*/curve.jsonl")),
    ]
    for curve in (c for c in curves if c.is_file()):
        for line in curve.read_text().splitlines():
            try:
                strict_loads(line)
            except ValueError as err:
                tally.expect(False, f"{curve}: a line that is not strict JSON ({err}): {line[:120]}")
    completed = sum(study.curve_steps(c).count(STEPS) for c in curves if c.is_file())
    if status == "finished":
        problem = CheckpointStore(study.store).verify(study.training_hash) if study.done() else "no done.json"
        tally.expect(problem is None, f"the training's checkpoint is not intact: {problem}")
    else:
        tally.expect(not study.done(), "a diverged training was marked done")
    if completed > trainings:
        tally.duplicate(f"{completed} completed trainings, expected {trainings}", completed - trainings)
    tally.expect(completed >= trainings, f"{completed} completed training(s), expected {trainings}")


def finished_cleanly(tally: Tally, driver: Driver, study: Study) -> None:
    """A final run or resume: exit 0, every trial finished, its Ray gone."""
    total = len(study.trial_hashes)
    if expect_exit(tally, driver, 0, f"the last {driver.command}"):
        tally.expect(
            f"{total}/{total} trials finished" in driver.stdout, f"no '{total}/{total}'{driver.tail()}"
        )
    left = wait_untagged(driver.tag, timeout=30)
    tally.expect(not left, f"processes left running after a clean exit: {left}")


# ---- 1. SIGKILL of the driver ---------------------------------------------------------------------


@dataclass(frozen=True)
class KillPoint:
    moment: str  # what is true when the driver is killed
    ready: Callable[[Study], bool]  # polled until it holds, then the driver is killed
    landed: Callable[[Study], bool]  # checked after the kill: the moment had not passed


KILL_POINTS = {
    "training": KillPoint(
        f"the training is past its periodic checkpoint at step {PERIODIC}, not done",
        lambda s: max(s.curve_steps(), default=0) > PERIODIC + 5,
        lambda s: not s.done(),
    ),
    "sampling": KillPoint(
        "the first trial's samples are on disk, its record is not",
        lambda s: bool(s.samples()),
        lambda s: s.done() and not s.records(),
    ),
    "between trials": KillPoint(
        "the first ledger record has appeared",
        lambda s: bool(s.records()),
        lambda s: 0 < len(s.records()) < len(s.trial_hashes),
    ),
    "report": KillPoint(
        "every trial is recorded and the report's figures are being written",
        lambda s: (s.dir / "report_files").is_dir(),
        lambda s: not (s.dir / "report.html").exists(),
    ),
}


def kill_and_resume(ws: Workspace, point: str) -> Tally:
    tally, kill = Tally(), KILL_POINTS[point]
    root, path = ws.folder / "runs", ws.study(f"kill-{point.replace(' ', '-')}")
    study = Study.plan(path, root)
    driver = ws.start("run", path, root)
    driver.wait_for(lambda: kill.ready(study), kill.moment)
    driver.kill()
    if not kill.landed(study):
        raise NotLandedError(f"the kill landed past the moment ({kill.moment}){driver.tail()}")
    kept, curve_lines, trained = study.finished_files(), len(study.curve_steps()), study.done()
    resumed = ws.cli("resume", study.name, root)
    finished_cleanly(tally, resumed, study)
    compare(tally, kept)
    audit(tally, study)
    _resume_log(tally, resumed, study, trained)
    if point == "training":  # the resume continued from the periodic checkpoint, not from step 0
        redone = study.curve_steps()[curve_lines:]
        tally.expect(bool(redone) and min(redone) > PERIODIC, f"resumed training logged steps {redone}")
    return tally


def _resume_log(tally: Tally, resumed: Driver, study: Study, trained: bool) -> None:
    """The resume ended the killed invocation, and trained only if the kill came before done.json."""
    out, statuses = resumed.stdout, invocation_statuses(study)
    tally.expect(
        "marked 1 invocation(s) left RUNNING" in out and statuses == ["KILLED", "FINISHED"],
        f"invocations {statuses} (the killed one is KILLED, the resume FINISHED){resumed.tail()}",
    )
    tally.expect(
        ("[train" in out) != trained, f"training dispatched on resume: {'[train' in out}{resumed.tail()}"
    )


def trial_worker(tag: str) -> int | None:
    """The pid of a Ray worker hosting a Tune trial of the scenario (``ray::ImplicitFunc``)."""
    return next((p for p in tagged_pids(tag) if process_name(p).startswith("ray::ImplicitFunc")), None)


def kill_worker(ws: Workspace, phase: str, retries: int) -> Tally:
    """SIGKILL of the Ray worker running the training (past its periodic checkpoint) or the first
    sampling trial. Whatever Tune does next (retry it, with ``max_failures: 1``; or not, where a
    sampling trial trains what the training phase lost), no trial is lost or run twice and the
    training resumes from its periodic checkpoint. A sampling trial killed without a retry has no
    record: the driver exits 3 saying its worker died, and resume finishes the study."""
    tally = Tally()
    root, path = ws.folder / "runs", ws.study(f"worker-{phase}-{retries}", max_failures=retries)
    study = Study.plan(path, root)
    driver = ws.start("run", path, root)
    if phase == "training":
        driver.wait_for(lambda: max(study.curve_steps(), default=0) > PERIODIC + 5, "training past step 25")
        landed = not study.done()
        pid = trial_worker(ws.tag)
    else:  # the first trial's samples are on disk, its record is not: it is being scored
        driver.wait_for(lambda: bool(study.samples()), "the first trial's samples")
        pid, landed = trial_worker(ws.tag), not study.records()
    if pid is None or not landed:
        raise NotLandedError(f"no {phase} worker to kill in time{driver.tail()}")
    os.kill(pid, signal.SIGKILL)
    driver.finish()
    if phase == "training" or retries:
        finished_cleanly(tally, driver, study)
    else:
        expect_exit(tally, driver, 3, "the driver whose sampling worker was killed")
        tally.expect(
            "1 of 3 trials failed" in driver.stderr
            and "without one (its worker died)" in driver.stderr
            and "Traceback" not in driver.stderr.split("error: ")[-1],
            f"the failure does not say the worker died{driver.tail()}",
        )
        finished_cleanly(tally, ws.cli("resume", study.name, root), study)
    audit(tally, study)
    redone = [s for s in study.curve_steps() if s <= PERIODIC]
    tally.expect(len(redone) == len(set(redone)), f"the training restarted from step 0: {redone}")
    return tally


# ---- 2. a damaged file of each stored kind ----------------------------------------------------


@dataclass(frozen=True)
class Damage:
    """What a corruption did: the path the resume must name, the finished files it may replace,
    and how many trainings must have completed in the end (2: the damaged one, redone once)."""

    named: Path
    exempt: frozenset[Path]
    quarantined: tuple[Path, str]  # (a folder, a glob under it) that must match after the resume
    trainings: int = 1


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damage_record(ws: Workspace, study: Study, victim: str) -> Damage:
    truncate(study.record(victim))
    moved = (study.dir / "quarantine" / "ledger", f"{victim}.json.*")
    return Damage(study.record(victim), frozenset({study.record(victim)}), moved)


def _damage_samples(ws: Workspace, study: Study, victim: str) -> Damage:
    record = json.loads(study.record(victim).read_text())
    folder = Path(record["artifacts"]["samples_dir"]) / "seed_0"
    data = bytearray((folder / "samples.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    (folder / "samples.npz").write_bytes(bytes(data))
    moved = (study.store / "quarantine" / "samples" / study.training_hash, "samples/*/seed_0.*")
    return Damage(folder, frozenset({study.record(victim)}), moved)


def _damage_checkpoint(ws: Workspace, study: Study, victim: str) -> Damage:
    """A truncated checkpoint, read when a trial needs it: the victim's record is removed too."""
    truncate(study.training / "checkpoint.pt")
    study.record(victim).unlink()
    outputs = {study.training / n for n in ("done.json", "checkpoint.pt", "curve.jsonl")}
    return Damage(
        study.training,
        frozenset({study.record(victim), *outputs}),
        (study.store / "quarantine", f"{study.training_hash}.*/checkpoint.pt"),
        trainings=2,
    )


def _damage_finished_checkpoint(ws: Workspace, study: Study, victim: str) -> Damage:
    """A truncated checkpoint of a finished study: no trial needs it, resume checks it all the same."""
    truncate(study.training / "checkpoint.pt")
    outputs = {study.training / n for n in ("done.json", "checkpoint.pt", "curve.jsonl")}
    return Damage(
        study.training,
        frozenset(outputs),
        (study.store / "quarantine", f"{study.training_hash}.*/checkpoint.pt"),
        trainings=2,
    )


def _damage_cache(ws: Workspace, study: Study, victim: str) -> Damage:
    """Truncated reference statistics, read when a trial is scored: the victim's record is removed."""
    cache = ws.private_cache()
    (entry,) = sorted(cache.glob("reference/digits-cnn-*.pt"))
    truncate(entry)
    study.record(victim).unlink()
    return Damage(entry, frozenset({study.record(victim)}), (cache / "quarantine" / "reference", "*"))


DAMAGES = {
    "ledger record": _damage_record,
    "samples file": _damage_samples,
    "checkpoint": _damage_checkpoint,
    "checkpoint of a finished study": _damage_finished_checkpoint,
    "cache entry": _damage_cache,
}


def corrupt_and_resume(ws: Workspace, kind: str) -> Tally:
    tally = Tally()
    root, path = ws.folder / "runs", ws.study(f"corrupt-{kind.replace(' ', '-')}")
    study = Study.plan(path, root)
    if not expect_exit(tally, ws.cli("run", path, root), 0, "the first run"):
        return tally
    kept = study.finished_files()
    damage = DAMAGES[kind](ws, study, study.trial_hashes[0])
    resumed = ws.cli("resume", study.name, root)
    finished_cleanly(tally, resumed, study)
    compare(tally, kept, damage.exempt)
    audit(tally, study, trainings=damage.trainings)
    tally.expect(
        str(damage.named) in resumed.stderr,
        f"the resume's stderr does not name {damage.named}{resumed.tail()}",
    )
    folder, pattern = damage.quarantined
    tally.expect(any(folder.glob(pattern)), f"nothing quarantined at {folder / pattern}")
    return tally


# ---- 3. concurrent drivers ----------------------------------------------------------------------


def _holder_pid(lock: Path) -> int | None:
    try:
        return json.loads(lock.read_text()).get("pid")
    except (OSError, ValueError, AttributeError):
        return None


def second_driver(ws: Workspace) -> Tally:
    """A second driver of a running study exits 4 naming the first; the first finishes."""
    tally = Tally()
    root, path = ws.folder / "runs", ws.study("contended")
    study = Study.plan(path, root)
    first = ws.start("run", path, root)
    first.wait_for(lambda: _holder_pid(study.dir / "driver.lock") == first.process.pid, "the study's lock")
    second = ws.cli("run", path, root)
    if first.process.poll() is not None:
        raise NotLandedError(f"the first driver ended before the second was refused{first.tail()}")
    expect_exit(tally, second, 4, "the second driver")
    named = f"study 'contended' is being run by pid {first.process.pid}"
    tally.expect(named in second.stderr and "Traceback" not in second.stderr, f"refusal:{second.tail()}")
    first.finish()
    finished_cleanly(tally, first, study)
    audit(tally, study)
    statuses = invocation_statuses(study)
    tally.expect(statuses == ["FINISHED"], f"invocations {statuses}: the refused driver started one")
    return tally


def two_studies_one_store(ws: Workspace) -> Tally:
    """Two studies, one training config, one runs root and one new MLflow store, at once."""
    tally, root = Tally(), ws.folder / "runs"
    paths = [ws.study(n, space={"sampler.num_steps": s}) for n, s in (("left", [2, 3]), ("right", [4, 5]))]
    studies = [Study.plan(p, root) for p in paths]
    drivers = [ws.start("run", p, root) for p in paths]
    for driver in drivers:
        driver.finish()
    for driver, study in zip(drivers, studies, strict=True):
        finished_cleanly(tally, driver, study)
        audit(tally, study)  # one training between them: the curve logs its final step once
    return tally


# ---- 4. a full disk ---------------------------------------------------------------------------


def mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        raise SkipScenario(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")


def unmount(folder: Path) -> None:
    if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(folder)], check=True)  # a file still open: detach it


def fill(folder: Path) -> Path:
    """Writes ``folder/filler`` until the filesystem has no block left; returns it."""
    path = folder / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (1 << 20, 4096, 1):
            block = b"\0" * chunk
            try:
                while True:
                    os.write(fd, block)
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return path


def disk_full(ws: Workspace) -> Tally:
    """The disk fills once the first trial is recorded: exit 5 naming a path, nothing finished
    damaged; once space is freed, resume finishes the study."""
    disk = ws.folder / "disk"
    mount_tmpfs(disk, "64m")
    try:
        return _disk_full(ws, disk)
    finally:
        kill_tagged(ws.tag)
        unmount(disk)


def _disk_full(ws: Workspace, disk: Path) -> Tally:
    tally = Tally()
    root, path = disk / "runs", ws.study("disk-full")
    study = Study.plan(path, root)
    driver = ws.start("run", path, root)
    driver.wait_for(lambda: bool(study.records()), "the first ledger record")
    filler = fill(disk)
    driver.finish()
    expect_exit(tally, driver, 5, "the driver on a full disk")
    error = next((line for line in driver.stderr.splitlines() if line.startswith("error: ")), "")
    tally.expect(
        error.startswith(f"error: {root.resolve()}")
        and "(ENOSPC)" in error
        and "Traceback" not in driver.stderr,
        f"not one error naming a path under the runs root and ENOSPC{driver.tail()}",
    )
    kept = study.finished_files()
    broken = [p for p in study.records() if _status(p) is None]
    tally.expect(not broken, f"records damaged by the full disk: {broken}")
    tally.expect(bool(kept), "no finished record survived the full disk")
    filler.unlink()
    resumed = ws.cli("resume", study.name, root)
    finished_cleanly(tally, resumed, study)
    compare(tally, kept)
    audit(tally, study)
    return tally


# ---- 5. a training that diverges ----------------------------------------------------------------


def nan_training(ws: Workspace) -> Tally:
    """lr = 1e30: the gradient norm overflows at step 2. Every trial is failed "diverged", nothing
    non-finite is recorded, the checkpoint is never done, the study exits 3."""
    tally, root = Tally(), ws.folder / "runs"
    path = ws.study("diverged", overrides={"train.lr": 1e30}, space={"sampler.num_steps": [2, 3]})
    study = Study.plan(path, root)
    driver = ws.cli("run", path, root)
    expect_exit(tally, driver, 3, "the diverged study")
    total = len(study.trial_hashes)
    named = all(str(study.record(h)) in driver.stderr for h in study.trial_hashes)
    tally.expect(f"{total} of {total} trials failed" in driver.stderr and named, f"stderr:{driver.tail()}")
    for record in study.records():
        error = json.loads(record.read_text()).get("error") or ""
        tally.expect("training diverged at step" in error, f"{record}: error {error[:300]!r}")
    audit(tally, study, status="failed", trainings=0)
    return tally


# ---- the scenarios ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownBug:
    """A harness bug a scenario exposes: the problems it causes start with one of ``problems``."""

    reason: str
    problems: tuple[str, ...]

    def explains(self, problem: str) -> bool:
        return problem.startswith(self.problems)


class KnownBugError(AssertionError):
    """The scenario failed by its known bug alone (tests mark it xfail(strict=True, raises=this))."""


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[Workspace], Tally]
    bug: KnownBug | None = None  # the scenario is expected to fail by this bug, and by nothing else


SCENARIOS = [
    *(Scenario(f"SIGKILL of the driver: {p}", lambda ws, p=p: kill_and_resume(ws, p)) for p in KILL_POINTS),
    *(
        Scenario(
            f"SIGKILL of a Ray {phase} worker, {retries} retries",
            lambda ws, p=phase, r=retries: kill_worker(ws, p, r),
        )
        for phase, retries in (("training", 1), ("training", 0), ("sampling", 0))
    ),
    *(Scenario(f"corrupt {k}, then resume", lambda ws, k=k: corrupt_and_resume(ws, k)) for k in DAMAGES),
    Scenario("a second driver of a running study", second_driver),
    Scenario("two studies on one new MLflow store", two_studies_one_store),
    Scenario("disk full mid-study, then resume", disk_full),
    Scenario("a training that diverges (lr 1e30)", nan_training),
]


@dataclass
class Result:
    scenario: Scenario
    tally: Tally
    seconds: float
    skipped: str | None = None


def run_scenario(scenario: Scenario, folder: Path, cache: Path) -> Result:
    """Runs one scenario in the empty ``folder``; every process it started is ended after it."""
    folder.mkdir(parents=True, exist_ok=True)
    ws = Workspace(folder, cache)
    started = time.perf_counter()
    try:
        tally, skipped = scenario.run(ws), None
    except SkipScenario as skip:
        tally, skipped = Tally(), str(skip)
    except NotLandedError as err:
        tally, skipped = Tally([f"the fault was not injected as intended: {err}"]), None
    except Exception:  # a scenario that breaks is reported, and the next one runs
        tally, skipped = Tally([f"the scenario raised:\n{traceback.format_exc()}"]), None
    finally:
        kill_tagged(ws.tag)
    return Result(scenario, tally, time.perf_counter() - started, skipped)


def warm_cache(cache: Path) -> Path:
    """The digits classifier and reference statistics in ``cache``, built once before the drivers."""
    Evaluator("digits", metrics=["fid"], cache_dir=cache).reference_stats  # noqa: B018
    return cache


def verdict(result: Result) -> None:
    """Raises AssertionError naming what went wrong, or KnownBugError when the scenario's known bug
    explains every problem (and nothing was lost or duplicated); returns when it survived."""
    tally, bug = result.tally, result.scenario.bug
    if tally.survived:
        return
    report = f"lost {tally.lost}, duplicated {tally.duplicated}:\n" + "\n".join(tally.problems)
    if bug is not None and tally.lost == tally.duplicated == 0 and all(map(bug.explains, tally.problems)):
        raise KnownBugError(f"bug: {bug.reason}\n{report}")
    raise AssertionError(report)
