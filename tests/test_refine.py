"""Per-cell refinements and ``run_study.py extend --seeds``: the cells an undecided finding compares
get more sample seeds, and only their new seeds are drawn."""

from __future__ import annotations

import pytest
import yaml

from harness.config.study import expand_grid, load_study
from harness.run.extend import more_seeds
from harness.run.ledger import TrialRecord

SPACE = {"model.timestep": ["explicit", "implicit"], "sampler.cfg_scale": [1.0, 2.0]}


def _cells(spec) -> dict[tuple, object]:
    return {(t.model.timestep, t.sampler.cfg_scale): t for t in expand_grid(spec)}


def test_a_refinement_changes_its_cell_only(write_study) -> None:
    plain = _cells(load_study(write_study("plain", space=SPACE)))
    where = {"model.timestep": "implicit", "sampler.cfg_scale": 2.0}
    refined = _cells(
        load_study(
            write_study(
                "plain", space=SPACE, refine=[{"where": where, "overrides": {"eval.sample_seeds": [0, 1, 2]}}]
            )
        )
    )
    assert refined[("implicit", 2.0)].eval.sample_seeds == [0, 1, 2]
    assert refined[("implicit", 2.0)].trial_hash() != plain[("implicit", 2.0)].trial_hash()
    # the training is the same: only the sampling trial is new
    assert refined[("implicit", 2.0)].training_hash() == plain[("implicit", 2.0)].training_hash()
    for cell in [c for c in plain if c != ("implicit", 2.0)]:
        assert refined[cell].trial_hash() == plain[cell].trial_hash()


@pytest.mark.parametrize(
    ("refine", "named"),
    [
        (
            [{"where": {"sampler.cfg_scale": 3.0}, "overrides": {"eval.sample_seeds": [0, 1]}}],
            "refine[0].where",
        ),
        (
            [{"where": {"sampler.cfg_scal": 1.0}, "overrides": {"eval.sample_seeds": [0, 1]}}],
            "sampler.cfg_scal",
        ),
        ([{"where": {"sampler.cfg_scale": 1.0}, "overrides": {}}], "refine.0.overrides"),
        ([{"where": {"sampler.cfg_scale": 1.0}, "overrides": {"eval.sample_seeds": "x"}}], "sample_seeds"),
    ],
)
def test_bad_refinements_are_refused_naming_the_field(write_study, tmp_path, capsys, refine, named) -> None:
    import run_study

    study = write_study("bad_refine", space=SPACE, refine=refine)
    assert run_study.main(["validate", str(study), "--runs-root", str(tmp_path)]) == 2
    assert named in capsys.readouterr().err


def _record(trial_hash: str, timestep: str, cfg: float, seeds: list[int]) -> TrialRecord:
    config = {"model": {"timestep": timestep}, "sampler": {"cfg_scale": cfg}, "eval": {"sample_seeds": seeds}}
    return TrialRecord(trial_hash, "h", "finished", config, metrics={"fid": 1.0})


def test_more_seeds_raises_the_wanted_cells_keeping_their_seeds(write_study) -> None:
    spec = load_study(write_study("seeds", space=SPACE))
    records = [
        _record("a", "implicit", 2.0, [0, 1, 2]),
        _record("b", "explicit", 1.0, [4, 7]),
        _record("c", "explicit", 2.0, [0, 1, 2]),
    ]
    grown, lines = more_seeds(spec, records, ["a", "b", "unknown"], 5)
    assert len(lines) == 2 and "3 -> 5" in lines[0] and "2 -> 5" in lines[1]
    cells = _cells(load_study(write_study("seeds", space=SPACE, refine=grown.model_dump()["refine"])))
    assert cells[("implicit", 2.0)].eval.sample_seeds == [0, 1, 2, 3, 4]
    assert cells[("explicit", 1.0)].eval.sample_seeds == [4, 7, 0, 1, 2]  # its own kept, new ones unused
    assert cells[("explicit", 2.0)].eval.sample_seeds == _cells(spec)[("explicit", 2.0)].eval.sample_seeds
    # raised again: one refinement per cell, replaced, not stacked
    again, lines = more_seeds(grown, [_record("a", "implicit", 2.0, [0, 1, 2, 3, 4])], ["a"], 6)
    assert len(again.refine) == 2 and lines == [
        "model.timestep=implicit, sampler.cfg_scale=2.0: 5 -> 6 sample seeds"
    ]
    assert more_seeds(again, [_record("a", "implicit", 2.0, list(range(6)))], ["a"], 6)[1] == []


@pytest.mark.slow  # two rounds of a study through Ray Tune (data baselines: no training)
def test_extend_seeds_draws_only_the_new_seeds_of_the_undecided_cells(
    write_study, runs_root, ray_session, capsys, monkeypatch
) -> None:
    import cli.extend
    import run_study

    folder = write_study("ref_holder").parent
    (folder / "ref.yaml").write_text(
        yaml.safe_dump(
            {
                "e": {
                    "findings": [
                        {
                            "kind": "at_least_as_good",
                            "key": "sampler.name",
                            "a": "class_marginals",
                            "b": "heldout_tokens",
                        }
                    ]
                }
            }
        )
    )
    study = write_study(
        "reseed",
        space={"sampler.name": ["class_marginals", "heldout_tokens"]},
        overrides={"eval.sample_seeds": [0, 1], "eval.metrics": ["fid"]},
        paper_reference="ref.yaml#e",
    )
    # Which comparison is undecided is the findings checker's (tests/test_findings.py); here the
    # first trial run is said to be, so that the loop's own behaviour is what is tested.
    wanted: list[str] = []

    def undecided(args, spec):
        from harness.run.ledger import Ledger

        records = sorted(Ledger(runs_root / "reseed").records(), key=lambda r: r.config["sampler"]["name"])
        wanted[:] = wanted or [records[0].trial_hash]
        return wanted

    monkeypatch.setattr(cli.extend, "_undecided_trials", undecided)
    args = ["extend", str(study), "--runs-root", str(runs_root), "--seeds", "3"]
    assert run_study.main(args) == 0
    out = capsys.readouterr().out
    assert "sampler.name=class_marginals: 2 -> 3 sample seeds" in out and "every trial" in out
    grown = yaml.safe_load((runs_root / "reseed" / "study.yaml").read_text())
    assert grown["refine"] == [
        {"where": {"sampler.name": "class_marginals"}, "overrides": {"eval.sample_seeds": [0, 1, 2]}}
    ]
    samples = sorted((runs_root / "checkpoints").glob("*/samples/*/seed_*/samples.npz"))
    assert len(samples) == 5  # 2 + 2 seeds, then the one new seed of the raised cell


def test_more_seeds_names_a_recipe_variants_cell_by_its_pins(tmp_path) -> None:
    """A study whose variants are recipes (maskgit_vs_di): the refinement names the cell by the
    variant's pins (the recipe among them), validates, and reaches that cell only."""
    from pathlib import Path

    from harness.run.extend import write_study

    study = Path(__file__).resolve().parents[1] / "search_spaces" / "paper" / "mini" / "maskgit_vs_di.yaml"
    spec = load_study(study)
    trials = expand_grid(spec)
    target = trials[-1]
    record = TrialRecord(target.trial_hash(), "h", "finished", target.model_dump(mode="json"))
    grown, lines = more_seeds(spec, [record], [target.trial_hash()], 12)
    assert len(lines) == 1
    write_study(grown, tmp_path)
    refined = {t.trial_hash(): t for t in expand_grid(load_study(tmp_path / "study.yaml"))}
    changed = [t for t in refined.values() if len(t.eval.sample_seeds) == 12]
    assert len(changed) == 1 and changed[0].training_hash() == target.training_hash()
    assert {t.trial_hash() for t in trials} - {target.trial_hash()} <= set(refined)


def test_extend_seeds_refuses_what_it_cannot_refine(write_study, tmp_path, capsys) -> None:
    import run_study

    searched = write_study(
        "searched", space={"sampler.temperature": {"uniform": [0.5, 1.5]}}, search={"algorithm": "random"}
    )
    no_reference = write_study("plain_grid", space=SPACE)
    for study, named in ((searched, "random search"), (no_reference, "paper_reference")):
        args = ["extend", str(study), "--runs-root", str(tmp_path), "--seeds", "8"]
        assert run_study.main(args) == 2
        assert named in capsys.readouterr().err
    args = ["extend", str(no_reference), "--runs-root", str(tmp_path), "--seeds", "1"]
    assert run_study.main(args) == 2 and "--seeds 1" in capsys.readouterr().err
