"""The study harness end to end, in-process: validation, train once / sample many, failures, MLflow, search.

Validation tests start nothing. The study tests run tiny studies on the session's Ray
(``ray_session``; the harness reuses a Ray its caller started) with the session's evaluator cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import make_runs_root, study_file

import run_study
from harness.config.study import load_study
from harness.config.trial import ConfigError
from harness.ray import dispatch
from harness.run.ledger import Ledger, TrialRecord
from harness.runner import execute, prepare
from harness.tracking.schema import TAG_ROLE, TAG_TRIAL_HASH, experiment_name, trial_runs
from reports.mlflow_source import study_runs

# ---- validation: errors name the field and what was expected; nothing is written -----------------


def _error(write_study, **fields) -> str:
    with pytest.raises(ConfigError) as info:
        load_study(write_study("bad", **fields))
    return str(info.value)


def test_unknown_key_names_it_and_suggests_the_closest(write_study) -> None:
    message = _error(write_study, overrides={"sampler.num_step": 4})
    assert "'sampler.num_step'" in message
    assert "did you mean 'sampler.num_steps'" in message
    message = _error(write_study, space={"sampler.temprature": [0.9, 1.0]})
    assert "'sampler.temprature'" in message and "did you mean 'sampler.temperature'" in message


def test_unknown_study_field_suggests_the_closest(write_study) -> None:
    message = _error(write_study, concurency=2)
    assert "concurency" in message and "did you mean 'concurrency'" in message
    message = _error(write_study, search={"algoritm": "random"})
    assert "search.algoritm" in message and "did you mean 'algorithm'" in message


def test_wrong_value_type_names_field_and_value(write_study) -> None:
    message = _error(write_study, overrides={"train.steps": "abc"})
    assert "train.steps" in message and "'abc'" in message and "integer" in message
    message = _error(write_study, space={"sampler.num_steps": [2, "x"]})
    assert "sampler.num_steps" in message and "'x'" in message


def test_unknown_scheduler_and_sampler_list_the_known_ones(write_study) -> None:
    message = _error(write_study, overrides={"train.scheduler": "linaer"})
    assert "'linaer'" in message
    assert all(name in message for name in ("'linear'", "'cosine'", "'arccos'"))
    assert "did you mean 'linear'" in message
    message = _error(write_study, space={"sampler.name": ["euler", "maskgt"]})
    assert "'maskgt'" in message and "expected one of [" in message
    assert "'euler'" in message and "did you mean 'maskgit'" in message


def test_empty_space_with_a_search_algorithm_is_refused(write_study) -> None:
    for algorithm in ("random", "optuna"):
        message = _error(write_study, search={"algorithm": algorithm, "num_trials": 3})
        assert "space is empty" in message
    load_study(write_study("one_trial_grid"))  # an empty grid is one trial: allowed


def test_metric_the_evaluator_does_not_produce(write_study) -> None:
    message = _error(write_study, metric="frechet")
    assert "'frechet'" in message and "'fid'" in message and "'precision'" in message


def test_bad_distribution_specs(write_study) -> None:
    random_search = {"algorithm": "random", "num_trials": 2}
    message = _error(write_study, space={"sampler.temperature": {"normal": [0, 1]}}, search=random_search)
    assert "unknown distribution 'normal'" in message and "'uniform'" in message
    message = _error(write_study, space={"sampler.temperature": {"uniform": [0.5]}}, search=random_search)
    assert "space.sampler.temperature.uniform" in message and "[low, high]" in message
    message = _error(
        write_study, space={"sampler.temperature": {"uniform": [0.0, 1.0]}}, search=random_search
    )
    assert "sampler.temperature" in message and "0.0" in message  # temperature > 0: the bound is probed


def test_continuous_axis_under_grid_search(write_study) -> None:
    message = _error(write_study, space={"sampler.temperature": {"uniform": [0.5, 1.5]}})
    assert "grid" in message and "sampler.temperature" in message and "random or optuna" in message


def test_cli_validate_exits_2_with_the_message_and_writes_nothing(write_study, tmp_path, capsys) -> None:
    root = tmp_path / "never"
    study = write_study("bad", overrides={"sampler.num_step": 4})
    assert run_study.main(["validate", str(study), "--runs-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "did you mean 'sampler.num_steps'" in err
    assert run_study.main(["run", str(study), "--runs-root", str(root)]) == 2
    assert run_study.main(["validate", str(tmp_path / "missing.yaml"), "--runs-root", str(root)]) == 2
    assert "no study file at" in capsys.readouterr().err
    assert not root.exists()


def test_cli_validate_and_dry_run_print_the_plan_and_write_nothing(write_study, tmp_path, capsys) -> None:
    root = tmp_path / "never"
    study = write_study("plan", space=GRID_SPACE)
    assert run_study.main(["validate", str(study), "--runs-root", str(root)]) == 0
    assert "valid: study 'plan', 2 training(s), 8 trial(s)" in capsys.readouterr().out
    assert run_study.main(["run", str(study), "--dry-run", "--runs-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "2 training(s) (0 in the store), 8 sampling/eval trial(s) (0 finished)" in out
    assert "estimated compute" in out
    assert not root.exists()


def test_resources_larger_than_the_machine_are_refused_before_anything_starts(
    write_study, runs_root, capsys, monkeypatch
) -> None:
    def no_ray(self):
        raise AssertionError("Ray must not start for a request the machine cannot meet")

    monkeypatch.setattr(dispatch.RayDispatcher, "__enter__", no_ray)
    before = sorted(runs_root.iterdir())
    study = write_study("greedy", resources={"cpu": 64})
    uri = f"sqlite:///{runs_root}/mlflow.db"
    assert run_study.main(["run", str(study), "--runs-root", str(runs_root), "--tracking-uri", uri]) == 2
    assert "resources.cpu = 64" in capsys.readouterr().err
    assert sorted(runs_root.iterdir()) == before  # no study folder, no MLflow store or run


# ---- train once, sample many ---------------------------------------------------------------------
#
# The study tests share one runs root (and so one checkpoint store and one MLflow store): the grid
# study trains the two checkpoints, the later studies sample from them. Each test asserts on its
# own study's folder and experiment, and on the store as the grid study left it (a snapshot).

GRID_SPACE = {
    "model.timestep": ["explicit", "implicit"],  # a training axis: 2 checkpoints
    "sampler.num_steps": [2, 3],  # sampling axes: 4 settings per checkpoint
    "sampler.temperature": [0.9, 1.0],
}


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """(mtime_ns, bytes) of every file under root (lock files excepted)."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "lock"
    }


def invocations(uri: str, study: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name(study))
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`{TAG_ROLE}` = 'invocation'")


def cli_run(study: Path, root: Path, uri: str) -> int:
    return run_study.main(["run", str(study), "--runs-root", str(root), "--tracking-uri", uri])


@pytest.fixture(scope="module")
def grid_study(tmp_path_factory, warm_eval_cache, ray_session) -> dict:
    """The 2 x 4 grid study run through the CLI, then run again; snapshots in between."""
    tmp = tmp_path_factory.mktemp("grid")
    root = make_runs_root(tmp / "runs", warm_eval_cache)
    study = study_file(tmp, "grid", space=GRID_SPACE, concurrency=2)
    uri = f"sqlite:///{root}/mlflow.db"
    assert cli_run(study, root, uri) == 0
    first = {"store": snapshot(root / "checkpoints"), "ledger": snapshot(root / "grid" / "ledger")}
    entered = []
    original = dispatch.RayDispatcher.__enter__
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dispatch.RayDispatcher, "__enter__", lambda self: entered.append(1) or original(self))
        assert cli_run(study, root, uri) == 0
        again = {"store": snapshot(root / "checkpoints"), "ledger": snapshot(root / "grid" / "ledger")}
    plan = prepare(study, root).plan
    return {
        "root": root,
        "uri": uri,
        "study": study,
        "plan": plan,
        "first": first,
        "again": again,
        "rerun_dispatches": len(entered),
    }


def _training_hash(grid_study: dict, timestep: str) -> str:
    (training,) = [t for t in grid_study["plan"].trainings if t.model.timestep == timestep]
    return training.training_hash()


def test_grid_trains_each_config_once_and_samples_every_setting(grid_study) -> None:
    root, plan, store = grid_study["root"], grid_study["plan"], grid_study["first"]["store"]
    trainings = {t.training_hash() for t in plan.trainings}
    assert len(trainings) == 2 and len(plan.trials) == 8
    assert {name.split("/")[0] for name in store} == trainings  # exactly 2 store folders
    for h in trainings:
        assert f"{h}/done.json" in store and f"{h}/checkpoint.pt" in store
        curve = store[f"{h}/curve.jsonl"][1].decode().splitlines()
        steps = [json.loads(line)["step"] for line in curve]
        assert len(steps) == len(set(steps)) and max(steps) == 20  # trained once, to the end
        settings = {name.split("/")[2] for name in store if name.startswith(f"{h}/samples/")}
        assert len(settings) == 4  # each sampling setting sampled once, beside its checkpoint
    records = [TrialRecord.from_dict(json.loads(text)) for _, text in grid_study["first"]["ledger"].values()]
    assert len(records) == 8 and all(r.status == "finished" and r.attempts == 1 for r in records)
    assert {r.trial_hash for r in records} == {t.trial_hash() for t in plan.trials}
    assert sorted(r.training_hash for r in records) == sorted(list(trainings) * 4)
    for r in records:
        assert r.metrics["fid"] > 0 and r.metrics["nfe"] == r.config["sampler"]["num_steps"]
        assert Path(r.artifacts["samples_png"]).is_file()
    assert (root / "grid" / "report.md").is_file()


def test_rerunning_a_finished_study_trains_and_samples_nothing(grid_study) -> None:
    assert grid_study["rerun_dispatches"] == 0  # nothing pending: Ray is not even asked
    assert grid_study["again"] == grid_study["first"]  # store and ledger: same files, bytes, mtimes
    plan = grid_study["plan"]
    assert plan.pending_trainings == [] and plan.pending_trials == []


def test_mlflow_one_parent_per_invocation_one_child_per_trial(grid_study) -> None:
    uri = grid_study["uri"]
    parents = invocations(uri, "grid")
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    runs = study_runs(uri, "grid", latest_only=False)
    hashes = {t.trial_hash() for t in grid_study["plan"].trials}
    assert len(runs) == 8 and set(runs[f"tags.{TAG_TRIAL_HASH}"]) == hashes  # none repeated by the re-run
    assert set(runs["status"]) == {"FINISHED"}
    first = min(parents, key=lambda p: p.info.start_time)
    assert set(runs["tags.mlflow.parentRunId"]) == {first.info.run_id}
    assert runs["metrics.fid"].notna().all()
    assert set(runs["params.sampler.num_steps"]) == {"2", "3"}


def test_a_second_study_reuses_a_shared_checkpoint(grid_study) -> None:
    root = grid_study["root"]
    shared = _training_hash(grid_study, "explicit")
    study = study_file(root.parent, "more", space={"model.timestep": ["explicit"], "sampler.num_steps": [4]})
    run = prepare(study, root)
    assert [t.training_hash() for t in run.plan.trainings] == [shared] and run.plan.pending_trainings == []
    before = snapshot(root / "checkpoints" / shared)
    records = execute(run)
    assert [(r.status, r.training_hash) for r in records] == [("finished", shared)]
    after = snapshot(root / "checkpoints" / shared)
    for name in ("done.json", "checkpoint.pt", "curve.jsonl"):
        assert after[name] == before[name]
    assert {p.name for p in (root / "checkpoints").iterdir()} == {
        t.training_hash() for t in grid_study["plan"].trainings
    }
    assert any("num_steps=4" in name for name in set(after) - set(before))  # only the new setting sampled


def test_cached_heldout_ce_appears_atomically(grid_study, monkeypatch) -> None:
    """Trials of one checkpoint run at once and share its cached held-out CE: no reader may find it
    half-written (an empty file would fail the trial), so it must appear by an atomic rename."""
    from harness.run.store import CheckpointStore
    from harness.run.trial import heldout_ce

    trial = grid_study["plan"].trials[0]
    store = CheckpointStore(grid_study["root"] / "checkpoints")
    path = store.folder(trial.training_hash()) / "heldout_ce.txt"
    path.unlink()
    renamed = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: renamed.append(Path(dst).name) or replace(src, dst))
    value = heldout_ce(trial, store, "cpu")
    assert renamed == ["heldout_ce.txt"]
    assert float(path.read_text()) == value and value > 0
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


# ---- failures -----------------------------------------------------------------------------------


def test_a_failing_trial_is_recorded_retried_and_does_not_stop_the_study(grid_study, capsys) -> None:
    root, uri = grid_study["root"], grid_study["uri"]
    # lr = 1e30 diverges at its second step: a valid config whose training fails at run time (what
    # validation can see, such as MaskGIT steps beyond the tokens, it refuses before anything runs).
    lr = prepare(grid_study["study"], root).plan.trainings[0].train.lr
    study = study_file(
        root.parent,
        "failing",
        overrides={"model.timestep": "implicit", "sampler.num_steps": 2, "sampler.temperature": 1.0},
        space={"train.lr": [lr, 1e30]},
        max_failures=1,
        concurrency=2,
    )
    assert run_study.main(["validate", str(study), "--runs-root", str(root)]) == 0
    pending = prepare(study, root).plan.pending_trainings
    assert [t.train.lr for t in pending] == [1e30]  # the other samples the grid's implicit checkpoint
    capsys.readouterr()
    assert cli_run(study, root, uri) == 3  # the study ran; a trial failed
    assert "1/2 trials finished" in capsys.readouterr().out
    records = {r.config["train"]["lr"]: r for r in Ledger(root / "failing").records()}
    assert set(records) == {lr, 1e30}
    ok, bad = records[lr], records[1e30]
    assert ok.status == "finished" and ok.attempts == 1 and ok.error is None
    assert bad.status == "failed" and bad.metrics == {}
    assert bad.attempts == 2  # the first try and one retry (max_failures: 1)
    assert "training diverged at step" in bad.error and "Traceback" in bad.error
    runs = study_runs(uri, "failing").set_index(f"tags.{TAG_TRIAL_HASH}")
    assert runs.loc[bad.trial_hash, "status"] == "FAILED"
    assert runs.loc[bad.trial_hash, "tags.unmask.attempts"] == "2"
    assert "training diverged at step" in runs.loc[bad.trial_hash, "tags.unmask.error"]
    assert runs.loc[ok.trial_hash, "status"] == "FINISHED"


# ---- random and Optuna search over a continuous axis -------------------------------------------


def _search(root: Path, algorithm: str, **fields) -> list:
    study = study_file(
        root.parent,
        f"search_{algorithm}",
        space={"sampler.temperature": {"uniform": [0.5, 1.5]}},
        search={"algorithm": algorithm, "num_trials": 3, "seed": 1},
        concurrency=2,
        **fields,
    )
    records = execute(prepare(study, root))
    assert len(records) == 3 and all(r.status == "finished" for r in records)
    assert len(Ledger(root / f"search_{algorithm}").records()) == 3
    temperatures = [r.config["sampler"]["temperature"] for r in records]
    assert len(set(temperatures)) == 3 and all(0.5 <= t <= 1.5 for t in temperatures)
    assert len({r.training_hash for r in records}) == 1  # the axis is a sampling one
    return records


def test_random_search_trains_its_checkpoint_once_across_concurrent_trials(grid_study) -> None:
    root = grid_study["root"]
    (h,) = {r.training_hash for r in _search(root, "random", seeds=[7])}  # a checkpoint no study has
    assert h not in {t.training_hash() for t in grid_study["plan"].trainings}
    steps = [
        json.loads(line)["step"]
        for line in (root / "checkpoints" / h / "curve.jsonl").read_text().splitlines()
    ]
    assert (
        len(steps) == len(set(steps)) and max(steps) == 20
    )  # two concurrent trials, one training (the other waited)


def test_optuna_search_samples_an_existing_checkpoint(grid_study) -> None:
    root = grid_study["root"]
    before = snapshot(root / "checkpoints" / _training_hash(grid_study, "implicit"))
    (h,) = {r.training_hash for r in _search(root, "optuna")}
    assert h == _training_hash(grid_study, "implicit")
    after = snapshot(root / "checkpoints" / h)
    assert after["done.json"] == before["done.json"] and after["checkpoint.pt"] == before["checkpoint.pt"]


def test_report_command_from_mlflow_and_from_the_ledger(grid_study, capsys) -> None:
    from mlflow import MlflowClient

    root, study, uri = grid_study["root"], grid_study["study"], grid_study["uri"]
    assert run_study.main(["report", str(study), "--runs-root", str(root), "--tracking-uri", uri]) == 0
    page = (root / "grid" / "report.html").read_text()
    assert "<h2>Figures</h2>" in page and 'src="data:image/png;base64,' in page
    latest = max(invocations(uri, "grid"), key=lambda r: r.info.start_time)
    assert {"report.md", "report.html"} <= {
        a.path for a in MlflowClient(uri).list_artifacts(latest.info.run_id)
    }
    (root / "grid" / "report.md").unlink()
    assert run_study.main(["report", str(study), "--runs-root", str(root), "--from-ledger"]) == 0
    assert "## Finished trials (best first)" in (root / "grid" / "report.md").read_text()


def test_the_report_never_shows_fewer_trials_than_the_ledger_finished(grid_study, tmp_path, capsys) -> None:
    """A trial's run gone from the store is logged back from the ledger before the report reads
    it; a store with no run of the study at all (deleted, or another named) is refused (exit 2)
    instead of rendered as a report of no trials; a store that is no database is named."""
    from mlflow import MlflowClient

    root, study, uri = grid_study["root"], grid_study["study"], grid_study["uri"]
    finished = [r for r in Ledger(root / "grid").records() if r.status == "finished"]
    client = MlflowClient(uri)
    child = next(trial_runs(client, client.get_experiment_by_name(experiment_name("grid")).experiment_id))
    client.delete_run(child.info.run_id)
    assert run_study.main(["report", str(study), "--runs-root", str(root), "--tracking-uri", uri]) == 0
    assert "logged 1 trial(s) of study 'grid' from its ledger" in capsys.readouterr().out
    assert f"{len(finished)} trials finished" in (root / "grid" / "report.md").read_text()
    before = (root / "grid" / "report.md").read_bytes()
    elsewhere = f"sqlite:///{tmp_path / 'other.db'}"
    assert run_study.main(["report", str(study), "--runs-root", str(root), "--tracking-uri", elsewhere]) == 2
    assert "resume grid" in capsys.readouterr().err and (root / "grid" / "report.md").read_bytes() == before
    (tmp_path / "broken.db").write_text("not a database")
    broken = f"sqlite:///{tmp_path / 'broken.db'}"
    assert run_study.main(["report", str(study), "--runs-root", str(root), "--tracking-uri", broken]) == 2
    assert "broken.db: not a readable SQLite database" in capsys.readouterr().err
