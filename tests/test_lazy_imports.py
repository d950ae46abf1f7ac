"""`run_study.py validate` and `run --dry-run` check a study without importing what only running it
needs: torch-fidelity, MLflow, Ray and scipy are imported by the functions that use them, and the
plan's parameter counts import no torch._dynamo (~1.5 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "search_spaces" / "quickstart.yaml"
HEAVY = ("torch_fidelity", "mlflow", "ray", "scipy", "torch._dynamo")

# run_study.main in this process for each command (a JSON list of argument lists), then the exit
# codes and the heavy modules imported, as the last line.
WRAPPER = f"""
import json, sys
sys.path.insert(0, {str(REPO)!r})
import run_study
codes = [run_study.main(args) for args in json.loads(sys.argv[1])]
heavy = [m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in {HEAVY!r})]
print(json.dumps([codes, sorted(heavy)]))
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
    assert not imported, f"imported {sorted({m for m in imported if m.count('.') <= 1})}"


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


def test_parameter_counts_match_a_network_built_on_the_meta_device() -> None:
    """Every network of every study in search_spaces/ (DiT-XL, text, video, segmentation): the
    plan's count (parameters on meta, initialisers skipped, buffers on the CPU) is the count of
    the network built wholly on the meta device."""
    import torch

    from harness.config.study import expand_grid, load_study, sample_random
    from harness.run.plan import _parameter_count
    from harness.run.store import model_config_for
    from models.backbone import DiscreteDiT

    configs = set()
    for study in sorted((REPO / "search_spaces").rglob("*.yaml")):
        try:
            spec = load_study(study)
        except Exception:  # a base, reference or spec file, not a study
            continue
        trials = expand_grid(spec) if spec.search.algorithm == "grid" else sample_random(spec)
        configs |= {model_config_for(t) for t in trials if not t.sampler.is_baseline}
    assert len(configs) >= 5
    for config in configs:
        with torch.device("meta"):
            expected = sum(p.numel() for p in DiscreteDiT(config).parameters())
        assert _parameter_count(config) == expected, config


def test_digits_are_scikit_learns_without_importing_it() -> None:
    """The digits every quick study trains on are read from the file scikit-learn ships, equal to
    ``load_digits`` pixel for pixel and label for label, and loading them imports no scikit-learn
    (~0.7 s in the driver and again in every trial worker)."""
    code = (
        "import json, sys\n"
        "from harness.data.sources.digits import _uci_digits\n"
        "pixels, labels = _uci_digits()\n"
        "heavy = 'sklearn' in sys.modules\n"
        "from sklearn.datasets import load_digits\n"
        "ref = load_digits()\n"
        "print(json.dumps([heavy, (pixels == ref.data).all().item(), (labels == ref.target).all().item(),"
        " list(pixels.shape), str(pixels.dtype)]))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    heavy, same_pixels, same_labels, shape, dtype = json.loads(done.stdout.splitlines()[-1])
    assert not heavy
    assert same_pixels and same_labels
    assert shape == [1797, 64] and dtype == "int64"
