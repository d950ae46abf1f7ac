"""The fault scenarios that strike processes (tests/reliability/faults.py runs them): a SIGKILL of the
driver at four moments or of the Ray worker running the training or a sampling trial, then a
resume; a second driver of a running study; two studies at once on one new MLflow store.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conftest import process_name, tagged_pids
from fault_checks import Tally, audit, compare, expect_exit, finished_cleanly, invocation_statuses
from fault_rig import PERIODIC, Driver, NotLandedError, Study, Workspace

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
