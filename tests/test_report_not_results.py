"""A number that is not finite is never reported as a result: not from a hand-edited or old MLflow
store (MLflow keeps an infinity as the largest float), not from a ledger file holding NaN."""

from __future__ import annotations

import json
import math

import pytest
from mlflow import MlflowClient
from test_study_report import _record

from harness.tracking.tracker import Tracker
from reports.markdown import load_records
from reports.mlflow_source import records, study_table
from reports.study_report import write_report

STUDY = "broken-values"


@pytest.mark.parametrize("metric, value", [("precision", math.inf), ("fid", -math.inf), ("fid", math.nan)])
def test_a_run_holding_a_non_finite_metric_is_a_failed_trial_without_numbers(tmp_path, metric, value) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, STUDY)
    tracker.start_invocation({"name": STUDY, "metric": "fid"}, {"git_commit": "abc"})
    tracker.sync([_record(i, "euler", steps, 1.0, 10.0 + i) for i, steps in enumerate((2, 4, 8))])
    tracker.end_invocation()
    table = study_table(uri, STUDY).table
    broken = table.loc[table["sampler.num_steps"] == 2, "run_id"].item()
    MlflowClient(uri).log_metric(broken, metric, value)
    study = study_table(uri, STUDY)
    row = study.table.set_index("run_id").loc[broken]
    assert row["status"] == "failed" and metric in row["error"]
    assert math.isnan(row["fid"]) and math.isnan(row["precision"])  # none of its numbers kept
    (kept,) = [r for r in records(study) if r["run_id"] == broken]
    assert kept["metrics"] == {} and kept["protocols"] == {}
    report = write_report(uri, STUDY, tmp_path / STUDY, "t", "fid")  # renders, the run as failed
    text = report.markdown.read_text()
    assert "1.798e+308" not in text and "inf" not in text.replace("info", "")


def test_a_ledger_file_holding_nan_or_infinity_is_skipped_with_a_warning(tmp_path, capsys) -> None:
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    good = json.loads(_record(0, "euler", 4, 1.0, 12.0).to_json())
    (ledger / "a.json").write_text(json.dumps(good))
    (ledger / "b.json").write_text(json.dumps({**good, "trial_hash": "b", "metrics": {"fid": math.nan}}))
    (ledger / "c.json").write_text(json.dumps({**good, "trial_hash": "c", "metrics": {"fid": math.inf}}))
    assert [r["trial_hash"] for r in load_records(tmp_path)] == [good["trial_hash"]]
    err = capsys.readouterr().err
    assert "b.json: skipped" in err and "c.json: skipped" in err
