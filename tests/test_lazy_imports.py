"""`run_study.py validate` and `run --dry-run` check a study without importing what only running it
needs: torch-fidelity, MLflow, Ray and scipy are imported by the functions that use them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "search_spaces" / "quickstart.yaml"
HEAVY = ("torch_fidelity", "mlflow", "ray", "scipy")

# run_study.main in this process for each command (a JSON list of argument lists), then the exit
# codes and the heavy modules imported, as the last line.
WRAPPER = f"""
import json, sys
sys.path.insert(0, {str(REPO)!r})
import run_study
codes = [run_study.main(args) for args in json.loads(sys.argv[1])]
print(json.dumps([codes, sorted(m for m in sys.modules if m.split(".")[0] in {set(HEAVY)!r})]))
"""


def test_checking_a_study_imports_no_heavy_package(tmp_path: Path) -> None:
    """validate, then run --dry-run, in one process (one torch import: the test stays short)."""
    runs_root = ["--runs-root", str(tmp_path / "runs")]
    commands = [["validate", str(STUDY), *runs_root], ["run", str(STUDY), "--dry-run", *runs_root]]
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, json.dumps(commands)],
        cwd=tmp_path,
        env={**os.environ, "UNMASK_CACHE": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    codes, imported = json.loads(done.stdout.splitlines()[-1])
    assert codes == [0, 0], done.stderr
    assert not imported, f"imported {sorted({m.split('.')[0] for m in imported})}"


def test_the_trial_module_imports_no_tracking_or_ray() -> None:
    """Every Ray worker imports harness.run.trial: it pays for no MLflow, Ray, pandas or scorer."""
    code = (
        "import json, sys, harness.run.trial\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    imported = set(json.loads(done.stdout.splitlines()[-1]))
    assert imported & {*HEAVY, "pandas"} == set()
