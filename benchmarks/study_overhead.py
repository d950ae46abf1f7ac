#!/usr/bin/env python
"""What the harness costs beyond its trials, timed as whole processes on this machine.

For a digits study (1 training of ``--steps`` steps + 8 sampling trials, concurrency 1, the
trial's cpu share = every core), each repetition runs, in turn and each in a fresh runs root:

  A  ``run_study.py run STUDY``: the CLI as a user runs it (validation, Ray Tune, ledger, MLflow,
     the report), start to exit;
  B  a plain Python loop in a fresh process calling the trial function (``run_trial``) on the
     same trials, one after another (training once, as the store does);

and prints the medians over ``--reps`` repetitions of:

  study wall / plain loop wall   (A / B, paired per repetition)
  study wall / trial compute     (A / the compute its ledger and done.json record: training
                                  seconds + each trial's seconds, over the concurrency)

with a 95 % bootstrap interval of each median (the pairs resampled): on a noisy machine a goal
is decided only when the whole interval lies on one side of it. Each pair's ratio is printed
too, so that several runs can be pooled.

``--study FILE`` times A alone on any study file instead (e.g. ``search_spaces/quickstart.yaml``,
``make study``) and prints trial compute / wall, its caches (tokenizer, extractor, reference
statistics: built once per machine) warmed untimed first. The evaluator cache is warmed before
timing.

    python benchmarks/study_overhead.py [--steps 200] [--reps 5] [--study FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# B: the trials of the study, through the trial function, in one plain process
PLAIN_LOOP = """
import sys
from pathlib import Path
from harness.runner import prepare
from harness.run.trial import run_trial, set_threads
run = prepare(sys.argv[1], Path(sys.argv[2]))
set_threads(run.spec.resources.cpu)
for trial in run.plan.trials:
    record = run_trial(trial, store_root=run.store.root, study_dir=run.study_dir, cache_dir=run.cache_dir)
    assert record.status == "finished", record.error
"""


def write_study(folder: Path, steps: int) -> Path:
    study = {
        "name": "overhead",
        "base": str(REPO / "search_spaces" / "small.yaml"),
        "metric": "fid",
        "resources": {"cpu": os.cpu_count() or 1},
        "concurrency": 1,
        "max_failures": 0,
        "overrides": {"train.steps": steps, "train.checkpoint_every": steps, "eval.num_samples": 200},
        "space": {"sampler.num_steps": [4, 8], "sampler.temperature": [0.8, 0.9, 1.0, 1.1]},
    }
    path = folder / "overhead.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return seconds


def recorded_compute(study: Path, root: Path, plain_loop: bool = False) -> float:
    """Training seconds (done.json) + trial seconds (ledger), over the study's concurrency. The
    plain loop runs one at a time, and its first trial trains the checkpoint inside its own
    seconds (the study trains in a job of its own): its trials' seconds alone."""
    spec = yaml.safe_load(study.read_text())
    name = spec["name"]
    trials = [json.loads(p.read_text())["seconds"] for p in (root / name / "ledger").glob("*.json")]
    if plain_loop:
        return sum(trials)
    trainings = [json.loads(p.read_text())["seconds"] for p in (root / "checkpoints").glob("*/done.json")]
    return (sum(trials) + sum(trainings)) / spec.get("concurrency", 1)


def run_cli(study: Path, root: Path, env: dict[str, str]) -> float:
    argv = [sys.executable, "run_study.py", "run", str(study), "--runs-root", str(root)]
    return timed(argv, env)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=200, help="training steps of the study's one training")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (medians are printed)")
    parser.add_argument("--study", type=Path, default=None, help="time this study file alone (A)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="unmask-overhead-"))
    env = {**os.environ, "UNMASK_CACHE": os.environ.get("UNMASK_CACHE", str(folder / "cache"))}
    env.pop("MLFLOW_TRACKING_URI", None)
    try:
        from harness.evaluation import Evaluator

        os.environ["UNMASK_CACHE"] = env["UNMASK_CACHE"]
        Evaluator("digits", metrics=["fid"]).reference_stats  # noqa: B018 (warm, untimed)
        if args.study is not None:
            warm_caches(args.study.resolve(), folder)
            return time_study(args.study.resolve(), folder, env, args.reps)
        return compare(write_study(folder, args.steps), folder, env, args.reps)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def warm_caches(study: Path, folder: Path) -> None:
    """What a first run on a machine builds once and every later run reads (tokenizers, token
    grids, trained extractors, reference statistics), built untimed: the harness's cost is
    timed, not the cache's."""
    from harness.runner import prepare, warm_datasets, warm_evaluators

    run = prepare(study, folder / "warm")
    (folder / "warm" / "study").mkdir(parents=True, exist_ok=True)
    warm_datasets(run.plan.trials, folder / "warm" / "study", run.cache_dir)
    warm_evaluators(run.plan.trials, run.cache_dir)


LONG_STUDY_S = 180  # trial compute from which the tighter goals apply


def median_interval(values: list[float], draws: int = 4000, seed: int = 0) -> tuple[float, float]:
    """A 95 % percentile-bootstrap interval of the median of ``values`` (resampled with
    replacement, ``draws`` times, a seeded generator: the same values give the same interval)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


def verdict(values: list[float], goal: float, at_most: bool = True) -> str:
    """The median of ``values`` against a goal, with its interval: met, not met, or undecided."""
    low, high = median_interval(values)
    if at_most:
        decided = "met" if high <= goal else "not met" if low > goal else "undecided"
    else:
        decided = "met" if low >= goal else "not met" if high < goal else "undecided"
    sign = "<=" if at_most else ">="
    interval = f"95 % interval {low:.2f}-{high:.2f}"
    return f"{statistics.median(values):.2f}  ({interval}; goal {sign} {goal}: {decided})"


def time_study(study: Path, folder: Path, env: dict[str, str], reps: int) -> int:
    ratios = []
    for rep in range(reps):
        root = folder / f"study{rep}"
        wall = run_cli(study, root, env)
        compute = recorded_compute(study, root)
        ratios.append(compute / wall)
        print(f"  rep {rep}: wall {wall:.1f} s, trial compute {compute:.1f} s", flush=True)
    print(f"{study.name}: trial compute / wall = {verdict(ratios, 0.9, at_most=False)}  [median of {reps}]")
    return 0


def compare(study: Path, folder: Path, env: dict[str, str], reps: int) -> int:
    loop, over_compute, walls = [], [], []
    for rep in range(reps):
        a_root, b_root = folder / f"a{rep}", folder / f"b{rep}"
        a = run_cli(study, a_root, env)
        b = timed([sys.executable, "-c", PLAIN_LOOP, str(study), str(b_root)], env)
        compute = recorded_compute(study, a_root)
        loop.append(a / b)
        over_compute.append(a / compute)
        walls.append((a, b, compute))
        # the same trials' recorded seconds in the plain loop (one process, concurrency 1)
        plain = recorded_compute(study, b_root, plain_loop=True)
        print(
            f"  rep {rep}: study {a:.1f} s, plain loop {b:.1f} s, recorded compute {compute:.1f} s"
            f" (the same trials in the plain loop: {plain:.1f} s)",
            flush=True,
        )
        for root in (a_root, b_root):
            shutil.rmtree(root, ignore_errors=True)
    compute = statistics.median(c for _, _, c in walls)
    long = compute >= LONG_STUDY_S  # the goals of a study of >= 3 min of compute, else the small one's
    print(f"pair ratios (study / plain loop): {' '.join(f'{r:.3f}' for r in loop)}")
    print(
        f"study wall / plain loop wall = {verdict(loop, 1.15 if long else 1.4)}"
        f"  [median of {reps} pairs, {compute:.0f} s of trial compute]"
    )
    if long:
        print(f"study wall / trial compute   = {verdict(over_compute, 1.15)}")
    else:
        print(
            f"study wall / trial compute   = {statistics.median(over_compute):.2f}"
            f"  (goal <= 1.15 applies from {LONG_STUDY_S} s of compute)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
