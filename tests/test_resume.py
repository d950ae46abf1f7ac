"""Kill the driver of a running study with SIGKILL, then resume it: nothing finished is redone.

The study runs through the CLI in its own session (process group). Once both checkpoints are
in the store and some (not all) trials are in the ledger, the driver is SIGKILLed, and every
process it started (Ray's daemons and workers carry the test's process tag in their
environment) is killed after it. ``run_study.py resume <name>`` must then finish the study
without training again, without touching finished ledger records, and leave exactly one
FINISHED MLflow child run per trial.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, kill_tagged, make_runs_root, study_file, subprocess_env, wait_untagged

from harness.run.ledger import Ledger
from harness.runner import prepare
from harness.tracking.schema import TAG_ROLE, TAG_TRIAL_HASH, experiment_name
from reports.mlflow_source import study_runs

NAME = "resumable"


def wait_for(condition, timeout: float, what: str, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def fingerprint(path: Path) -> tuple[int, str]:
    return path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def invocation_statuses(uri: str) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name(NAME))
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{TAG_ROLE}` = 'invocation'")
    return [r.info.status for r in sorted(runs, key=lambda r: r.info.start_time)]


@pytest.mark.slow
def test_a_killed_study_resumes_without_repeating_finished_work(
    tmp_path, warm_eval_cache, process_tag
) -> None:
    root = make_runs_root(tmp_path / "runs", warm_eval_cache)
    study = study_file(
        tmp_path,
        NAME,
        overrides={"train.steps": 40},
        space={"model.timestep": ["explicit", "implicit"], "sampler.num_steps": [2, 3, 4, 5]},
        concurrency=1,
    )
    plan = prepare(study, root).plan
    assert len(plan.trainings) == 2 and len(plan.trials) == 8
    store, ledger = root / "checkpoints", Ledger(root / NAME)
    uri = f"sqlite:///{root}/mlflow.db"
    env = subprocess_env(process_tag)
    log_path = tmp_path / "run.log"

    # 1. run, and SIGKILL the driver mid-study: checkpoints done, some trials in the ledger
    with log_path.open("w") as log:
        driver = subprocess.Popen(
            [PYTHON, "run_study.py", "run", str(study), "--runs-root", str(root), "--tracking-uri", uri],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def mid_study() -> bool:
            if driver.poll() is not None:
                raise AssertionError(f"the study ended before the kill:\n{log_path.read_text()[-3000:]}")
            done = [
                h for h in (t.training_hash() for t in plan.trainings) if (store / h / "done.json").is_file()
            ]
            # "[trial 2/8]" is printed after the first trial was synced to MLflow: a child run exists
            return bool(done) and 0 < len(ledger.records()) < 8 and "[trial 2/8]" in log_path.read_text()

        wait_for(mid_study, timeout=240, what="a checkpoint and some trials")
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)  # its session: whatever stayed in the group
        leftovers = kill_tagged(process_tag)  # Ray's daemons and workers, wherever they were reparented
        print("killed after the driver:", *leftovers, sep="\n  ")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        kill_tagged(process_tag)

    finished_before = {r.trial_hash for r in ledger.records() if r.status == "finished"}
    assert 0 < len(finished_before) < 8, "the kill did not land mid-study"
    trained = {
        t.training_hash() for t in plan.trainings if (store / t.training_hash() / "done.json").is_file()
    }
    assert trained
    kept = {
        p: fingerprint(p)
        for h in trained
        for p in (store / h / "done.json", store / h / "checkpoint.pt", store / h / "curve.jsonl")
    }
    kept.update({ledger.path(h): fingerprint(ledger.path(h)) for h in finished_before})
    synced_before = study_runs(uri, NAME, latest_only=False)
    assert len(synced_before) >= 1  # MLflow already holds some of the finished trials
    print(f"before resume: {len(finished_before)}/8 trials in the ledger, {len(synced_before)} in MLflow")

    # 2. resume by name, to the end
    resumed = subprocess.run(
        [PYTHON, "run_study.py", "resume", NAME, "--runs-root", str(root), "--tracking-uri", uri],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"2 training(s) ({len(trained)} in the store)" in resumed.stdout
    assert f"8 sampling/eval trial(s) ({len(finished_before)} finished)" in resumed.stdout
    assert "8/8 trials finished" in resumed.stdout
    pending = 8 - len(finished_before)
    assert f"[trial {pending}/{pending}]" in resumed.stdout  # only the unfinished trials were dispatched
    assert "[train" not in resumed.stdout  # and no training
    assert wait_untagged(process_tag, timeout=30) == []  # a clean exit ends its Ray

    # every trial of the plan: one finished record; nothing finished before the kill was redone
    records = ledger.records()
    assert sorted(r.trial_hash for r in records) == sorted(t.trial_hash() for t in plan.trials)
    assert all(r.status == "finished" and r.attempts == 1 for r in records)
    assert {str(p): fingerprint(p) for p in kept} == {str(p): v for p, v in kept.items()}
    for h in trained:
        steps = [json.loads(line)["step"] for line in (store / h / "curve.jsonl").read_text().splitlines()]
        assert len(steps) == len(set(steps)) and max(steps) == 40  # trained once: no step logged twice
    # MLflow: exactly one FINISHED child run per trial hash, across both invocations
    runs = study_runs(uri, NAME, latest_only=False)
    finished_runs = runs[runs["status"] == "FINISHED"]
    assert sorted(finished_runs[f"tags.{TAG_TRIAL_HASH}"]) == sorted(t.trial_hash() for t in plan.trials)
    assert invocation_statuses(uri)[-1] == "FINISHED" and len(invocation_statuses(uri)) == 2
