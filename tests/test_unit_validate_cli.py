"""`run_study.py validate` refuses a study its task family would fail on, naming the field, with exit
code 2 and before anything is written: no runs root, no cache folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BASE_YAML = REPO / "search_spaces" / "base.yaml"
PYTHON = REPO / ".venv" / "bin" / "python"
SMALL_CANVASES = {"num_train": 12, "num_heldout": 6}


def validate(tmp_path: Path, overrides: dict[str, Any], **fields: Any) -> subprocess.CompletedProcess:
    study = tmp_path / "studies" / "study.yaml"
    study.parent.mkdir(parents=True, exist_ok=True)
    spec = {"name": "unit_validate", "base": str(BASE_YAML), "overrides": overrides, **fields}
    study.write_text(yaml.safe_dump(spec, sort_keys=False))
    python = PYTHON if PYTHON.is_file() else Path(sys.executable)
    env = {**os.environ, "UNMASK_CACHE": str(tmp_path / "cache")}
    return subprocess.run(
        [str(python), "run_study.py", "validate", str(study), "--runs-root", str(tmp_path / "runs")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "cache").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["studies"]


@pytest.mark.parametrize(
    ("overrides", "metric", "words"),
    [
        (
            {"data.name": "digit-canvases", "data.options": SMALL_CANVASES, "eval.metrics": ["miou"]},
            "miou",
            ["eval.metrics", "miou", "sampler.condition_on: image"],
        ),
        ({"eval.metrics": ["fid", "fvd"]}, "fid", ["eval.metrics", "fvd", "video"]),
        ({"model.text": {"encoder": "learned"}}, "fid", ["model.text", "'digits'", "no captions"]),
        pytest.param(
            {
                "data.name": "shards",
                "data.options": {"path": "/nonexistent", "grid": [8, 8], "vocab_size": 16},
            },
            "fid",
            ["eval.extractor"],
            id="no-extractor",
        ),
    ],
    ids=["miou-without-condition-on-image", "fvd-on-images", "text-on-digits", "no-extractor"],
)
def test_validate_exits_2_naming_the_field_and_writes_nothing(
    tmp_path: Path, overrides: dict, metric: str, words: list[str]
) -> None:
    result = validate(tmp_path, overrides, metric=metric)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr
    assert all(w in result.stderr for w in words), result.stderr
    assert_nothing_written(tmp_path)


def test_validate_of_a_valid_study_exits_0_and_writes_nothing(tmp_path: Path) -> None:
    """The control: the same study files, fixed, pass, so the refusals above are the checks'."""
    overrides = {"data.name": "digit-canvases", "data.options": SMALL_CANVASES, "eval.metrics": ["miou"]}
    result = validate(
        tmp_path,
        {**overrides, "sampler.condition_on": "image"},
        metric="miou",
        space={"sampler.num_steps": [2, 3]},
    )
    assert result.returncode == 0, result.stderr
    assert "valid: study 'unit_validate', 1 training(s), 2 trial(s)" in result.stdout
    assert_nothing_written(tmp_path)
