"""The driver's MLflow store around Tune (cli/drive.py): it opens while the first job's worker
starts and that job runs only once it is open (a store that cannot be opened ends the run before
any job ran); requests made while a sync waits to start are served by it, the first error is held
for the driver to raise, and nothing is lost."""

from __future__ import annotations

import errno
import os
import pickle
import threading
import time
from pathlib import Path

import pytest

import cli.drive
import run_study
from cli.drive import _Syncing
from harness.ray.dispatch import RayDispatcher
from harness.ray.progress import Progress
from harness.run.ledger import Ledger


class _Ledger:
    def __init__(self) -> None:
        self.finished = 0

    def records(self) -> list[int]:
        return list(range(self.finished))


class _Tracker:
    """sync() blocks until released; records what each call saw."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.seen: list[int] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        self.fail_on = fail_on

    def sync(self, records: list[int]) -> None:
        self.entered.set()
        self.release.wait(timeout=30)
        self.seen.append(len(records))
        if self.fail_on is not None and len(self.seen) == self.fail_on:
            raise OSError(28, "No space left on device", "mlflow.db")


class _Opening:
    def __init__(self, tracker: _Tracker) -> None:
        self.tracker = tracker

    def get(self) -> _Tracker:
        return self.tracker


def test_requests_while_a_sync_waits_are_served_by_it_and_the_last_sees_every_record() -> None:
    ledger, tracker = _Ledger(), _Tracker()
    syncing = _Syncing(_Opening(tracker), ledger)
    ledger.finished = 1
    syncing.request()  # runs, blocked in sync()
    assert tracker.entered.wait(timeout=30)
    for n in range(2, 6):  # four more trials finish while it runs: one queued sync serves them
        ledger.finished = n
        syncing.request()
    tracker.release.set()
    syncing.finish()
    assert tracker.seen == [1, 5]


def test_the_first_error_is_raised_by_finish_and_no_sync_follows_it() -> None:
    ledger, tracker = _Ledger(), _Tracker(fail_on=1)
    tracker.release.set()
    syncing = _Syncing(_Opening(tracker), ledger)
    ledger.finished = 1
    syncing.request()
    syncing._pool.submit(lambda: None).result()  # the failed sync is done
    ledger.finished = 2
    syncing.request()
    with pytest.raises(OSError) as caught:
        syncing.finish()
    assert caught.value.errno == 28
    assert tracker.seen == [1]  # the second request synced nothing


def test_the_callback_state_tune_pickles_holds_no_thread() -> None:
    syncing = _Syncing(_Opening(None), _Ledger())  # type: ignore[arg-type]
    syncing.request()  # a live pool, a queued future and a lock: none of them in the state
    copy = pickle.loads(pickle.dumps(syncing))
    assert isinstance(copy.ledger, _Ledger) and not hasattr(copy, "_pool")
    syncing.stop()


# ---- the store opens while the first job's worker starts; that job runs once it is open ---------


def test_on_start_is_called_once_and_not_again_after_it_raised() -> None:
    calls = []

    def on_start() -> None:
        calls.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")

    progress = Progress({"trial": 2}, None, on_start=on_start)
    with pytest.raises(OSError):
        progress.callback.on_trial_start(iteration=0, trials=[], trial=None)
    progress.callback.on_trial_start(iteration=1, trials=[], trial=None)  # the next trial
    assert calls == [1]


def _slow_opening(monkeypatch, hold: float, fault: OSError | None = None) -> dict:
    """``cli.drive._open`` that waits until Tune was handed the jobs, then ``hold`` seconds more
    (longer than a trial's worker takes to start), then opens the store or raises ``fault``."""
    seen: dict = {"tune": threading.Event()}
    tune, opened = RayDispatcher._tune, cli.drive._open

    def tune_marked(self, *args, **kwargs):
        seen["tune"].set()
        return tune(self, *args, **kwargs)

    def slow_open(args, run):
        seen["dispatched_first"] = seen["tune"].wait(timeout=20)
        time.sleep(hold)
        seen["open_end"] = time.time()
        if fault is not None:
            raise fault
        return opened(args, run)

    monkeypatch.setattr(RayDispatcher, "_tune", tune_marked)
    monkeypatch.setattr(cli.drive, "_open", slow_open)
    return seen


def _written(folder: Path) -> list[float]:
    return [p.stat().st_mtime for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []


def test_the_first_job_runs_only_once_the_store_is_open_which_opens_while_it_starts(
    write_study, runs_root, monkeypatch
) -> None:
    seen = _slow_opening(monkeypatch, hold=6.0)
    study = write_study("gated", space={"sampler.num_steps": [2]})
    assert run_study.main(["run", str(study), "--runs-root", str(runs_root)]) == 0
    assert seen["dispatched_first"], "the jobs waited for the store before they went to Tune"
    written = _written(runs_root / "checkpoints")  # the training's files, from its start on
    assert written and min(written) >= seen["open_end"], "a job ran before the store was open"


def test_a_store_that_cannot_be_opened_ends_the_run_before_any_job_ran(
    write_study, runs_root, monkeypatch, capsys
) -> None:
    db = runs_root / "mlflow.db"
    fault = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(db))
    seen = _slow_opening(monkeypatch, hold=0.5, fault=fault)
    study = write_study("unopened", space={"sampler.num_steps": [2]})
    assert run_study.main(["run", str(study), "--runs-root", str(runs_root)]) == run_study.EXIT_UNWRITABLE
    err = capsys.readouterr().err
    assert err.startswith(f"error: {db}: No space left on device") and "Traceback" not in err, err
    assert seen["dispatched_first"]  # Tune had the jobs: the error came through the gate
    assert _written(runs_root / "checkpoints") == [] and Ledger(runs_root / "unopened").records() == []
