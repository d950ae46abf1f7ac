#!/usr/bin/env python
"""Study harness cost on CPU: its overhead over the trials' own compute, and what training once saves.

Runs a sweep of 16 sampling/eval trials over 2 trainings (tiny model, digits) through
``harness.runner.execute`` (Ray Tune, as ``run_study.py run`` does, MLflow aside), and prints:

(a) harness overhead = study wall time / ((sum of the trials' own seconds from the ledger + sum of
    the trainings' seconds from <store>/<hash>/done.json) / concurrency). 1.00 would mean Ray,
    Tune, process start-up and bookkeeping cost nothing;
(b) train-once saving = wall time of the same 16 sampling settings with a training per trial /
    wall time of the train-once sweep. Measured by running that sweep (16 variants, each pinning
    one sampling setting and a distinct ``train.checkpoint_every`` beyond the step count: a distinct
    training hash, identical training compute), and also estimated from the train-once run's own
    figures as (16 x mean training seconds + sampling seconds) / concurrency.

Each study starts (and stops) its own local Ray, as a CLI run would; that time is part of the wall.
The evaluator cache (the digits classifier) is built before any timing.

With ``--sweep`` it runs the 120-cell sweep of the performance goal instead (4 NFE x 5 CFG x
3 temperatures over 2 trainings), trained once, and prints train-once wall / the wall of the same
sweep with a training per cell, that side estimated as the measured wall plus the 118 further
trainings' measured seconds over the concurrency.

    python benchmarks/study_harness.py [--steps 60] [--samples 100] [--concurrency 2]
                                       [--estimate-only | --sweep]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

for _key, _value in {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.ray import dispatch  # noqa: E402
from harness.run.ledger import Ledger  # noqa: E402
from harness.runner import execute, prepare  # noqa: E402

TIMESTEPS = ["explicit", "implicit"]  # the training axis: 2 checkpoints
NUM_STEPS = [2, 4]
TEMPERATURES = [0.8, 0.9, 1.0, 1.1]  # 2 x 4 = 8 sampling settings per checkpoint, 16 trials
# ``--sweep``: the 120 cells, 4 NFE x 5 CFG x 3 T over 2 models, run trained once only
SWEEP = {
    "model.timestep": TIMESTEPS,
    "sampler.num_steps": [2, 4, 8, 16],
    "sampler.cfg_scale": [1.0, 1.5, 2.0, 3.0, 4.0],
    "sampler.temperature": [0.8, 1.0, 1.2],
}


def overrides(args: argparse.Namespace) -> dict:
    return {
        "train.steps": args.steps,
        "train.warmup_steps": min(50, args.steps // 4),
        "eval.num_samples": args.samples,
        "eval.batch_size": args.samples,
    }


def write_studies(folder: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    common = {
        "base": str(REPO / "search_spaces" / "base.yaml"),
        "metric": "fid",
        "resources": {"cpu": 1},
        "concurrency": args.concurrency,
        "max_failures": 0,
    }
    once = {
        "name": "bench_sweep" if args.sweep else "bench_train_once",
        **common,
        "overrides": overrides(args),
        "space": SWEEP
        if args.sweep
        else {
            "model.timestep": TIMESTEPS,
            "sampler.num_steps": NUM_STEPS,
            "sampler.temperature": TEMPERATURES,
        },
    }
    # the same 16 trials, each with a training of its own: checkpoint_every past the last step
    # changes the training hash, not the training
    settings = itertools.product(TIMESTEPS, NUM_STEPS, TEMPERATURES)
    variants = {
        f"v{i:02d}": {
            "model.timestep": timestep,
            "sampler.num_steps": steps,
            "sampler.temperature": temperature,
            "train.checkpoint_every": 100_000 + i,
        }
        for i, (timestep, steps, temperature) in enumerate(settings)
    }
    repeated = {"name": "bench_train_per_trial", **common, "overrides": overrides(args), "variants": variants}
    paths = []
    for study in (once, repeated):
        path = folder / f"{study['name']}.yaml"
        path.write_text(yaml.safe_dump(study, sort_keys=False))
        paths.append(path)
    return paths[0], paths[1]


class RayTimer:
    """Seconds spent starting and stopping Ray inside execute() (part of the wall, shown apart)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        enter, leave = dispatch.RayDispatcher.__enter__, dispatch.RayDispatcher.__exit__

        def timed_enter(inner):
            start = time.perf_counter()
            try:
                return enter(inner)
            finally:
                self.seconds += time.perf_counter() - start

        def timed_exit(inner, *exc):
            start = time.perf_counter()
            try:
                return leave(inner, *exc)
            finally:
                self.seconds += time.perf_counter() - start

        dispatch.RayDispatcher.__enter__ = timed_enter
        dispatch.RayDispatcher.__exit__ = timed_exit


def run_study(path: Path, root: Path, timer: RayTimer) -> dict:
    run = prepare(path, root)
    if not run.plan.pending_trials:
        raise SystemExit(f"{run.spec.name}: already run under {root}; use a fresh --runs-root")
    ray_before = timer.seconds
    start = time.perf_counter()
    records = execute(run)
    wall = time.perf_counter() - start
    failed = [r for r in records if r.status != "finished"]
    if failed:
        raise SystemExit(f"{run.spec.name}: {len(failed)} trial(s) failed:\n{failed[0].error}")
    trainings = {t.training_hash() for t in run.plan.trainings}
    training_seconds = [run.store.training_seconds(h) for h in trainings]
    trial_seconds = [r.seconds for r in Ledger(run.study_dir).records()]
    return {
        "name": run.spec.name,
        "wall": wall,
        "ray": timer.seconds - ray_before,
        "trainings": len(trainings),
        "trials": len(trial_seconds),
        "training_seconds": training_seconds,
        "trial_seconds": trial_seconds,
        "concurrency": run.spec.concurrency,
    }


def compute(study: dict) -> float:
    """The study's own compute per unit of parallelism: what a free harness would take."""
    return (sum(study["training_seconds"]) + sum(study["trial_seconds"])) / study["concurrency"]


def describe(study: dict) -> None:
    train, trial = study["training_seconds"], study["trial_seconds"]
    print(
        f"  {study['name']}: {study['trainings']} trainings x {statistics.mean(train):.1f} s, "
        f"{study['trials']} trials x {statistics.mean(trial):.2f} s (sum {sum(trial):.1f} s); "
        f"wall {study['wall']:.1f} s (Ray start/stop {study['ray']:.1f} s); "
        f"compute / concurrency {compute(study):.1f} s; overhead x{study['wall'] / compute(study):.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60, help="training steps per checkpoint")
    parser.add_argument("--samples", type=int, default=100, help="samples per trial (eval.num_samples)")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--runs-root", type=Path, default=None, help="default: a fresh temporary folder")
    parser.add_argument("--estimate-only", action="store_true", help="skip the training-per-trial sweep")
    parser.add_argument(
        "--sweep", action="store_true", help="the 120-cell sweep, trained once; the other side estimated"
    )
    args = parser.parse_args()

    root = args.runs_root or Path(tempfile.mkdtemp(prefix="unmask-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        return bench(root, args)
    finally:
        if args.runs_root is None:
            shutil.rmtree(root, ignore_errors=True)


def bench(root: Path, args: argparse.Namespace) -> int:
    once_path, repeated_path = write_studies(root, args)
    from harness.evaluation import Evaluator

    Evaluator("digits", metrics=["fid"], cache_dir=root / "cache").reference_stats  # noqa: B018 (untimed)
    print(
        f"runs root {root}; {os.cpu_count()} CPU(s), concurrency {args.concurrency}, "
        f"train.steps {args.steps}, eval.num_samples {args.samples}"
    )

    timer = RayTimer()
    once = run_study(once_path, root, timer)
    if args.sweep:
        return report_sweep(once)
    print("(a) harness overhead, train once:")
    describe(once)
    per_training = statistics.mean(once["training_seconds"])
    sampling = sum(once["trial_seconds"])
    estimate = (once["trials"] * per_training + sampling) / once["concurrency"]
    print("(b) train-once saving (16 trials, training repeated per trial vs trained once):")
    print(
        f"  estimated from (a): ({once['trials']} x {per_training:.1f} s + {sampling:.1f} s) / "
        f"{once['concurrency']} = {estimate:.1f} s of compute vs {compute(once):.1f} s: "
        f"x{estimate / compute(once):.2f} less compute"
    )
    if not args.estimate_only:
        repeated = run_study(repeated_path, root, timer)
        describe(repeated)
        print(
            f"  measured: wall {repeated['wall']:.1f} s vs {once['wall']:.1f} s: "
            f"training once is x{repeated['wall'] / once['wall']:.2f} faster "
            f"({repeated['wall'] - once['wall']:.1f} s saved)"
        )
    return 0


def report_sweep(once: dict) -> int:
    """The 120-cell sweep: measured trained once; a training per cell would add the other
    cells' trainings to it (compute over the concurrency; no harness cost counted for them, so
    the ratio flatters the training-per-trial side)."""
    print("train-once, 120 cells (4 NFE x 5 CFG x 3 T x 2 models):")
    describe(once)
    per_training = statistics.mean(once["training_seconds"])
    extra = (once["trials"] - once["trainings"]) * per_training / once["concurrency"]
    estimate = once["wall"] + extra
    print(
        f"  a training per cell: {once['wall']:.1f} s + ({once['trials']} - {once['trainings']}) x "
        f"{per_training:.1f} s / {once['concurrency']} = {estimate:.1f} s (estimated)"
    )
    print(f"train-once sweep / a training per trial {once['wall'] / estimate:.3f}  (goal <= 0.1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
