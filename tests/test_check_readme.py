"""The README's quoted numbers: selection, comparison and rewriting on hand-written ledgers (no study
runs), and the repository's own README and spec agreeing with each other."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import scipy.stats
import yaml

from harness.errors import UserError
from harness.run.ledger import Ledger, TrialRecord
from reports.readme_blocks import find_blocks, marker, quoted, render, rewrite_quoted, stale_blocks
from reports.readme_check import check_block
from reports.readme_numbers import load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_readme", REPO / "benchmarks" / "check_readme.py")
check_readme = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_readme)

SPEC = """\
# the comment stays
readme: README.md
tolerance: 0.03
blocks:
  toy-fid:
    study: toy.yaml
    minutes: 1
    template: |
      | FID | NFE 1 | 4 |
      |---|---|---|
      | Euler | {euler-1} ± {euler-1.ci} | {euler-4} |
    figures:
      euler-1: {select: {sampler.name: euler, sampler.num_steps: 1}, metric: fid, quoted: 100, ci: 5}
      euler-4: {select: {sampler.name: euler, sampler.num_steps: 4}, metric: fid, quoted: 50}
"""
EULER_4 = "euler-4: {select: {sampler.name: euler, sampler.num_steps: 4}, metric: fid, quoted: 50}"


def _euler_4(figure: str) -> str:
    """The spec with figure euler-4 defined as ``figure`` (a flow mapping)."""
    return SPEC.replace(EULER_4, f"euler-4: {figure}")


def _config(name: str, steps: int, temperature: float = 1.0, seeds: int = 3) -> dict:
    return {
        "seed": 0,
        "data": {"name": "digits", "options": {}},
        "sampler": {"name": name, "num_steps": steps, "temperature": temperature, "condition_on": None},
        "eval": {"sample_seeds": list(range(seeds))},
    }


def _record(trial_hash: str, config: dict, fid: float, half: float | None = None, status: str = "finished"):
    finished = status == "finished"
    return TrialRecord(
        trial_hash=trial_hash,
        training_hash="t0",
        status=status,
        config=config,
        metrics={"fid": fid} if finished else {},
        intervals={"fid": [fid - half, fid + half]} if finished and half is not None else {},
        protocols={"fid": {"key": "fid/x", "direction": "min"}} if finished else {},
        error=None if finished else "boom",
    )


def _tree(tmp_path: Path, fids: tuple[float, float] = (103.0, 51.0), spec: str = SPEC) -> Path:
    """A repository root with a study file, its ledger in runs/, a README and the spec."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "toy.yaml").write_text("name: toy\n")
    ledger = Ledger(tmp_path / "runs" / "toy")
    ledger.write(_record("a1", _config("euler", 1), fids[0], half=4.0))
    ledger.write(_record("a4", _config("euler", 4), fids[1]))
    parsed = parse_spec(spec, "spec")
    block = render(parsed.blocks["toy-fid"], quoted(parsed.blocks["toy-fid"]))
    begin, end = marker("toy-fid", "begin"), marker("toy-fid", "end")
    readme = f"# toy\n\nBefore: 100 ± 5 stays.\n\n{begin}\n{block}{end}\n\nAfter: 50 stays.\n"
    (tmp_path / "README.md").write_text(readme)
    (tmp_path / "spec.yaml").write_text(spec)
    return tmp_path


def _main(root: Path, *extra: str, run=None) -> int:
    argv = ["--spec", str(root / "spec.yaml"), "--root", str(root), "--runs-root", str(root / "runs")]
    if run is None:
        argv.append("--no-run")
    return check_readme.main([*argv, *extra], run=run, planned=lambda study: None)


def _checks(root: Path, spec_text: str = SPEC):
    return {c.name: c for c in check_block(parse_spec(spec_text, "spec"), "toy-fid", root / "runs" / "toy")}


def test_numbers_within_tolerance_pass_and_outside_fail(tmp_path) -> None:
    # euler-1: quoted 100 +- 5, printed whole: |ours - 100| <= 5.5. euler-4: 3 % of 50 + 0.5 = 2.0.
    checks = _checks(_tree(tmp_path, fids=(105.4, 51.9)))
    assert {n: c.status for n, c in checks.items()} == {"euler-1": "ok", "euler-4": "ok"}
    assert checks["euler-1"].measured.ci == pytest.approx(4.0)
    assert checks["euler-4"].allowed == pytest.approx(2.0)
    checks = _checks(_tree(tmp_path / "far", fids=(105.6, 52.1)))
    assert {n: c.status for n, c in checks.items()} == {"euler-1": "MISMATCH", "euler-4": "MISMATCH"}


def test_a_mismatch_fails_the_check_and_names_the_figure(tmp_path, capsys) -> None:
    root = _tree(tmp_path, fids=(103.0, 60.0))
    assert _main(root) == 1
    out = capsys.readouterr().out
    assert "| toy-fid/euler-4 | 50 | 60 | ± 2 | a4 | MISMATCH |" in out
    assert "| toy-fid/euler-1 | 100 ± 5 | 103 ± 4 | ± 5.5 | a1 | ok |" in out


def test_a_readme_block_the_spec_does_not_know_fails_the_check(tmp_path, capsys) -> None:
    root = _tree(tmp_path)
    readme = root / "README.md"
    readme.write_text(readme.read_text() + f"{marker('other', 'begin')}\n7\n{marker('other', 'end')}\n")
    assert _main(root) == 1
    assert "README block 'other' is in no spec block" in capsys.readouterr().err


def test_the_check_passes_when_every_figure_agrees(tmp_path, capsys) -> None:
    root = _tree(tmp_path)
    runs = []
    assert _main(root, run=lambda study, runs_root: runs.append(study) or 0) == 0
    assert runs == [root / "toy.yaml"]  # each study runs once, into the runs root given
    assert "2 figure(s) agree" in capsys.readouterr().out


def test_write_rewrites_exactly_the_block_and_the_quoted_values(tmp_path) -> None:
    root = _tree(tmp_path, fids=(120.0, 61.24))
    before = (root / "README.md").read_text()
    assert _main(root, "--write") == 0
    after = (root / "README.md").read_text()
    start, end = find_blocks(before)["toy-fid"]
    new_start, new_end = find_blocks(after)["toy-fid"]
    assert after[:new_start] == before[:start] and after[new_end:] == before[end:]  # nothing else moves
    assert after[new_start:new_end].splitlines()[2] == "| Euler | 120 ± 4 | 61 |"
    spec_text = (root / "spec.yaml").read_text()
    assert spec_text.startswith("# the comment stays\n")
    assert "quoted: 120, ci: 4}" in spec_text and "metric: fid, quoted: 61}" in spec_text
    assert stale_blocks(after, load_spec(root / "spec.yaml")) == {}


def test_render_restores_a_block_edited_by_hand(tmp_path) -> None:
    root = _tree(tmp_path)
    readme = root / "README.md"
    original = readme.read_text()
    readme.write_text(original.replace("| Euler | 100 ± 5 | 50 |", "| Euler | 99 ± 5 | 50 |"))
    assert "toy-fid" in stale_blocks(readme.read_text(), load_spec(root / "spec.yaml"))
    assert _main(root) == 1  # refused before any study runs
    assert _main(root, "--render") == 0
    assert readme.read_text() == original


def test_an_unknown_study_is_an_error_naming_it(tmp_path, capsys) -> None:
    root = _tree(tmp_path, spec=SPEC.replace("study: toy.yaml", "study: nope.yaml"))
    assert _main(root, run=lambda study, runs_root: pytest.fail("nothing runs")) == 2
    assert "blocks.toy-fid.study: no study file 'nope.yaml'" in capsys.readouterr().err


def test_a_study_that_does_not_finish_fails_its_figures(tmp_path, capsys) -> None:
    root = _tree(tmp_path)
    assert _main(root, run=lambda study, runs_root: 1) == 1
    assert "run_study.py run toy.yaml exited 1" in capsys.readouterr().out


def test_a_selector_matching_no_trial_or_several_is_an_error_naming_it(tmp_path) -> None:
    root = _tree(tmp_path)
    none = SPEC.replace("sampler.num_steps: 4}", "sampler.num_steps: 8}")
    error = _checks(root, none)["euler-4"].error
    assert (
        error.startswith("toy-fid/euler-4: no finished trial matches select")
        and "'sampler.num_steps': 8" in error
    )
    Ledger(root / "runs" / "toy").write(_record("b4", _config("euler", 4, temperature=0.5), 49.0))
    checks = _checks(root)
    assert checks["euler-4"].status == "error"
    assert "toy-fid/euler-4: 2 trials match" in checks["euler-4"].error
    assert "sampler.temperature" in checks["euler-4"].error  # what tells them apart
    typo = SPEC.replace("sampler.num_steps: 4}", "sampler.num_step: 4}")
    assert "did you mean 'sampler.num_steps'?" in _checks(root, typo)["euler-4"].error


def test_a_failed_trial_is_not_measured(tmp_path) -> None:
    root = tmp_path
    _tree(root)
    Ledger(root / "runs" / "toy").write(_record("a8", _config("euler", 8), 0.0, status="failed"))
    failed = SPEC.replace("sampler.num_steps: 4}", "sampler.num_steps: 8}")
    assert "(1 failed: see their ledger records)" in _checks(root, failed)["euler-4"].error


def test_pick_takes_the_extreme_and_expect_checks_the_trial_the_readme_names(tmp_path) -> None:
    root = _tree(tmp_path)
    best = _euler_4(
        "{select: {sampler.name: euler}, pick: min, expect: {sampler.num_steps: 4}, metric: fid, quoted: 50}"
    )
    assert _checks(root, best)["euler-4"].measured.trial == "a4"
    wrong = best.replace("expect: {sampler.num_steps: 4}", "expect: {sampler.num_steps: 1}")
    assert "the trial picked is a4 with {'sampler.num_steps': 4}" in _checks(root, wrong)["euler-4"].error


def test_sd_percent_recovers_the_spread_across_seeds_from_the_interval(tmp_path) -> None:
    root = _tree(tmp_path)
    half = scipy.stats.t.ppf(0.975, df=2) * 2.0 / math.sqrt(3)  # s = 2 over 3 seeds, mean 103
    Ledger(root / "runs" / "toy").write(_record("c1", _config("maskgit", 1), 103.0, half=half))
    spec = _euler_4(
        "{select: {sampler.name: maskgit}, metric: fid, quantity: sd_percent, quoted: 1.9, format: .1f}"
    )
    assert _checks(root, spec)["euler-4"].measured.value == pytest.approx(200 / 103)


def test_dataset_figures_read_the_study_datasets_file(tmp_path) -> None:
    root = _tree(tmp_path)
    datasets = [{"name": "animals", "num_heldout": 1000, "tokenizer": {"heldout_real_fid": 9.47}}]
    (root / "runs" / "toy" / "datasets.json").write_text(json.dumps(datasets))
    spec = _euler_4('{quantity: "dataset:tokenizer.heldout_real_fid", quoted: 9.5, format: .1f}')
    assert _checks(root, spec)["euler-4"].status == "ok"


BAD_SPECS = [
    ("{euler-4} |", "{euler-4} {euler-9} |", "the template names figures it does not define: ['euler-9']"),
    ("{euler-1.ci}", "5", "figures.euler-1: give ci exactly when the template shows {euler-1.ci}"),
    ("quoted: 50}", "quoted: 50, quantity: valu}", "quantity 'valu'; expected one of"),
    ("quoted: 50}", "quoted: 50, colour: red}", "figures.euler-4.colour: Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("old", "new", "message"), BAD_SPECS)
def test_a_bad_spec_is_refused_naming_the_field(old, new, message) -> None:
    with pytest.raises(UserError, match="^spec: blocks.toy-fid") as err:
        parse_spec(SPEC.replace(old, new), "spec")
    assert message in str(err.value)


def test_block_markers_must_pair() -> None:
    with pytest.raises(UserError, match="block 'a' has no end marker"):
        find_blocks(f"{marker('a', 'begin')}\ntext\n")
    with pytest.raises(UserError, match="end marker of block 'b' without its begin"):
        find_blocks(f"{marker('a', 'begin')}\n{marker('b', 'end')}\n")


def test_rewrite_quoted_keeps_comments_and_layout() -> None:
    text = rewrite_quoted(SPEC, {("toy-fid", "euler-1"): {"quoted": "98", "ci": "6"}})
    assert text == SPEC.replace("quoted: 100, ci: 5}", "quoted: 98, ci: 6}")


def test_the_readme_blocks_are_what_the_spec_renders() -> None:
    spec = load_spec(REPO / "search_spaces" / "readme_numbers.yaml")
    assert stale_blocks((REPO / spec.readme).read_text(), spec) == {}
    for block_id, block in spec.blocks.items():
        assert yaml.safe_load((REPO / block.study).read_text())["name"], block_id


def test_the_spec_selects_by_config_keys_that_exist() -> None:
    from harness.config.trial import check_key  # imports the registries (torch): only here

    spec = load_spec(REPO / "search_spaces" / "readme_numbers.yaml")
    for block in spec.blocks.values():
        for figure in block.figures.values():
            for key in [*figure.select, *figure.expect]:
                check_key(key)


def test_pick_refuses_trials_of_different_protocol_keys() -> None:
    """pick: min over FID-100 and FID-1000 would compare numbers that do not compare."""
    from reports.readme_check import measure
    from reports.readme_numbers import Figure

    records = [
        {
            "trial_hash": c * 16,
            "status": "finished",
            "config": {"s": i},
            "metrics": {"fid": 10.0 * (i + 1)},
            "intervals": {},
            "protocols": {"fid": {"key": key}},
        }
        for i, (c, key) in enumerate([("a", "fid/N100"), ("b", "fid/N1000")])
    ]
    with pytest.raises(UserError, match="differ in the fid protocol key \\(fid/N100, fid/N1000\\)"):
        measure(Figure(metric="fid", pick="min", quoted=20.0), records, None, "x")
    records[1]["protocols"]["fid"]["key"] = "fid/N100"
    assert measure(Figure(metric="fid", pick="min", quoted=20.0), records, None, "x").value == 10.0
