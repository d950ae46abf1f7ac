"""Which faults the harness survives: bad inputs, killed drivers, damaged files, contention, a
full disk and a diverged training (the scenarios of tests/reliability/faults.py, run through the CLI).

    .venv/bin/python benchmarks/faults.py [--only SUBSTRING] [--no-bad-inputs] [--no-subprocess]

Prints "N/N bad inputs refused cleanly" (the corpus of tests/reliability/corpus.py, judged as
benchmarks/bad_inputs.py judges it), one line per fault scenario (survived or not, its seconds,
results lost and duplicated, and what went wrong), then the totals: faults survived (k/K) and
results lost or duplicated. Exits 1 when a fault was not survived or a result was lost or
duplicated. A scenario the machine cannot stage (a tmpfs mount needs root) is skipped, not counted.
The scenarios run one at a time, each a few tiny studies of 40-90 s: about 20 minutes in all.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS / "reliability"), str(TESTS)]  # before benchmarks/, which has a faults.py too

from corpus import CASES  # noqa: E402 (the corpus and the scenarios live beside their tests)
from faults import SCENARIOS, Result, run_scenario, warm_cache  # noqa: E402
from refusal import run_case, warm_up  # noqa: E402


def bad_inputs(subprocess_cases: bool) -> str:
    """The corpus, each case in its own empty folder: 'N/N bad inputs refused cleanly' and the rest."""
    warm_up()
    cases = [c for c in CASES if subprocess_cases or not c.subprocess]
    unclean = []
    for case in cases:
        with tempfile.TemporaryDirectory(prefix="bad-input-") as tmp:
            _, problems = run_case(case, Path(tmp))
        if problems:
            known = f" [known bug: {case.bug}]" if case.bug else ""
            unclean.append(f"  {case.id}: {problems[0]}{known}")
    return "\n".join([f"{len(cases) - len(unclean)}/{len(cases)} bad inputs refused cleanly", *unclean])


def line(result: Result) -> str:
    """'ok' or 'FAIL', seconds, the scenario, its lost and duplicated results; then each problem."""
    name, tally, bug = result.scenario.name, result.tally, result.scenario.bug
    if result.skipped:
        return f"skip {result.seconds:6.1f} s  {name}: {result.skipped}"
    counts = f"lost {tally.lost}, duplicated {tally.duplicated}"
    lines = [f"{'ok  ' if tally.survived else 'FAIL'} {result.seconds:6.1f} s  {name}  ({counts})"]
    lines += [f"       {problem.splitlines()[0][:300]}" for problem in tally.problems]
    if bug is not None and not tally.survived:
        lines.append(f"       known bug: {bug.reason}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="", help="run the scenarios whose name contains this")
    parser.add_argument("--no-bad-inputs", action="store_true", help="skip the bad-input corpus")
    parser.add_argument(
        "--no-subprocess", action="store_true", help="skip the corpus's CLI cases (~20 s each)"
    )
    args = parser.parse_args()
    if not args.no_bad_inputs:
        print(bad_inputs(not args.no_subprocess), flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        cache = Path(os.environ.get("UNMASK_CACHE") or Path(tmp) / "cache")
        os.environ["UNMASK_CACHE"] = str(warm_cache(cache))
        for i, scenario in enumerate(s for s in SCENARIOS if args.only in s.name):
            results.append(run_scenario(scenario, Path(tmp) / f"scenario{i}", cache))
            print(line(results[-1]), flush=True)
    counted = [r for r in results if not r.skipped]
    survived = sum(r.tally.survived for r in counted)
    lost, duplicated = (sum(getattr(r.tally, k) for r in counted) for k in ("lost", "duplicated"))
    print(f"\n{survived}/{len(counted)} faults survived")
    print(f"{lost} results lost, {duplicated} duplicated")
    return 0 if survived == len(counted) and lost == duplicated == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
