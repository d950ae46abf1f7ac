"""How cleanly and how fast run_study.py refuses bad input: the corpus of tests/reliability/corpus.py.

    .venv/bin/python benchmarks/bad_inputs.py [--no-subprocess] [--only SUBSTRING]

Each case runs in its own empty folder, judged as tests/reliability/test_bad_inputs.py judges it
(exit code 2, an error that names the culprit, no traceback, nothing written, within its bounds).
Prints "N/N bad inputs refused cleanly", every case that was not (known bugs marked), and the
median seconds per case: in process (after the commands' imports) and as the real CLI.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))

from corpus import CASES  # noqa: E402 (the corpus lives beside its test)
from refusal import run_case, warm_up  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-subprocess", action="store_true", help="skip the CLI cases (~20 s each)")
    parser.add_argument("--only", default="", help="run the cases whose id contains this")
    args = parser.parse_args()
    cases = [c for c in CASES if args.only in c.id and not (args.no_subprocess and c.subprocess)]
    warm_up()
    seconds: dict[bool, list[float]] = {False: [], True: []}
    unclean = []
    for case in cases:
        with tempfile.TemporaryDirectory(prefix="bad-input-") as tmp:
            outcome, problems = run_case(case, Path(tmp))
        seconds[case.subprocess].append(outcome.seconds)
        if problems:
            unclean.append((case, problems))
        print(f"{'ok ' if not problems else 'BAD'} {outcome.seconds:6.2f} s  {case.id}", flush=True)
    print(f"\n{len(cases) - len(unclean)}/{len(cases)} bad inputs refused cleanly")
    for case, problems in unclean:
        known = f"  [known bug: {case.bug}]" if case.bug else ""
        print(f"  {case.id}: {'; '.join(p for p in problems if not p.startswith('stderr:'))}{known}")
    for cli, times in seconds.items():
        if times:
            where = "as the CLI (a subprocess)" if cli else "in process"
            print(f"median {statistics.median(times):.3f} s per case {where} ({len(times)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
