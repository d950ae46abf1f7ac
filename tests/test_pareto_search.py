"""Cost-aware search: ``search.objectives`` runs Optuna's multi-objective TPE through Ray Tune, and
the report draws the front it found beside another study's (``compare_front``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from harness.config.study import load_study, objective_modes
from reports.figures import pareto_front, tradeoff

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("search", "metric", "scheduler", "words"),
    [
        (
            {"algorithm": "random", "objectives": ["fid", "seconds_per_sample"]},
            "fid",
            None,
            "needs search.algorithm optuna",
        ),
        ({"algorithm": "optuna", "objectives": ["fid"]}, "fid", None, "two or more distinct"),
        ({"algorithm": "optuna", "objectives": ["fid", "fdi"]}, "fid", None, "'fdi' is not produced"),
        ({"algorithm": "optuna", "objectives": ["nfe", "seconds_per_sample"]}, "fid", None, "must be one of"),
        ({"algorithm": "optuna", "objectives": ["fid", "nfe"]}, "fid", {"name": "asha"}, "needs fifo"),
    ],
)
def test_bad_objectives_are_refused_before_anything_runs(
    write_study, tmp_path, search, metric, scheduler, words, capsys
):
    import run_study

    fields = {
        "search": {"num_trials": 2, **search},
        "metric": metric,
        "space": {"sampler.temperature": {"uniform": [0.8, 1.2]}},
    }
    if scheduler:
        fields["scheduler"] = scheduler
    study = write_study("bad_objectives", **fields)
    assert run_study.main(["validate", str(study), "--runs-root", str(tmp_path)]) == 2
    assert words in capsys.readouterr().err


def test_each_objective_keeps_its_direction(write_study) -> None:
    spec = load_study(
        write_study(
            "modes",
            metric="fid",
            overrides={"eval.metrics": ["fid", "precision"]},
            space={"sampler.temperature": {"uniform": [0.8, 1.2]}},
            search={
                "algorithm": "optuna",
                "num_trials": 2,
                "objectives": ["fid", "seconds_per_sample", "precision"],
            },
        )
    )
    assert objective_modes(spec) == ["min", "min", "max"]


def test_the_cost_aware_study_validates() -> None:
    spec = load_study(REPO / "search_spaces" / "cost_aware.yaml")
    assert spec.search.objectives == ["fid", "seconds_per_sample"]
    assert spec.compare_front == "maskgit_vs_di_mini"


def test_the_tradeoff_draws_the_other_studys_front(tmp_path) -> None:
    ours = pd.DataFrame(
        {
            "seconds_per_sample": [0.01, 0.02, 0.04],
            "fid": [120.0, 100.0, 105.0],
            "method": ["a"] * 3,
            "status": ["finished"] * 3,
        }
    )
    grid = pd.DataFrame(
        {
            "seconds_per_sample": [0.01, 0.03, 0.0],
            "fid": [130.0, 90.0, 80.0],
            "status": ["finished", "finished", "finished"],
        }
    )
    figure = tradeoff(
        ours, "seconds_per_sample", "fid", tmp_path, {"a": "red"}, log_x=True, other=("grid", grid)
    )
    assert figure is not None and figure.path.is_file()
    assert "Pareto front of study 'grid' (2 trials)" in figure.caption  # a zero-second trial left out
    alone = tradeoff(ours, "seconds_per_sample", "fid", tmp_path, {"a": "red"}, log_x=True)
    assert "grid" not in alone.caption
    assert pareto_front(ours["seconds_per_sample"], ours["fid"], "min", "min") == [0, 1]


@pytest.mark.slow  # a search through Ray Tune
def test_a_multi_objective_search_runs_through_tune(write_study, runs_root, ray_session) -> None:
    from harness.runner import execute, prepare

    study = write_study(
        "pareto",
        space={"sampler.num_steps": {"randint": [1, 4]}, "sampler.temperature": {"uniform": [0.8, 1.2]}},
        search={
            "algorithm": "optuna",
            "num_trials": 3,
            "seed": 1,
            "objectives": ["fid", "seconds_per_sample"],
        },
    )
    records = execute(prepare(study, runs_root))
    assert len(records) == 3 and all(r.status == "finished" for r in records)
    assert all({"fid", "seconds_per_sample"} <= set(r.metrics) for r in records)
