"""The checks of the fault scenarios (tests/reliability/faults.py): a Tally of a scenario's problems
and of the results it lost or duplicated, and the audits of a study's end state (its ledger, its
MLflow runs, its trainings, the finished files kept byte for byte, a driver's exit).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from conftest import wait_untagged
from fault_rig import STEPS, Driver, Study, uri
from mlflow import MlflowClient

from harness.run.ledger import TrialRecord, strict_loads
from harness.run.store import CheckpointStore
from harness.tracking.schema import ROLE_INVOCATION, TAG_ROLE, TAG_TRIAL_HASH, experiment_name, trial_runs


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


def expect_exit(tally: Tally, driver: Driver, code: int, what: str) -> bool:
    return tally.expect(
        driver.process.returncode == code,
        f"{what} exited {driver.process.returncode}, expected {code}{driver.tail()}",
    )


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
