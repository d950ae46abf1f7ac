"""The harness survives the faults it promises to (README "Failure and recovery"), through the CLI.

Each scenario of tests/reliability/faults.py (a killed driver at four moments, a damaged file of
each stored kind, two drivers at once, a full disk, a diverged training) is a slow test: a tiny
digits study run by ``run_study.py`` in its own session, 50-130 s on two busy cores. A scenario
that exposes a harness bug is a strict xfail that fails outright if anything but that bug goes
wrong (``raises=KnownBugError``). The fast tests below check the checks: a change, a loss or a
duplicate is counted, so that a scenario that passes has looked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fault_checks import Tally, audit_ledger, audit_mlflow, audit_trainings, compare
from fault_damage import fill, mount_tmpfs, unmount
from fault_rig import STEPS, SkipScenario, Study, fingerprints, uri
from faults import SCENARIOS, KnownBug, KnownBugError, Result, Scenario, run_scenario, verdict

from harness.run.ledger import TrialRecord
from harness.tracking.schema import TAG_ROLE, TAG_TRIAL_HASH
from harness.tracking.tracker import Tracker


def _param(scenario: Scenario):
    marks = [pytest.mark.slow]
    if scenario.bug is not None:
        marks.append(
            pytest.mark.xfail(strict=True, raises=KnownBugError, reason=f"bug: {scenario.bug.reason}")
        )
    slug = "".join(c if c.isalnum() else "-" for c in scenario.name.lower()).strip("-")
    return pytest.param(scenario, id=slug, marks=marks)


@pytest.mark.parametrize("scenario", [_param(s) for s in SCENARIOS])
def test_the_harness_survives(scenario: Scenario, tmp_path: Path, warm_eval_cache: Path) -> None:
    result = run_scenario(scenario, tmp_path, warm_eval_cache)
    if result.skipped:
        pytest.skip(result.skipped)
    print(f"{scenario.name}: {result.seconds:.0f} s")
    verdict(result)


# ---- the checks find what they look for ---------------------------------------------------------


def test_a_changed_or_vanished_finished_file_is_a_lost_result(tmp_path: Path) -> None:
    files = [tmp_path / f"{name}.json" for name in ("same", "changed", "gone", "rewritten", "exempt")]
    for path in files:
        path.write_text(path.stem)
    kept = fingerprints(files)
    files[1].write_text("other")
    files[2].unlink()
    stat = files[3].stat()
    files[3].write_text("rewritten")
    os.utime(files[3], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    files[4].write_text("damaged on purpose")
    tally = Tally()
    compare(tally, kept, exempt={files[4]})
    assert tally.lost == 2 and tally.duplicated == 0
    assert [p.split(": ")[0] for p in tally.problems] == [
        "a finished file changed",
        "a finished file is gone",
        "a finished file was rewritten",
    ]


def _record(trial_hash: str, status: str = "finished") -> TrialRecord:
    return TrialRecord(
        trial_hash, "h1", status, {"seed": 0}, metrics={"fid": 1.0} if status == "finished" else {}
    )


def test_the_ledger_audit_counts_a_missing_or_unfinished_trial_as_lost(tmp_path: Path) -> None:
    study = Study(tmp_path, "audited", ("t1", "t2", "t3"), "h1")
    study.record("t1").parent.mkdir(parents=True)
    for record in (_record("t1"), _record("t2", "failed"), _record("t9")):
        study.record(record.trial_hash).write_text(record.to_json())
    study.record("t3").write_text('{"trial_hash": "t3", "metrics": {"fid": NaN}}')
    tally = Tally()
    audit_ledger(tally, study, "finished")
    assert tally.lost == 2  # t2 is failed, t3 has no readable record
    assert any(p.startswith("an unreadable ledger record") for p in tally.problems)
    assert tally.problems[-1] == "ledger records of trials outside the plan: ['t9']"


def test_the_mlflow_audit_counts_a_second_child_run_and_a_missing_one(tmp_path: Path) -> None:
    study = Study(tmp_path, "audited", ("t1", "t2", "t3"), "h1")
    tracker = Tracker(uri(tmp_path), "audited")
    tracker.start_invocation({}, {})
    tracker.sync([_record("t1"), _record("t2")])
    extra = tracker.client.create_run(tracker.experiment_id, tags={TAG_ROLE: "trial", TAG_TRIAL_HASH: "t1"})
    tracker.client.log_metric(extra.info.run_id, "fid", float("nan"))
    tracker.client.set_terminated(extra.info.run_id, "FINISHED")
    tally = Tally()
    audit_mlflow(tally, study, "finished")  # the invocation is still open: RUNNING
    assert (tally.lost, tally.duplicated) == (1, 1)
    expected = (
        "trial t1 has 2 MLflow child runs",
        "trial t3 has no MLflow child run",
        f"non-finite MLflow metrics in run {extra.info.run_id}",
        "MLflow invocations left RUNNING",
    )
    assert len(tally.problems) == len(expected)
    assert all(p.startswith(e) for p, e in zip(tally.problems, expected, strict=True)), tally.problems


def test_a_training_completed_twice_is_a_duplicate(tmp_path: Path) -> None:
    study = Study(tmp_path, "audited", ("t1",), "h1")
    study.training.mkdir(parents=True)
    lines = [{"step": s, "metrics": {"train/loss": 1.0}} for s in (STEPS // 2, STEPS, STEPS)]
    text = "\n".join(json.dumps(line) for line in lines) + '\n{"step": 1, "metrics": {"train/loss": NaN}}\n'
    (study.training / "curve.jsonl").write_text(text)
    tally = Tally()
    audit_trainings(tally, study, "failed", trainings=1)
    assert tally.duplicated == 1
    assert any("not strict JSON" in p for p in tally.problems)


def test_a_known_bug_explains_only_its_own_problems() -> None:
    bug = KnownBug("exits 1 on a full disk", ("the driver on a full disk exited", "not one error naming"))
    scenario = Scenario("disk", lambda ws: Tally(), bug)
    buggy = Tally(["the driver on a full disk exited 1, expected 5", "not one error naming a path: ..."])
    with pytest.raises(KnownBugError):
        verdict(Result(scenario, buggy, 1.0))
    for tally in (
        Tally([*buggy.problems, "trial t1 has no MLflow child run"]),
        Tally(buggy.problems, lost=1),
    ):
        with pytest.raises(AssertionError) as caught:
            verdict(Result(scenario, tally, 1.0))
        assert not isinstance(caught.value, KnownBugError)
    verdict(Result(scenario, Tally(), 1.0))  # fixed: the test passes, and strict xfail reports XPASS


def test_fill_leaves_no_block_free(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    try:
        mount_tmpfs(disk, "1m")
    except SkipScenario as skip:
        pytest.skip(str(skip))
    try:
        fill(disk)
        with pytest.raises(OSError, match="No space left"):
            (disk / "one-more").write_bytes(b"x" * 4096)
    finally:
        unmount(disk)
