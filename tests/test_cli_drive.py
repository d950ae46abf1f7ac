"""The driver's MLflow sync runs beside Tune (cli/drive.py): requests made while a sync waits to
start are served by it, the first error is held for the driver to raise, and nothing is lost."""

from __future__ import annotations

import pickle
import threading

import pytest

from cli.drive import _Syncing


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
