"""Trustworthy runs: one driver per study, one MLflow store shared by drivers, exit codes that say
what happened (run_study.py's docstring lists them).

- a second driver of a study that is being run exits 4 naming the holder's pid and host;
- drivers of two studies that create one new SQLite store at once both finish (the store's
  creation is serialised by a lock beside the database);
- a parent run left RUNNING by a killed driver is marked KILLED by the next invocation, and
  re-running a finished study adds no child run;
- a study whose trial fails exits 3 naming the failed trial's ledger file;
- a runs root that cannot be written, or a disk that fills, exits 5 naming the path and the cause.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, make_runs_root, study_file, subprocess_env, wait_untagged
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import run_study
from harness.run.ledger import Ledger
from harness.run.lock import STUDY_LOCK_FILE, StudyLock
from harness.runner import prepare
from harness.tracking.schema import TAG_ROLE, TAG_TRIAL_HASH, experiment_name
from harness.tracking.tracker import Tracker, store_faults

SAMPLING_SPACE = {"sampler.num_steps": [2, 3]}  # two trials of the base's one checkpoint


def cli(command: str, study: Path | str, root: Path, uri: str | None = None) -> int:
    uri_args = ["--tracking-uri", uri] if uri else []
    return run_study.main([command, str(study), "--runs-root", str(root), *uri_args])


def runs_of(uri: str, study: str, role: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name(study))
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`{TAG_ROLE}` = '{role}'")


# ---- the study lock ------------------------------------------------------------------------------


def test_a_second_driver_of_a_locked_study_exits_4_naming_the_holder(write_study, runs_root, capsys) -> None:
    study = write_study("held", space=SAMPLING_SPACE)
    holder_code = (
        "import sys; from harness.run.lock import StudyLock; StudyLock(sys.argv[1], 'held').acquire(); "
        "print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [PYTHON, "-c", holder_code, str(runs_root / "held")],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cli("run", study, runs_root) == run_study.EXIT_LOCKED
        err = capsys.readouterr().err
        expected = f"study 'held' is being run by pid {holder.pid} on host {socket.gethostname()}"
        assert expected in err and "wait for it or stop it" in err and "Traceback" not in err, err
        # nothing but the lock file was written: no MLflow store, no study file, no ledger
        assert sorted(p.relative_to(runs_root).as_posix() for p in runs_root.rglob("*")) == [
            "held",
            f"held/{STUDY_LOCK_FILE}",
        ]
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    with StudyLock(runs_root / "held", "held"):  # the holder is gone: so is its lock
        pass


# ---- one new SQLite store, several drivers ------------------------------------------------------

RACE = """
import sys, time
from harness.tracking.tracker import Tracker
uri, name, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))
Tracker(uri, name)
"""


def test_trackers_of_three_studies_create_one_new_store_at_once(tmp_path) -> None:
    """Unlocked, MLflow's migrations run in each process at once and all but one fail."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    start = time.time() + 8  # every process has imported MLflow by then
    procs = [
        subprocess.Popen([PYTHON, "-c", RACE, uri, f"race{i}", str(start)], cwd=REPO, stderr=subprocess.PIPE)
        for i in range(3)
    ]
    errors = [p.communicate(timeout=120)[1].decode()[-2000:] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    names = {e.name for e in MlflowClient(tracking_uri=uri).search_experiments()}
    assert {experiment_name(f"race{i}") for i in range(3)} <= names


@pytest.mark.slow  # two drivers, each with its own Ray, on one machine
def test_two_studies_run_at_once_on_one_new_store_both_finish(tmp_path, warm_eval_cache, process_tag) -> None:
    root = make_runs_root(tmp_path / "runs", warm_eval_cache)
    uri = f"sqlite:///{root}/mlflow.db"
    names = ("left", "right")
    drivers = [
        subprocess.Popen(
            [
                PYTHON,
                "run_study.py",
                "run",
                str(study_file(tmp_path, name, space={"sampler.num_steps": [2]})),
                "--runs-root",
                str(root),
                "--tracking-uri",
                uri,
            ],
            cwd=REPO,
            env=subprocess_env(process_tag),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in names
    ]
    logs = [d.communicate(timeout=400)[0] for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], "\n-----\n".join(log[-3000:] for log in logs)
    assert wait_untagged(process_tag, timeout=30) == []
    for name in names:
        (parent,) = runs_of(uri, name, "invocation")
        (child,) = runs_of(uri, name, "trial")
        assert parent.info.status == child.info.status == "FINISHED"


# ---- a finished study: stale parents, re-runs, failures ------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory, warm_eval_cache, ray_session) -> dict:
    """A two-trial study run to the end through the CLI (in this process, on the session's Ray)."""
    tmp = tmp_path_factory.mktemp("finished")
    root = make_runs_root(tmp / "runs", warm_eval_cache)
    study = study_file(tmp, "done", space=SAMPLING_SPACE)
    uri = f"sqlite:///{root}/mlflow.db"
    assert cli("run", study, root, uri) == 0
    return {"root": root, "study": study, "uri": uri}


def test_a_stale_parent_is_killed_and_a_rerun_adds_no_child_run(finished, capsys) -> None:
    root, uri = finished["root"], finished["uri"]
    children = {r.info.run_id: r.data.tags[TAG_TRIAL_HASH] for r in runs_of(uri, "done", "trial")}
    assert len(children) == 2 and len(set(children.values())) == 2
    stale = Tracker(uri, "done").start_invocation({}, {})  # a driver killed before it ended its run
    capsys.readouterr()
    assert cli("resume", "done", root, uri) == 0
    out, err = capsys.readouterr()
    assert "marked 1 invocation(s) left RUNNING by a stopped driver as KILLED" in out
    assert "Downloading artifacts" not in err  # the report's downloads draw no progress bars
    statuses = {r.info.run_id: r.info.status for r in runs_of(uri, "done", "invocation")}
    assert statuses.pop(stale) == "KILLED"
    assert sorted(statuses.values()) == ["FINISHED", "FINISHED"]  # the first run and the resume
    after = {r.info.run_id: r.data.tags[TAG_TRIAL_HASH] for r in runs_of(uri, "done", "trial")}
    assert after == children


def test_a_study_with_a_failed_trial_exits_3_naming_its_ledger_file(finished, capsys) -> None:
    root, uri = finished["root"], finished["uri"]
    # lr = 1e30 diverges at its second step: a valid config whose training fails at run time.
    lr = prepare(finished["study"], root).plan.trainings[0].train.lr
    study = study_file(root.parent, "partly", space={"train.lr": [lr, 1e30]}, max_failures=0)
    capsys.readouterr()
    assert cli("run", study, root, uri) == run_study.EXIT_TRIALS_FAILED
    out, err = capsys.readouterr()
    (bad,) = [r for r in Ledger(root / "partly").records() if r.status == "failed"]
    assert "1/2 trials finished" in out
    assert "1 of 2 trials failed" in err and str(Ledger(root / "partly").path(bad.trial_hash)) in err, err
    assert [r.info.status for r in runs_of(uri, "partly", "invocation")] == ["FINISHED"]


# ---- resource faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["read-only folder", "path under a file"])
def test_an_unwritable_runs_root_exits_5_naming_the_path(write_study, tmp_path, capsys, kind) -> None:
    study = write_study("nowhere", space=SAMPLING_SPACE)
    if kind == "read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        parent = tmp_path / "readonly"
        parent.mkdir()
        parent.chmod(0o555)
        code = "EACCES"
    else:
        parent = tmp_path / "a-file"
        parent.write_text("not a folder")
        code = "ENOTDIR"
    root = parent / "runs"
    try:
        assert cli("run", study, root) == run_study.EXIT_UNWRITABLE
    finally:
        if parent.is_dir():
            parent.chmod(0o755)
    err = capsys.readouterr().err
    assert err.startswith(f"error: {root}") and code in err and "Traceback" not in err, err
    assert "resume" in err


def test_a_full_disk_exits_5_naming_the_file_and_ends_the_parent_run(
    write_study, runs_root, capsys, monkeypatch
) -> None:
    import harness.runner

    study = write_study("full", space=SAMPLING_SPACE)
    target = runs_root / "full" / "study.yaml"

    def full(run) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(harness.runner, "save_study_file", full)
    uri = f"sqlite:///{runs_root}/mlflow.db"
    assert cli("run", study, runs_root, uri) == run_study.EXIT_UNWRITABLE
    err = capsys.readouterr().err
    assert err.startswith(f"error: {target}: No space left on device (ENOSPC)") and "Traceback" not in err
    assert [r.info.status for r in runs_of(uri, "full", "invocation")] == ["FAILED"]


def test_a_sqlite_store_that_cannot_be_written_raises_an_oserror_naming_the_database(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(OSError) as caught, store_faults(uri):
        raise MlflowException("(sqlite3.OperationalError) database or disk is full\n[SQL: INSERT ...]")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "mlflow.db")
    assert "database or disk is full" in caught.value.strerror
    with pytest.raises(MlflowException, match="no such run"), store_faults(uri):
        raise MlflowException("no such run")  # not a fault of the disk: raised as it is


def test_a_full_disk_under_rays_own_error_is_reported_as_the_disk(
    write_study, runs_root, capsys, monkeypatch
) -> None:
    """Tune, its experiment state cut short by a full disk, raises EOFError reading it back: the
    driver probes the study's folders and reports the disk, not Tune's error."""
    import harness.runner
    from harness.ray.dispatch import RayDispatcher

    study = write_study("tune-full", space=SAMPLING_SPACE)
    full = runs_root / "tune-full"

    def cut_short(*args, **kwargs) -> None:
        raise EOFError("Ran out of input")

    def probe(folder: Path, size: int = 1 << 16) -> None:
        if Path(folder) == full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))

    monkeypatch.setattr(RayDispatcher, "run_grid", cut_short)
    monkeypatch.setattr(harness.runner, "probe_writable", probe)
    assert cli("run", study, runs_root) == run_study.EXIT_UNWRITABLE
    err = capsys.readouterr().err
    assert f"error: {full}: No space left on device (ENOSPC)" in err and "Traceback" not in err, err


def test_rays_error_on_a_writable_disk_stays_a_bug(write_study, runs_root, monkeypatch) -> None:
    from harness.ray.dispatch import RayDispatcher

    def cut_short(*args, **kwargs) -> None:
        raise EOFError("Ran out of input")

    monkeypatch.setattr(RayDispatcher, "run_grid", cut_short)
    with pytest.raises(EOFError):
        cli("run", write_study("tune-bug", space=SAMPLING_SPACE), runs_root)


def test_probe_writable_names_the_folder_and_leaves_nothing(tmp_path) -> None:
    from harness.cache import probe_writable

    probe_writable(tmp_path / "new")
    assert list((tmp_path / "new").iterdir()) == []
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OSError) as caught:
        probe_writable(tmp_path / "a-file" / "below")
    assert caught.value.errno == errno.ENOTDIR and caught.value.filename == str(tmp_path / "a-file" / "below")


@pytest.mark.parametrize("in_text", [False, True])
def test_rays_logged_disk_errors_are_one_line_other_errors_keep_their_traceback(in_text) -> None:
    import io
    import logging
    import traceback

    from harness.ray.progress import shorten_unwritable

    stream = io.StringIO()
    logger = logging.getLogger(f"test-ray-{in_text}")
    logger.addHandler(logging.StreamHandler(stream))
    logger.propagate = False
    shorten_unwritable(logger)
    for err in (OSError(errno.ENOSPC, "No space left on device"), ValueError("a bug")):
        try:
            raise err
        except Exception:
            if in_text:  # Ray's syncer puts the traceback into the message
                logger.warning(f"sync failed with the following error:\n{traceback.format_exc()}")
            else:
                logger.error("Trial task failed", exc_info=True)
    first, rest = stream.getvalue().split("\n", 1)
    assert "No space left on device" in first and "Traceback" not in first
    assert rest.count("Traceback") == 1 and "a bug" in rest
