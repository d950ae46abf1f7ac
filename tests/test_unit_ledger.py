"""The study ledger (harness.run.ledger): one JSON record per trial, a finished record final,
failed attempts counted, every write atomic."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from harness.run.ledger import STATUSES, Ledger, TrialRecord


def record(trial_hash: str = "t1", status: str = "finished", **fields) -> TrialRecord:
    defaults = {
        "training_hash": "c1",
        "config": {"seed": 0, "sampler": {"name": "euler", "num_steps": 2}},
        "metrics": {"fid": 12.5, "nfe": 2.0} if status == "finished" else {},
        "error": None if status == "finished" else "ValueError: boom",
    }
    return TrialRecord(trial_hash=trial_hash, status=status, **{**defaults, **fields})


def test_record_round_trips_through_json() -> None:
    r = record(
        protocols={"fid": {"key": "fid/digits-cnn/digits-train/N20/abc", "direction": "min"}},
        intervals={"fid": [10.0, 15.0]},
        training_curve=[[1, {"train/loss": 2.5}], [2, {"train/loss": 2.25}]],
        artifacts={"samples_png": "/x/grid.png"},
        seconds=1.5,
        attempts=2,
        host="node/abc",
    )
    back = TrialRecord.from_dict(json.loads(r.to_json()))
    assert back == r and asdict(back) == asdict(r)
    assert json.loads(r.to_json()) == json.loads(back.to_json())


def test_write_then_get_and_finished(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "study")
    assert ledger.get("t1") is None and ledger.records() == [] and ledger.finished() == set()
    ledger.write(record("t1"))
    ledger.write(record("t2", "failed"))
    ledger.write(record("t3"))
    assert ledger.path("t1") == tmp_path / "study" / "ledger" / "t1.json"
    assert ledger.get("t1") == record("t1")
    assert ledger.get("t2") == record("t2", "failed")
    assert ledger.finished() == {"t1", "t3"}
    assert [r.trial_hash for r in ledger.records()] == ["t1", "t2", "t3"]


def test_a_finished_record_is_never_overwritten(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    done = record("t1", metrics={"fid": 7.0})
    ledger.write(done)
    before = ledger.path("t1").read_bytes()
    ledger.write(record("t1", "failed"))  # a late duplicate that failed
    ledger.write(record("t1", metrics={"fid": 99.0}))  # or one that finished again
    assert ledger.path("t1").read_bytes() == before
    assert ledger.get("t1") == done and ledger.get("t1").attempts == 1


def test_failed_attempts_are_counted_until_one_finishes(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.write(record("t1", "failed"))
    ledger.write(record("t1", "failed", error="RuntimeError: again"))
    got = ledger.get("t1")
    assert got.status == "failed" and got.attempts == 2 and got.error == "RuntimeError: again"
    ledger.write(record("t1"))
    got = ledger.get("t1")
    assert got.status == "finished" and got.attempts == 3 and got.metrics == record("t1").metrics
    assert ledger.finished() == {"t1"}


@pytest.mark.parametrize("status", ["running", "FINISHED", ""])
def test_an_unknown_status_is_refused_and_nothing_is_written(tmp_path: Path, status: str) -> None:
    assert status not in STATUSES
    ledger = Ledger(tmp_path)
    with pytest.raises(ValueError, match="status"):
        ledger.write(replace(record("t1"), status=status))
    assert ledger.get("t1") is None


def test_a_record_appears_by_an_atomic_rename_of_a_complete_file(tmp_path: Path, monkeypatch) -> None:
    ledger = Ledger(tmp_path)
    seen = []
    real_replace = os.replace

    def checked_replace(src, dst) -> None:
        src, dst = Path(src), Path(dst)
        # At the rename the final path is absent and the temporary file is already whole.
        seen.append((dst, dst.exists(), json.loads(src.read_text()), src.parent == dst.parent))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", checked_replace)
    ledger.write(record("t1"))
    assert seen == [(ledger.path("t1"), False, json.loads(record("t1").to_json()), True)]
    assert sorted(p.name for p in ledger.root.iterdir()) == ["t1.json"]  # no temporary file left


def test_a_write_that_fails_leaves_no_partial_record(tmp_path: Path, monkeypatch) -> None:
    ledger = Ledger(tmp_path)
    ledger.write(record("t1", "failed"))
    before = ledger.path("t1").read_bytes()

    def crash(src, dst) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        ledger.write(record("t2"))
    with pytest.raises(OSError):
        ledger.write(record("t1", "failed", error="second"))
    monkeypatch.undo()
    assert ledger.get("t2") is None  # never half there
    assert ledger.path("t1").read_bytes() == before  # the old record is whole
    assert sorted(p.name for p in ledger.root.iterdir()) == ["t1.json"]  # the temporary files are gone
    assert [r.trial_hash for r in ledger.records()] == ["t1"]
