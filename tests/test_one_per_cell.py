"""A cell measured again with more sample seeds supersedes its earlier trial in every report."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.run.ledger import TrialRecord
from harness.tracking.tracker import Tracker
from reports.markdown import flatten, one_per_cell
from reports.mlflow_source import study_table

_row = st.fixed_dictionaries(
    {
        "cell": st.integers(0, 3),
        "seeds": st.integers(1, 6),
        "status": st.sampled_from(["finished", "failed"]),
    }
)


def _as_record(i: int, row: dict) -> dict:
    seeds = list(range(row["seeds"]))
    return {
        "id": i,
        "status": row["status"],
        "config": {"sampler": {"cfg": row["cell"]}, "eval": {"sample_seeds": seeds}},
    }


@settings(max_examples=200, deadline=None)
@given(st.lists(_row, min_size=1, max_size=12))
def test_a_trial_goes_only_when_a_finished_one_of_its_cell_has_more_seeds(rows) -> None:
    records = [_as_record(i, r) for i, r in enumerate(rows)]
    kept = one_per_cell(records, lambda r: flatten(r["config"]))
    assert [r["id"] for r in kept] == sorted(r["id"] for r in kept)  # order kept
    for r in records:
        cell, n = r["config"]["sampler"], len(r["config"]["eval"]["sample_seeds"])
        finished = [
            len(x["config"]["eval"]["sample_seeds"])
            for x in records
            if x["config"]["sampler"] == cell and x["status"] == "finished"
        ]
        assert (r in kept) == (n >= max(finished, default=0))
    for cell in {r["cell"] for r in rows if r["status"] == "finished"}:  # every measured cell stays
        assert any(r["config"]["sampler"]["cfg"] == cell and r["status"] == "finished" for r in kept)


def test_cells_that_differ_in_more_than_seeds_all_stay() -> None:
    records = [
        {"status": "finished", "config": {"a": 1, "eval": {"sample_seeds": [0, 1]}}},
        {"status": "finished", "config": {"a": 2, "eval": {"sample_seeds": [0]}}},
        {"status": "finished", "config": {"a": 1, "eval": {"sample_seeds": [0, 1, 2]}}},
    ]
    kept = one_per_cell(records, lambda r: flatten(r["config"]))
    assert [r["config"] for r in kept] == [records[1]["config"], records[2]["config"]]


def _record(trial_hash: str, cfg: float, seeds: list[int], fid: float) -> TrialRecord:
    return TrialRecord(
        trial_hash=trial_hash,
        training_hash="t0",
        status="finished",
        config={"sampler": {"cfg_scale": cfg}, "eval": {"sample_seeds": seeds}},
        metrics={"fid": fid},
        protocols={"fid": {"key": "fid/x", "direction": "min", "sample_seeds": seeds}},
    )


def test_the_mlflow_table_shows_a_reseeded_cell_once(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "reseeded")
    tracker.start_invocation({"name": "reseeded", "metric": "fid"}, {})
    tracker.sync(
        [
            _record("a" * 16, 1.0, [0, 1], 50.0),
            _record("b" * 16, 2.0, [0, 1], 40.0),
            _record("c" * 16, 1.0, [0, 1, 2, 3], 52.0),  # cell cfg 1 again, with 4 seeds
        ]
    )
    tracker.end_invocation()
    table = study_table(uri, "reseeded").table.set_index("trial_hash")
    assert sorted(table.index) == ["b" * 16, "c" * 16]
    assert table.loc["c" * 16, "fid"] == 52.0
