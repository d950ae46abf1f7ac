"""A folder's findings in one table, and the ITM - ETM gap along training (reports/paper_findings.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from harness.errors import UserError
from reports.paper_findings import check_study, gap_lines, gaps, rewrite_block, trend, write_findings

SEEDS = [0, 1, 2]


def _row(timestep: str, steps: int, per_seed: list[float], **more) -> dict:
    mean = sum(per_seed) / len(per_seed)
    protocol = {"fid": {"direction": "min", "sample_seeds": SEEDS, "per_seed": per_seed}}
    return {
        "status": "finished",
        "nfe": 16.0,
        "model.timestep": timestep,
        "train.steps": steps,
        "model.size": "tiny",
        "fid": mean,
        "fid_ci_low": mean - 5,
        "fid_ci_high": mean + 5,
        "protocol": protocol,
        **more,
    }


def curve_table() -> pd.DataFrame:
    """ITM 10 worse than ETM at 1,000 steps, equal at 4,000 (seed noise shared by both)."""
    rows = []
    for cfg in (1.0, 2.0):
        rows += [
            _row("explicit", 1000, [90, 100, 110], **{"sampler.cfg_scale": cfg}),
            _row("implicit", 1000, [100, 110, 120], **{"sampler.cfg_scale": cfg}),
            _row("explicit", 4000, [60, 70, 80], **{"sampler.cfg_scale": cfg}),
            _row("implicit", 4000, [61, 69, 80], **{"sampler.cfg_scale": cfg}),
        ]
    return pd.DataFrame(rows)


def test_the_gap_is_paired_over_seeds_per_steps_and_group() -> None:
    found = gaps(curve_table(), "fid")
    assert [(dict(g.group)["sampler.cfg_scale"], g.steps) for g in found] == [
        (1.0, 1000),
        (1.0, 4000),
        (2.0, 1000),
        (2.0, 4000),
    ]
    first, second = found[0].diff, found[1].diff
    assert first.paired and first.value == pytest.approx(10.0) and first.half == pytest.approx(0.0)
    assert first.decided() == 1  # ETM better beyond the paired interval (unpaired CIs would overlap)
    assert second.value == pytest.approx(0.0) and second.decided() == 0
    assert "+10 ± 0 (ETM better) at 1,000 steps" in trend(found)[0]


def test_no_gap_without_both_values_or_two_steps() -> None:
    table = curve_table()
    assert gaps(table[table["model.timestep"] == "explicit"], "fid") == []
    assert gaps(table[table["train.steps"] == 1000], "fid") == []


def test_findings_table_counts_verdicts_and_says_why_with_the_gap(tmp_path: Path) -> None:
    table = curve_table()
    reference = {
        "findings": [
            {
                "kind": "at_least_as_good",
                "key": "model.timestep",
                "a": "implicit",
                "b": "explicit",
                "text": "ITM >= ETM",
            },
            {"kind": "improves_along", "axis": "train.steps", "text": "more training helps"},
        ]
    }
    studied = check_study("curve", "ref#x", table[table["train.steps"] == 1000], "fid", reference)
    assert [c.verdict for c in studied.checks] == ["does not hold", "undetermined"]
    path, body = write_findings(tmp_path / "out", "T", [studied], [table], "fid")
    text = path.read_text()
    assert "2 findings of the paper checked on our runs (0 holds, 1 does not hold, 1 undetermined)" in body
    assert "What training does to the ITM - ETM gap" in body and "cfg_scale 2" in body
    assert "| size tiny, cfg_scale 1 | +10 ± 0 (ETM better) | +0 ± " in body
    assert (tmp_path / "out" / "gap.png").stat().st_size > 0 and "gap.png" in text and "gap.png" not in body


def test_rewrite_block_replaces_only_between_its_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- findings: x begin -->\nold\n<!-- findings: x end -->\nb\n")
    rewrite_block(readme, "x", "new\ntable\n")
    assert readme.read_text() == "a\n<!-- findings: x begin -->\nnew\ntable\n<!-- findings: x end -->\nb\n"
    with pytest.raises(UserError, match="expected one block"):
        rewrite_block(readme, "y", "z")


def test_report_of_a_folder_without_studies_exits_2(tmp_path: Path, capsys) -> None:
    import run_study

    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "base.yaml").write_text("model: {size: tiny}\n")  # a base, not a study
    assert run_study.main(["report", str(tmp_path / "studies"), "--runs-root", str(tmp_path / "runs")]) == 2
    assert "no study files" in capsys.readouterr().err
    (tmp_path / "studies" / "list.yaml").write_text("- 1\n- 2\n")  # no mapping: no study, skipped
    assert run_study.main(["report", str(tmp_path / "studies"), "--runs-root", str(tmp_path / "runs")]) == 2
    assert "no study files" in capsys.readouterr().err
    (tmp_path / "studies" / "broken.yaml").write_text("name: [unclosed\n")  # was a traceback (exit 1)
    assert run_study.main(["report", str(tmp_path / "studies"), "--runs-root", str(tmp_path / "runs")]) == 2
    assert "broken.yaml: not valid YAML" in capsys.readouterr().err


def test_report_of_the_mini_folder_names_the_studies_not_run(tmp_path: Path, capsys) -> None:
    """Every mini study parses; with an empty store none is checked and each is named as not run."""
    import run_study

    folder = Path(__file__).resolve().parents[1] / "search_spaces" / "paper" / "mini"
    assert run_study.main(["report", str(folder), "--runs-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "not run yet (left out): " in out and "fig3_euler_nfe_mini" in out
    text = (tmp_path / "paper-mini-findings" / "findings.md").read_text()
    assert "0 findings of the paper checked" in text


def test_a_readme_without_the_block_is_refused_before_anything_is_written(tmp_path: Path, capsys) -> None:
    import run_study

    folder = Path(__file__).resolve().parents[1] / "search_spaces" / "paper" / "mini"
    readme = tmp_path / "README.md"
    readme.write_text("# no findings block here\n")
    runs = tmp_path / "runs"
    assert run_study.main(["report", str(folder), "--runs-root", str(runs), "--readme", str(readme)]) == 2
    assert "paper-mini" in capsys.readouterr().err
    assert not runs.exists() and readme.read_text() == "# no findings block here\n"


def test_a_gap_curve_needs_no_group_column() -> None:
    """A curve study that logs neither model size nor CFG still gets its gap along training."""
    table = curve_table().drop(columns=["model.size", "sampler.cfg_scale"])
    table = table.drop_duplicates(subset=["model.timestep", "train.steps"])
    found = gaps(table, "fid")
    assert [(g.group, g.steps) for g in found] == [((), 1000), ((), 4000)]
    assert found[0].diff.value == pytest.approx(10.0)


def _precision(timestep: str, steps: int, value: float, key: str = "precision/N1000") -> dict:
    protocol = {"precision": {"direction": "max", "key": key, "num_samples": 1000}}
    row = {"status": "finished", "nfe": 16.0, "model.timestep": timestep, "train.steps": steps}
    return {
        **row,
        "precision": value,
        "precision_ci_low": value - 0.001,
        "precision_ci_high": value + 0.001,
        "protocol": protocol,
    }


def test_the_gap_names_the_winner_by_the_metrics_direction_in_three_digits() -> None:
    """Precision: ITM 0.5 vs ETM 0.7 is ETM better; a gap of -0.02 is not printed as -0.0 ± 0.0."""
    rows = [_precision("implicit", 100, 0.50), _precision("explicit", 100, 0.70)]
    rows += [_precision("implicit", 1000, 0.60), _precision("explicit", 1000, 0.62)]
    text = "\n".join(gap_lines(gaps(pd.DataFrame(rows), "precision"), "precision"))
    assert "| all | -0.2 ± 0.00141 (ETM better) | -0.02 ± 0.00141 (ETM better) |" in text


def test_the_gap_compares_rows_of_the_main_protocol_key_only() -> None:
    rows = [_precision("implicit", 100, 0.50), _precision("explicit", 100, 0.70)]
    rows += [_precision("implicit", 1000, 0.60), _precision("explicit", 1000, 0.62)]
    rows.append(_precision("implicit", 1000, 0.99, key="precision/N100"))  # another protocol
    found = gaps(pd.DataFrame(rows), "precision")
    assert [(g.steps, g.a, g.b) for g in found] == [(100, 0.5, 0.7), (1000, 0.6, 0.62)]


def test_a_study_whose_every_trial_failed_has_no_gap_and_undetermined_findings() -> None:
    table = pd.DataFrame(
        [
            {"status": "failed", "model.timestep": "implicit", "train.steps": s, "protocol": {}}
            for s in (100, 1000)
        ]
    )
    assert gaps(table, "fid") == []
    reference = {"findings": [{"kind": "improves_along", "axis": "train.steps"}]}
    studied = check_study("s", "r", table, "fid", reference)
    assert [c.verdict for c in studied.checks] == [
        "undetermined"
    ] and "no trial measured fid" in studied.checks[0].detail
