"""The Markdown study report: best-first order, varying keys only, CIs, protocol-split columns."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from harness.run.ledger import Ledger, TrialRecord
from reports.markdown import write_markdown_report

BASE = {
    "seed": 0,
    "data": {"name": "digits"},
    "model": {"timestep": "explicit", "width": 32},
    "train": {"steps": 100, "corruption": "uniform"},
    "sampler": {"name": "euler", "num_steps": 8},
    "eval": {"num_samples": 64},
}
PROTOCOL_A = {"key": "fid/inception/digits-train/N64/aaaa", "extractor": "inception", "num_samples": 64}
PROTOCOL_B = {"key": "fid/domain_cnn/digits-train/N64/bbbb", "extractor": "domain_cnn", "num_samples": 64}


def _config(**changes: dict) -> dict:
    config = copy.deepcopy(BASE)
    for section, values in changes.items():
        config[section].update(values)
    return config


def _finished(trial_hash: str, fid: float, protocol: dict = PROTOCOL_A, **changes) -> TrialRecord:
    return TrialRecord(
        trial_hash=trial_hash,
        training_hash=f"t-{trial_hash}",
        status="finished",
        config=_config(**changes),
        metrics={"fid": fid, "precision": 0.5, "nfe": 8.0, "seconds_per_sample": 0.0125},
        protocols={"fid": protocol},
        intervals={"fid": [fid - 0.5, fid + 0.5]},
    )


def _study(tmp_path: Path, records: list[TrialRecord]) -> Path:
    study_dir = tmp_path / "sweep"
    ledger = Ledger(study_dir)
    for record in records:
        ledger.write(record)
    return study_dir


def _trial_order(report: str) -> list[str]:
    return re.findall(r"^\| \d+ \| `(\w+)`", report, flags=re.MULTILINE)


def _header_row(report: str) -> list[str]:
    line = next(line for line in report.splitlines() if line.startswith("| # |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


@pytest.fixture
def sweep(tmp_path) -> Path:
    records = [
        _finished("mid", 20.0, sampler={"name": "euler"}),
        _finished("best", 10.0, sampler={"name": "maskgit"}),
        _finished("worst", 30.0, sampler={"name": "maskgit"}),
        TrialRecord(
            trial_hash="broken",
            training_hash="t-broken",
            status="failed",
            config=_config(sampler={"name": "euler", "num_steps": 2}),
            error="ValueError: num_steps too small\n  File trial.py, line 3",
        ),
    ]
    return _study(tmp_path, records)


@pytest.mark.parametrize(
    ("mode", "order"), [("min", ["best", "mid", "worst"]), ("max", ["worst", "mid", "best"])]
)
def test_trials_are_sorted_best_first(sweep, mode, order):
    report = write_markdown_report(sweep, "Sampler sweep", "fid", mode).read_text()
    assert _trial_order(report) == order
    assert "3 finished, 1 failed" in report and "`fid`" in report


def test_only_varying_keys_become_columns_and_ci_is_shown(sweep):
    report = (write_markdown_report(sweep, "Sampler sweep", "fid", "min")).read_text()
    headers = _header_row(report)
    assert headers == [
        "#",
        "trial",
        "sampler.name",
        "sampler.num_steps",
        "fid",
        "precision",
        "NFE",
        "s/sample",
    ]
    best_row = next(line for line in report.splitlines() if "`best`" in line and line.startswith("| 1 |"))
    assert "| maskgit | 8 | 10 ± 0.5 | 0.5 | 8 | 0.0125 |" in best_row


def test_best_per_group_protocol_failed_and_sample_link(sweep):
    grid = sweep / "samples" / "grid.png"
    grid.parent.mkdir(parents=True)
    grid.write_bytes(b"png")
    ledger = Ledger(sweep)
    best = ledger.get("best")
    ledger.root.joinpath("best.json").unlink()
    ledger.write(TrialRecord(**{**best.__dict__, "artifacts": {"samples_png": str(grid)}}))
    report = write_markdown_report(sweep, "Sampler sweep", "fid", "min").read_text()
    assert "### Best per `sampler.name`" in report
    assert "| maskgit | `best` | 10 ± 0.5 |" in report and "| euler | `mid` | 20 ± 0.5 |" in report
    assert "| metric | trial | key | extractor | num_samples |" in report
    assert f"| fid | `best` | {PROTOCOL_A['key']} | inception | 64 |" in report
    assert (
        "- `broken` (sampler.name=euler, sampler.num_steps=2), attempts 1: ValueError: num_steps too small"
        in report
    )
    assert "File trial.py" not in report
    assert "![samples of best](samples/grid.png)" in report


def test_two_protocol_keys_get_separate_columns(tmp_path):
    study_dir = _study(
        tmp_path,
        [
            _finished("a1", 12.0, PROTOCOL_A, model={"timestep": "explicit"}),
            _finished("a2", 11.0, PROTOCOL_A, model={"timestep": "implicit"}),
            _finished("b1", 3.0, PROTOCOL_B, model={"timestep": "explicit"}),
        ],
    )
    report = write_markdown_report(study_dir, "Protocols", "fid", "min").read_text()
    headers = _header_row(report)
    assert f"fid [{PROTOCOL_A['key']}]" in headers and f"fid [{PROTOCOL_B['key']}]" in headers
    assert "fid" not in headers
    # Never one column for both: each row has a value in exactly one of the two fid columns.
    assert _trial_order(report) == ["a2", "a1", "b1"]
    row_b1 = next(line for line in report.splitlines() if "`b1`" in line and line.startswith("| 3 |"))
    assert "| — | 3 ± 0.5 |" in row_b1
    assert f"| fid | `a2` | {PROTOCOL_A['key']} | inception | 64 |" in report
    assert f"| fid | `b1` | {PROTOCOL_B['key']} | domain_cnn | 64 |" in report
    assert "| explicit | " + PROTOCOL_B["key"] + " | `b1` | 3 ± 0.5 |" in report


def test_no_finished_trials_and_bad_mode(tmp_path):
    study_dir = _study(tmp_path, [])
    study_dir.mkdir(parents=True, exist_ok=True)
    report = write_markdown_report(study_dir, "Empty", "fid", "max").read_text()
    assert "0 finished, 0 failed" in report and "No finished trials." in report
    with pytest.raises(ValueError, match="mode"):
        write_markdown_report(study_dir, "Empty", "fid", "lowest")
    assert [p.name for p in study_dir.iterdir()] == ["report.md"]
