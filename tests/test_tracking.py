"""MLflow tracking: every ledger record becomes exactly one child run, across resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient
from mlflow.entities import Param
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from harness.run.ledger import PER_SEED, TrialRecord
from harness.tracking.schema import (
    TAG_ATTEMPTS,
    TAG_ERROR,
    TAG_TRIAL_HASH,
    experiment_name,
    protocol_tags,
    read_protocols,
)
from harness.tracking.tracker import Tracker
from reports.mlflow_source import study_runs, study_table

CONFIG = {
    "seed": 0,
    "data": {"name": "digits", "grid": [8, 8]},
    "model": {"timestep": "explicit", "width": 32},
    "train": {"steps": 12, "corruption": "uniform"},
    "sampler": {"name": "euler", "num_steps": 8},
    "eval": {"num_samples": 64},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store per module (creating its tables costs seconds); each test its own study."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments()  # create the tables once
    return uri


def _record(trial_hash: str, status: str = "finished", **changes) -> TrialRecord:
    fields = {
        "trial_hash": trial_hash,
        "training_hash": f"train-{trial_hash}",
        "status": status,
        "config": CONFIG,
        "metrics": {"fid": 12.5, "nfe": 8.0} if status == "finished" else {},
        "protocols": {"fid": {"key": "inception-2048/digits", "extractor": "inception", "N": 64}},
        "intervals": {"fid": [11.0, 14.0]} if status == "finished" else {},
        "training_curve": [[0, {"loss": 2.5}], [6, {"loss": 1.5}], [12, {"loss": 1.0, "lr": 0.001}]],
        "seconds": 3.25,
        "error": "RuntimeError: boom\nTraceback line" if status == "failed" else None,
    }
    fields.update(changes)
    return TrialRecord(**fields)


def _trial_runs(uri: str, study: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name(study))
    return list(client.search_runs([experiment.experiment_id], f"tags.`{TAG_TRIAL_HASH}` IS NOT NULL"))


def test_sync_logs_each_record_once_across_resumes(store):
    records = [_record("aaa"), _record("bbb", status="failed")]
    tracker = Tracker(store, "once")
    tracker.start_invocation({"name": "once"}, {"git.commit": "abc123"})
    assert tracker.sync(records) == 2
    assert tracker.sync(records) == 0
    tracker.end_invocation()

    resumed = Tracker(store, "once")  # a killed driver, resumed: new process, new parent
    resumed.start_invocation({"name": "once"}, {"git.commit": "abc123"})
    assert resumed.sync(records) == 0
    assert resumed.sync([*records, _record("ccc"), _record("ccc")]) == 1
    resumed.end_invocation()
    hashes = sorted(run.data.tags[TAG_TRIAL_HASH] for run in _trial_runs(store, "once"))
    assert hashes == ["aaa", "bbb", "ccc"]


def test_child_run_holds_params_metrics_curve_tags_and_artifacts(store, tmp_path):
    grid = tmp_path / "grid.png"
    grid.write_bytes(b"\x89PNG fake")
    record = _record("full", artifacts={"samples_png": str(grid), "missing": str(tmp_path / "nope.png")})
    tracker = Tracker(store, "contents")
    parent_id = tracker.start_invocation({"name": "contents", "trials": 1}, {"lib.torch": "2.14.1"})
    assert tracker.sync([record]) == 1
    (run,) = _trial_runs(store, "contents")
    client = MlflowClient(tracking_uri=store)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.timestep"] == "explicit"
    assert run.data.params["data.grid"] == "[8, 8]"
    assert run.data.params["seed"] == "0"
    assert run.data.metrics == pytest.approx(
        {
            "fid": 12.5,
            "nfe": 8.0,
            "fid_ci_low": 11.0,
            "fid_ci_high": 14.0,
            "train/loss": 1.0,
            "train/lr": 1e-3,
        }
    )
    curve = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in curve) == [(0, 2.5), (6, 1.5), (12, 1.0)]
    tags = run.data.tags
    assert tags["mlflow.parentRunId"] == parent_id
    assert (tags["unmask.training_hash"], tags["unmask.status"], tags[TAG_ATTEMPTS]) == (
        "train-full",
        "finished",
        "1",
    )
    run_dir = Path(client.download_artifacts(run.info.run_id, "", dst_path=str(tmp_path / "dl")))
    assert sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()) == [
        "config.yaml",
        "protocol.json",
        "samples_png/grid.png",
    ]
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == CONFIG
    assert json.loads((run_dir / "protocol.json").read_text()) == record.protocols
    parent = client.get_run(parent_id)
    assert parent.data.tags["lib.torch"] == "2.14.1"
    assert [f.path for f in client.list_artifacts(parent_id)] == ["study_config.yaml"]


def test_failed_record_gives_failed_run_and_a_retry_fills_the_same_run(store):
    tracker = Tracker(store, "failures")
    tracker.start_invocation({}, {})
    assert tracker.sync([_record("ddd", status="failed", error="x" * 20000)]) == 1
    (run,) = _trial_runs(store, "failures")
    assert run.info.status == "FAILED"
    assert run.data.tags[TAG_ERROR].startswith("xxx") and len(run.data.tags[TAG_ERROR]) < 8000
    retried = _record("ddd", attempts=2)
    assert tracker.sync([retried]) == 1
    assert tracker.sync([retried]) == 0
    frame = study_runs(store, "failures")
    assert len(frame) == 1 and frame.loc[0, "status"] == "FINISHED"
    (again,) = _trial_runs(store, "failures")  # one child run per trial, ever
    assert again.info.run_id == run.info.run_id and TAG_ERROR not in again.data.tags
    assert again.data.tags[TAG_ATTEMPTS] == "2" and again.data.metrics["fid"] == 12.5


def test_run_left_running_by_a_killed_sync_is_filled_in(store):
    tracker = Tracker(store, "stale")
    client = MlflowClient(tracking_uri=store)
    stale = client.create_run(tracker.experiment_id, tags={TAG_TRIAL_HASH: "eee"})
    client.log_batch(stale.info.run_id, params=[Param("seed", "0")])  # half-logged
    tracker.start_invocation({}, {})
    assert tracker.sync([_record("eee")]) == 1
    assert client.get_run(stale.info.run_id).info.status == "FINISHED"
    assert client.get_run(stale.info.run_id).data.params["model.timestep"] == "explicit"
    assert tracker.sync([_record("eee")]) == 0
    assert [r.info.run_id for r in _trial_runs(store, "stale")] == [stale.info.run_id]


def test_a_finished_result_the_ledger_replaced_is_logged_into_the_same_run(store):
    """A finished trial whose samples were damaged runs again (its old record quarantined): the
    child run then holds the new result, and an unchanged training curve is not logged twice."""
    tracker = Tracker(store, "superseded")
    tracker.start_invocation({}, {})
    assert tracker.sync([_record("fff")]) == 1
    (run,) = _trial_runs(store, "superseded")
    rerun = _record("fff", metrics={"fid": 13.25, "nfe": 8.0}, intervals={"fid": [12.0, 14.5]}, seconds=4.0)
    assert tracker.sync([rerun]) == 1
    assert tracker.sync([rerun]) == 0
    (again,) = _trial_runs(store, "superseded")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert again.data.metrics["fid"] == 13.25 and again.data.metrics["fid_ci_high"] == 14.5
    client = MlflowClient(tracking_uri=store)
    assert [m.value for m in client.get_metric_history(run.info.run_id, "nfe")] == [8.0]
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 3


def test_a_run_logged_before_record_digests_counts_as_holding_its_result(store):
    from harness.tracking.schema import TAG_RECORD

    tracker = Tracker(store, "undigested")
    tracker.start_invocation({}, {})
    assert tracker.sync([_record("ggg")]) == 1
    (run,) = _trial_runs(store, "undigested")
    MlflowClient(tracking_uri=store).delete_tag(run.info.run_id, TAG_RECORD)
    assert tracker.sync([_record("ggg", seconds=9.0)]) == 0


def test_long_param_values_are_cut_to_the_mlflow_limit(store):
    tracker = Tracker(store, "long")
    tracker.start_invocation({}, {})
    assert tracker.sync([_record("fff", config={**CONFIG, "data": {"note": "y" * 10000}})]) == 1
    (run,) = _trial_runs(store, "long")
    assert run.data.params["data.note"] == "y" * 6000


def test_sync_needs_an_open_invocation_and_parent_artifacts_are_logged(store, tmp_path):
    tracker = Tracker(store, "parent")
    with pytest.raises(RuntimeError, match="start_invocation"):
        tracker.sync([_record("ggg")])
    parent_id = tracker.start_invocation({}, {})
    report = tmp_path / "report.md"
    report.write_text("# report\n")
    tracker.log_parent_artifact(report)
    tracker.end_invocation("FAILED")
    client = MlflowClient(tracking_uri=store)
    assert client.get_run(parent_id).info.status == "FAILED"
    assert {f.path for f in client.list_artifacts(parent_id)} == {"study_config.yaml", "report.md"}


def test_study_runs_one_row_per_trial(store):
    tracker = Tracker(store, "frame")
    tracker.start_invocation({}, {})
    tracker.sync([_record("h1"), _record("h2", metrics={"fid": 3.0}), _record("h3", status="failed")])
    frame = study_runs(store, "frame")
    assert sorted(frame["tags.unmask.trial_hash"]) == ["h1", "h2", "h3"]
    assert {"params.sampler.name", "metrics.fid", "tags.unmask.status"} <= set(frame.columns)
    assert study_runs(store, "no-such-study").empty


# A metric's protocol in tags, however long: a value per sample seed over hundreds of seeds passes
# MLflow's 8,000 characters per tag, and was dropped whole (reports then compared methods unpaired,
# without their per-seed values, and showed no protocol).

values = st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=30))
protocols = st.dictionaries(
    st.sampled_from(["fid", "precision", "is_mean", "fvd"]),
    st.dictionaries(st.text(min_size=1, max_size=8), st.one_of(values, st.lists(values, max_size=60))),
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(protocols, st.integers(1, 300))
def test_protocol_tags_fit_the_limit_and_read_back_whole(given_protocols, limit):
    tags = protocol_tags(given_protocols, limit)
    assert all(len(v) <= limit for v in tags.values())
    assert read_protocols({**tags, "unmask.status": "finished"}) == json.loads(json.dumps(given_protocols))


def test_a_protocol_missing_a_part_is_left_out():
    tags = protocol_tags({"fid": {"seeds": list(range(100))}, "nfe": {"n": 1}}, 50)
    del tags["unmask.protocol-part.2.fid"]
    assert read_protocols(tags) == {"nfe": {"n": 1}}


def _long_protocol(seeds: int, offset: float) -> dict:
    per_seed = [40.0 + offset + 0.123456789 * (s % 7) for s in range(seeds)]
    return {"key": "fid/animals-cnn", "sample_seeds": list(range(seeds)), PER_SEED: per_seed}


def test_460_seed_protocols_reach_the_report_table_whole(store):
    tracker = Tracker(store, "long-protocol")
    tracker.start_invocation({}, {})
    protocol = _long_protocol(460, 0.0)
    assert len(json.dumps(protocol)) > MAX_TAG_VAL_LENGTH
    assert tracker.sync([_record("lp1", protocols={"fid": protocol})]) == 1
    (row,) = study_table(store, "long-protocol").table.to_dict("records")
    assert row["protocol"]["fid"] == protocol


def test_a_run_whose_long_protocol_was_dropped_is_filled_in(store):
    """Runs logged before the protocol was split into parts lack it: the next invocation's
    sync logs it."""
    tracker = Tracker(store, "dropped-protocol")
    tracker.start_invocation({}, {})
    record = _record("dp1", protocols={"fid": _long_protocol(460, 1.0)})
    assert tracker.sync([record]) == 1
    tracker.end_invocation()
    (run,) = _trial_runs(store, "dropped-protocol")
    client = MlflowClient(tracking_uri=store)
    for key in [k for k in run.data.tags if k.startswith("unmask.protocol")]:
        client.delete_tag(run.info.run_id, key)  # what an older version left
    tracker.start_invocation({}, {})  # a resume
    assert tracker.sync([record]) == 1
    assert tracker.sync([record]) == 0
    (again,) = _trial_runs(store, "dropped-protocol")
    assert again.info.run_id == run.info.run_id and again.data.tags[TAG_TRIAL_HASH] == "dp1"
    assert read_protocols(again.data.tags) == record.protocols


def test_sync_reads_the_runs_once_per_invocation_and_logs_what_a_fresh_read_would(store, monkeypatch):
    """After the first sync of an invocation, a sync does not search the experiment's runs again
    (the driver holds the study's lock: no one else logs them), and what it logs is what a sync
    that searched each time logs: each new record once, a replaced record into its own run."""
    import harness.tracking.tracker as tracker_module

    searches = []
    real = tracker_module.trial_runs
    monkeypatch.setattr(tracker_module, "trial_runs", lambda *a, **k: searches.append(1) or real(*a, **k))
    tracker = Tracker(store, "read-once")
    tracker.start_invocation({}, {})
    ledger = []
    for i in range(4):
        ledger.append(_record(f"r{i}", status="failed" if i == 2 else "finished"))
        assert tracker.sync(ledger) == 1
    ledger[2] = _record("r2", attempts=2)  # Tune retried the failed trial: its record replaced
    assert tracker.sync(ledger) == 1
    assert tracker.sync(ledger) == 0
    assert len(searches) == 1
    runs = {r.data.tags[TAG_TRIAL_HASH]: r for r in _trial_runs(store, "read-once")}
    assert sorted(runs) == ["r0", "r1", "r2", "r3"]  # one run per trial
    assert runs["r2"].info.status == "FINISHED" and runs["r2"].data.tags[TAG_ATTEMPTS] == "2"
    tracker.end_invocation()
    monkeypatch.setattr(tracker_module, "trial_runs", real)
    fresh = Tracker(store, "read-once")  # a resume reads what the first invocation left
    fresh.start_invocation({}, {})
    assert fresh.sync(ledger) == 0


def test_a_sync_that_fails_midway_reads_the_runs_again(store, monkeypatch):
    """A run left half-logged by a failed sync is found (and filled in) by the next one."""
    tracker = Tracker(store, "fails-midway")
    tracker.start_invocation({}, {})
    assert tracker.sync([_record("m0")]) == 1
    real = Tracker._log_trial_artifacts

    def broken(self, run_id, record, base_dir):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Tracker, "_log_trial_artifacts", broken)
    with pytest.raises(OSError):
        tracker.sync([_record("m0"), _record("m1")])
    monkeypatch.setattr(Tracker, "_log_trial_artifacts", real)
    assert tracker.sync([_record("m0"), _record("m1")]) == 1
    runs = _trial_runs(store, "fails-midway")
    assert sorted(r.data.tags[TAG_TRIAL_HASH] for r in runs) == ["m0", "m1"]  # the half-logged one reused
    assert all(r.info.status == "FINISHED" for r in runs)
