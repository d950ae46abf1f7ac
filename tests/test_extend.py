"""``run_study.py extend``: a grid grows past an edge optimum, within its stated bound, and only the
new cells run."""

from __future__ import annotations

import pytest
import yaml

from harness.config.search import ExtendRule
from harness.config.study import load_study
from harness.run.extend import edge_extensions, extended
from harness.run.ledger import TrialRecord


def _record(i: int, fid: float, **config) -> TrialRecord:
    nested: dict = {}
    for dotted, value in config.items():
        *parents, leaf = dotted.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return TrialRecord(f"t{i}", f"h{i}", "finished", nested, metrics={"fid": fid})


def _spec(write_study, **fields):
    return load_study(write_study("grow", **fields))


def test_each_methods_best_at_an_edge_grows_that_edge(write_study) -> None:
    spec = _spec(
        write_study,
        space={"sampler.name": ["euler", "maskgit"], "sampler.temperature": [0.8, 1.0]},
        extend={"sampler.temperature": {"step": 0.2, "min": 0.6, "max": 1.4}},
    )
    records = [
        _record(0, 50.0, **{"sampler.name": "euler", "sampler.temperature": 0.8}),
        _record(1, 40.0, **{"sampler.name": "euler", "sampler.temperature": 1.0}),  # best at the top
        _record(2, 30.0, **{"sampler.name": "maskgit", "sampler.temperature": 0.8}),  # best at the bottom
        _record(3, 35.0, **{"sampler.name": "maskgit", "sampler.temperature": 1.0}),
    ]
    grow, stopped = edge_extensions(spec, records)
    assert [(e.axis, e.added) for e in grow] == [("sampler.temperature", [0.6, 1.2])]
    assert not stopped and "euler" in grow[0].why[1] and "maskgit" in grow[0].why[0]
    grown = extended(spec, grow)
    assert grown.space["sampler.temperature"] == [0.6, 0.8, 1.0, 1.2]
    # the next round: Euler's best is 1.2 (the top again: 1.4 is within the bound); MaskGIT's is
    # 0.6, the bottom, which the bound (min 0.6) stops
    records += [
        _record(4, 39.0, **{"sampler.name": "euler", "sampler.temperature": 1.2}),
        _record(5, 29.0, **{"sampler.name": "maskgit", "sampler.temperature": 0.6}),
    ]
    grow, stopped = edge_extensions(grown, records)
    assert [(e.axis, e.added) for e in grow] == [("sampler.temperature", [1.4])]
    assert len(stopped) == 1 and "maskgit" in stopped[0] and "bound" in stopped[0]


def test_an_interior_best_grows_nothing_and_integer_axes_stay_integer(write_study) -> None:
    spec = _spec(
        write_study,
        space={"sampler.num_steps": [2, 4, 8]},
        extend={"sampler.num_steps": {"factor": 2, "max": 32}},
    )
    inside = [
        _record(i, fid, **{"sampler.num_steps": n}) for i, (n, fid) in enumerate([(2, 9), (4, 5), (8, 7)])
    ]
    assert edge_extensions(spec, inside) == ([], [])
    top = [_record(i, fid, **{"sampler.num_steps": n}) for i, (n, fid) in enumerate([(2, 9), (4, 7), (8, 5)])]
    grow, _ = edge_extensions(spec, top)
    assert grow[0].added == [16] and isinstance(grow[0].added[0], int)
    assert ExtendRule(factor=2, max=32).beyond(32, up=True) is None
    slow = _spec(
        write_study,
        space={"sampler.num_steps": [2, 4]},
        extend={"sampler.num_steps": {"factor": 1.1, "max": 5}},
    )
    top = [_record(i, fid, **{"sampler.num_steps": n}) for i, (n, fid) in enumerate([(2, 9), (4, 5)])]
    assert edge_extensions(slow, top)[0][0].added == [5]  # 4 x 1.1 rounds to 4: one step instead
    at_bound = [_record(i, fid, **{"sampler.num_steps": n}) for i, (n, fid) in enumerate([(2, 9), (5, 5)])]
    slow = slow.model_copy(update={"space": {"sampler.num_steps": [2, 5]}})
    grow, stopped = edge_extensions(slow, at_bound)
    assert grow == [] and "the stated bound" in stopped[0]  # 5 + 1 is past it
    assert ExtendRule(step=0.5, min=0.1).beyond(1.0, up=True) is None  # no upper bound: not upward


def test_bad_extend_sections_are_refused_naming_the_field(write_study, tmp_path) -> None:
    import run_study

    cases = {
        "extend.sampler.cfg_scale": {
            "space": {"sampler.num_steps": [2, 4]},
            "extend": {"sampler.cfg_scale": {"step": 1, "max": 4}},
        },
        "exactly one": {
            "space": {"sampler.num_steps": [2, 4]},
            "extend": {"sampler.num_steps": {"step": 1, "factor": 2, "max": 9}},
        },
        "min or max": {"space": {"sampler.num_steps": [2, 4]}, "extend": {"sampler.num_steps": {"step": 1}}},
        "list of numbers": {
            "space": {"sampler.name": ["euler", "maskgit"]},
            "extend": {"sampler.name": {"step": 1, "max": 3}},
        },
    }
    for expected, fields in cases.items():
        study = write_study("bad_extend", **fields)
        assert run_study.main(["validate", str(study), "--runs-root", str(tmp_path)]) == 2, expected


@pytest.mark.slow  # three rounds of a study through Ray Tune
def test_extend_runs_only_the_new_cells_until_the_bound(write_study, runs_root, ray_session, capsys) -> None:
    """NFE as the metric, higher is better: the best always sits at the top edge, so the grid
    [1, 2] grows to 4 (factor 2, max 4), and stops there: the bound."""
    import run_study

    study = write_study(
        "grow_nfe",
        metric="nfe",
        mode="max",
        space={"sampler.num_steps": [1, 2]},
        extend={"sampler.num_steps": {"factor": 2, "max": 4}},
    )
    args = ["extend", str(study), "--runs-root", str(runs_root)]
    assert run_study.main(args) == 0
    out = capsys.readouterr().out
    assert "sampler.num_steps += [4]" in out and "the stated bound" in out
    folder = runs_root / "grow_nfe"
    assert yaml.safe_load((folder / "study.yaml").read_text())["space"]["sampler.num_steps"] == [1, 2, 4]
    ledger = sorted(folder.glob("ledger/*.json"))
    assert len(ledger) == 3
    before = {p.name: p.stat().st_mtime_ns for p in ledger}
    assert run_study.main(args) == 0  # nothing left to grow or run
    assert {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("ledger/*.json"))} == before


def test_the_folder_copy_is_the_study_as_last_run_with_its_base_and_reference(write_study, tmp_path) -> None:
    """A study folder written by an older version of the study (another base, no reference) is
    rewritten whole: the copy resolves to the same trials and the same findings as the file."""
    from harness.config.study import expand_grid
    from harness.run.extend import STUDY_FILE
    from harness.run.extend import write_study as write_folder

    folder = tmp_path / "copy"
    folder.mkdir()
    old = _spec(write_study, space={"sampler.num_steps": [2, 4]}, overrides={"train.steps": 30})
    write_folder(old, folder)
    assert not (folder / "reference.yaml").exists()
    studies = write_study("holder").parent
    finding = {"kind": "improves_along", "axis": "sampler.num_steps"}
    (studies / "ref.yaml").write_text(yaml.safe_dump({"e": {"findings": [finding]}}))
    from conftest import BASE_YAML

    (studies / "other_base.yaml").write_text(yaml.safe_dump({"base": str(BASE_YAML), "train": {"lr": 5e-4}}))
    new = _spec(
        write_study,
        base="other_base.yaml",
        space={"sampler.num_steps": [2, 4]},
        overrides={"train.steps": 40},
        paper_reference="ref.yaml#e",
    )
    write_folder(new, folder)
    assert new.base_config["train"]["lr"] == 5e-4 != old.base_config["train"]["lr"]
    copy = load_study(folder / STUDY_FILE)
    assert [t.trial_hash() for t in expand_grid(copy)] == [t.trial_hash() for t in expand_grid(new)]
    assert copy.reference_data == new.reference_data == {"findings": [finding]}
