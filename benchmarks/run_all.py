#!/usr/bin/env python
"""Every row of the performance table, one benchmark after another (``make benchmark``).

Runs each script below in its own process (its output shown as it comes), then prints the rows
they measured: every printed line that names its goal. Each script measures its ratios against
a baseline timed in the same run, as medians of several repetitions; see each one's docstring.
A script that fails is named at the end and the exit status is 1.

    python benchmarks/run_all.py [--only NAME ...] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUICKSTART = str(HERE.parent / "search_spaces" / "quickstart.yaml")

# name -> (script and arguments, the same with --quick: a smoke run of the code paths)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "overhead": (["study_overhead.py", "--reps", "5"], ["study_overhead.py", "--reps", "1", "--steps", "20"]),
    # >= 3 min of trial compute (the tighter goals), so three pairs: about 20 min
    "overhead-long": (
        ["study_overhead.py", "--reps", "3", "--steps", "3000"],
        ["study_overhead.py", "--reps", "1", "--steps", "40"],
    ),
    # `make study` as a user runs it (the quickstart, 53 trials: about 15 min): trial compute / wall
    "make-study": (
        ["study_overhead.py", "--study", QUICKSTART, "--reps", "1"],
        ["study_overhead.py", "--reps", "1", "--steps", "20"],
    ),
    "evaluator": (
        ["evaluator.py", "--animals-only"],
        ["evaluator.py", "--animals-only", "--animals-repeats", "1"],
    ),
    "sampler": (["sampler.py"], ["sampler.py"]),
    "sweep": (
        ["study_harness.py", "--sweep", "--steps", "200"],
        ["study_harness.py", "--sweep", "--steps", "5"],
    ),
    "reference": (["reference_speed.py"], ["reference_speed.py"]),
    "memory": (
        ["train_memory.py", "--throughput"],
        ["train_memory.py", "--samples", "20000", "--steps", "5"],
    ),
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run these only")
    parser.add_argument("--quick", action="store_true", help="smaller runs: the code paths, not the figures")
    args = parser.parse_args()
    rows: list[str] = []
    failed: list[str] = []
    for name in args.only or BENCHMARKS:
        argv = BENCHMARKS[name][1 if args.quick else 0]
        print(f"\n=== {name}: {' '.join(argv)}", flush=True)
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, str(HERE / argv[0]), *argv[1:]], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if "goal" in line:
                rows.append(f"[{name}] {line.strip()}")
        if proc.wait() != 0:
            failed.append(f"{name} (exit {proc.returncode})")
        print(f"=== {name}: {time.perf_counter() - start:.0f} s", flush=True)
    print("\nThe rows measured:")
    print("\n".join(rows) if rows else "(none)")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
