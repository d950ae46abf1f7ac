#!/usr/bin/env python
"""Reruns the studies behind the README's numbers and checks every quoted figure (make check-readme).

    python benchmarks/check_readme.py                          # every block: all its studies
    python benchmarks/check_readme.py --only video-fvd         # one block (~3 min on 2 busy cores)
    python benchmarks/check_readme.py --runs-root runs         # reuse the finished trials there
    python benchmarks/check_readme.py --only video-fvd --write # regenerate the block from the runs
    python benchmarks/check_readme.py --render                 # README from the spec's quoted values

search_spaces/readme_numbers.yaml lists the README's generated blocks, each with its study and
its figures (reports/readme_numbers.py). Each study runs as ``run_study.py run STUDY --runs-root
R`` (finished trials are skipped, so a reused runs root costs only what is missing; the default
is a new temporary folder, removed when every figure agrees); its ledger is read and each figure
compared with the quoted value. Prints one row per figure; exits 0 when all agree, 1 when one
does not or could not be measured (or the README's block is not what the spec renders), 2 on a
bad spec. --write sets the spec's quoted values from the runs and rewrites those README blocks
(a block with an error is left as it is); --no-run reads the ledgers in --runs-root as they are.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.errors import UserError  # noqa: E402
from reports.readme_blocks import number_text, quoted, render, rewrite_blocks, rewrite_quoted, stale_blocks  # noqa: E402
from reports.readme_check import Check, check_block, checks_table, unmeasured  # noqa: E402
from reports.readme_numbers import ReadmeNumbers, load_spec, parse_spec, study_name  # noqa: E402

SPEC = REPO / "search_spaces" / "readme_numbers.yaml"
RESULT_CODES = (0, 3)  # run_study.py: every trial finished / some failed (their figures say which)


def run_study(study: Path, runs_root: Path) -> int:
    """``run_study.py run``: its exit code (its output goes to this terminal)."""
    command = [sys.executable, str(REPO / "run_study.py"), "run", str(study), "--runs-root", str(runs_root)]
    return subprocess.run(command, cwd=REPO, check=False).returncode


def planned_trials(study: Path) -> set[str] | None:
    """The trial hashes the study file plans now (None for a random or Optuna search)."""
    from harness.config.study import expand_grid, load_study  # imports torch: only when checking

    spec = load_study(study)
    return {t.trial_hash() for t in expand_grid(spec)} if spec.search.algorithm == "grid" else None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", metavar="BLOCK", help="these blocks (default: all)")
    parser.add_argument("--runs-root", type=Path, help="runs root to (re)use (default: a new temporary one)")
    parser.add_argument("--no-run", action="store_true", help="read the ledgers in --runs-root; run nothing")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--write", action="store_true", help="rewrite the blocks and quoted values from the runs"
    )
    mode.add_argument(
        "--render", action="store_true", help="rewrite the blocks from the quoted values; run nothing"
    )
    parser.add_argument("--spec", type=Path, default=SPEC, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, default=REPO, help=argparse.SUPPRESS)  # tests: another tree
    return parser


def measure(
    spec: ReadmeNumbers,
    blocks: list[str],
    root: Path,
    runs_root: Path,
    *,
    run: Callable[[Path, Path], int] | None,
    planned: Callable[[Path], set[str] | None],
) -> list[Check]:
    """Runs each block's study once (unless ``run`` is None) and checks its figures."""
    checks: list[Check] = []
    codes: dict[str, int] = {}
    for block_id in blocks:
        block = spec.blocks[block_id]
        study = root / block.study
        if run is not None and block.study not in codes:
            print(f"== {block.study} (about {block.minutes:g} min on 2 busy cores)", flush=True)
            started = time.perf_counter()
            codes[block.study] = run(study, runs_root)
            print(f"== {block.study}: exit {codes[block.study]} after {time.perf_counter() - started:.0f} s")
        if codes.get(block.study, 0) not in RESULT_CODES:
            error = f"run_study.py run {block.study} exited {codes[block.study]}"
            checks += unmeasured(spec, block_id, error)
            continue
        study_dir = runs_root / study_name(root, block_id, block)
        checks += check_block(spec, block_id, study_dir, planned(study))
    return checks


def write(spec_path: Path, readme: Path, checks: list[Check]) -> list[str]:
    """Sets the quoted values of every block whose figures were all measured, then rewrites those
    blocks from the spec; the ids of the blocks rewritten."""
    failed = {c.block for c in checks if c.status == "error"}
    new = {}
    for c in (c for c in checks if c.block not in failed and c.status != "unchecked"):
        fields = {"quoted": number_text(c.measured.value, c.number_format)}
        if c.figure.ci is not None:
            fields["ci"] = number_text(c.measured.ci, c.number_format)
        new[(c.block, c.name)] = fields
    spec_text = rewrite_quoted(spec_path.read_text(), new)
    spec = parse_spec(spec_text, str(spec_path))  # what is written is a valid spec
    blocks = sorted({block for block, _ in new})
    text = rewrite_blocks(
        readme.read_text(), {b: render(spec.blocks[b], quoted(spec.blocks[b])) for b in blocks}
    )
    spec_path.write_text(spec_text)
    readme.write_text(text)
    return blocks


def _selected(args: argparse.Namespace) -> tuple[ReadmeNumbers, list[str]]:
    """The spec and the blocks asked for, once every one of their study files is found."""
    spec = load_spec(args.spec)
    blocks = args.only or list(spec.blocks)
    unknown = [b for b in blocks if b not in spec.blocks]
    if unknown:
        raise UserError(f"--only: unknown block {unknown[0]!r}; expected some of {list(spec.blocks)}")
    for block_id in blocks:
        study_name(args.root, block_id, spec.blocks[block_id])
    if args.no_run and args.runs_root is None:
        raise UserError("--no-run reads the ledgers of an existing runs root: give --runs-root")
    return spec, blocks


def main(argv: list[str] | None = None, run: Callable = run_study, planned: Callable = planned_trials) -> int:
    args = _parser().parse_args(argv)
    try:
        spec, blocks = _selected(args)
        readme = args.root / spec.readme
        if args.render:
            rendered = {b: render(spec.blocks[b], quoted(spec.blocks[b])) for b in blocks}
            readme.write_text(rewrite_blocks(readme.read_text(), rendered))
            print(f"rewrote {', '.join(blocks)} in {readme} from the quoted values")
            return 0
        stale = stale_blocks(readme.read_text(), spec)  # block id -> what is wrong with it
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    problems = [problem for b, problem in stale.items() if b in blocks or b not in spec.blocks]
    if problems and not args.write:
        print("\n".join(f"error: {problem}" for problem in problems), file=sys.stderr)
        return 1  # before any study runs
    runs_root = args.runs_root or Path(tempfile.mkdtemp(prefix="check-readme-"))
    checks = measure(spec, blocks, args.root, runs_root, run=None if args.no_run else run, planned=planned)
    print("\n".join(checks_table(checks)))
    for item in spec.unchecked if args.only is None else []:
        print(f"not checked: {item.text!r}: {item.why}")
    if args.write:
        rewritten = write(args.spec, readme, checks)
        print(f"rewrote {', '.join(rewritten) or 'no block'} in {readme} and {args.spec}")
    failed = [c for c in checks if c.status == "error" or (c.failed and not args.write)]
    if failed:
        mismatched = any(c.status == "MISMATCH" for c in failed)
        hint = "; --write regenerates the mismatched ones" if mismatched else ""
        print(f"{len(failed)} figure(s) failed{hint}; runs kept in {runs_root}", file=sys.stderr)
        return 1
    if args.runs_root is None:
        shutil.rmtree(runs_root, ignore_errors=True)
    if not args.write:
        print(f"{sum(c.status == 'ok' for c in checks)} figure(s) agree with the README")
    return 0


if __name__ == "__main__":
    sys.exit(main())
