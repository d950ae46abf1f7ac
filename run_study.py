#!/usr/bin/env python
"""unmask: run design-space studies of masked discrete generative models.

  run_study.py validate STUDY.yaml              check a study; nothing starts, nothing is written
  run_study.py run STUDY.yaml [--dry-run]       run it (or print its trial plan and cost)
  run_study.py resume STUDY                     finish an interrupted study (a file, folder or name)
  run_study.py extend STUDY [--rounds N]        run it, then grow its `extend` axes past edge optima
  run_study.py extend STUDY --seeds N           ... or give undecided findings' cells N sample seeds
  run_study.py report STUDY                     rewrite report.md / report.html from MLflow
  run_study.py report FOLDER [--readme README.md]   every paper finding of a folder's studies, one table
  run_study.py quickstart                       the embedded quickstart study (make study)
  run_study.py evaluate SAMPLES --dataset D     rescore samples saved on disk (no resampling)
  run_study.py tokenize IMAGES OUT --tokenizer VQ   an image folder into a shard folder (resumable)

One driver per study: run/resume hold <runs-root>/<study>/driver.lock (it records the holder's pid
and host) from validation to exit, on this machine and on any node that shares the runs root.

Exit codes:
  0  done: every trial of the study finished (or the command did its work)
  1  a bug: any error not listed here, with its traceback
  2  invalid input (harness.errors.UserError): one line naming the field or path; nothing started
  3  the study ran but some trials failed: how many, and the ledger files that hold their errors
  4  the study is being run by another driver (its pid and host are named); nothing started
  5  a path could not be written (disk full, quota, read-only, no permission, a path under a file):
     the path and the cause are named; finished trials are kept, resume once it is fixed
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import errno
import gc
import math
import os
import sys
import threading
from pathlib import Path
from typing import NoReturn

from cli import EXIT_LOCKED, EXIT_TRIALS_FAILED, EXIT_UNWRITABLE  # noqa: F401 (the exit codes, by name)

DEFAULT_RUNS = Path("runs")
QUICKSTART = Path(__file__).resolve().parent / "search_spaces" / "quickstart.yaml"


def _positive_number(text: str) -> float:
    """A finite number above 0 (argparse reports anything else as a usage error, exit 2)."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number above 0")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_study.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("validate", "run", "resume", "report", "quickstart", "extend"):
        p = sub.add_parser(name)
        if name != "quickstart":
            p.add_argument("study", help="a study YAML file (or, for resume/report, its folder or name)")
        p.add_argument(
            "--runs-root", type=Path, default=DEFAULT_RUNS, help="studies, checkpoints, MLflow store"
        )
        if name in ("run", "resume", "quickstart", "report", "extend"):
            p.add_argument(
                "--tracking-uri",
                default=None,
                help="MLflow URI (default: MLFLOW_TRACKING_URI or sqlite:///<runs-root>/mlflow.db)",
            )
        if name == "report":
            p.add_argument(
                "--readme",
                type=Path,
                default=None,
                help="with a FOLDER: also rewrite the README's '<!-- findings: FOLDER begin -->' block",
            )
            p.add_argument(
                "--from-ledger",
                action="store_true",
                help="tables only, from the study's ledger files (when the MLflow store is out of reach)",
            )
        if name == "extend":
            p.add_argument(
                "--rounds", type=int, default=5, help="at most this many growths of the grid (default 5)"
            )
            p.add_argument(
                "--seeds",
                type=int,
                default=None,
                help="instead of growing the grid: raise the cells behind findings undecided for their"
                " CIs to this many sample seeds (only the new seeds are drawn)",
            )
        if name in ("run", "resume", "quickstart", "extend"):
            p.add_argument(
                "--dry-run", action="store_true", help="print the trial plan and cost; run nothing"
            )
            p.add_argument(
                "--gpu-tflops",
                type=_positive_number,
                default=150.0,
                help="sustained TFLOP/s per GPU for the GPU-hour estimate of GPU studies (default 150:"
                " bf16 on an H100-class GPU at ~15-20%% of peak; measure yours)",
            )
            p.add_argument(
                "--address", default=None, help="an existing Ray cluster (default: RAY_ADDRESS or local)"
            )
            p.add_argument("--verbose", action="store_true", help="Ray Tune's own progress output")
    p = sub.add_parser("evaluate", help="score a samples folder (or .npz) written by a trial")
    p.add_argument("samples", type=Path, help="a folder with samples.npz, or the file")
    p.add_argument("--dataset", required=True, help="the reference dataset (its train split)")
    p.add_argument("--extractor", default=None, help="feature extractor (default: the dataset's)")
    p.add_argument("--metrics", nargs="+", default=None, help="metric keys (default: all that apply)")
    p.add_argument("--weights", type=Path, default=None, help="weights file for extractors that need one")
    from harness.ingest.cli import add_parser as add_tokenize_parser  # stdlib only: cheap

    add_tokenize_parser(sub)
    return parser


def _evaluate(args) -> int:
    from harness.data.registry import get_dataset, real_images
    from harness.errors import UserError, check_known
    from harness.evaluation import EXTRACTORS, METRICS, Evaluator
    from harness.evaluation.evaluator import checked_samples

    get_dataset(args.dataset)  # unknown names are refused before anything loads
    for name in args.metrics or ():
        check_known(name, METRICS, "--metrics")
    if args.extractor is not None:
        check_known(args.extractor, EXTRACTORS, "--extractor")
    like = real_images(args.dataset, "heldout")[0][0]  # one real image: the shape samples must have
    if args.extractor is not None:  # an image extractor on clips, or a video one on images
        from harness.evaluation.extractors import IMAGE, INPUT_KINDS, VIDEO

        kind, takes = (VIDEO if like.ndim == 4 else IMAGE), INPUT_KINDS.get(args.extractor)
        if takes is not None and takes != kind:
            raise UserError(f"--extractor {args.extractor}: takes {takes}s; {args.dataset} holds {kind}s")
    samples = checked_samples(args.samples, like)  # refused before an extractor is built or trained
    from harness.evaluation.extractors import INPUT_KINDS, default_extractor_name
    from harness.evaluation.metrics import check_count, metrics_for

    # the defaults known before the extractor is built (or trained): IS kept until its logits are
    default = metrics_for(INPUT_KINDS.get(default_extractor_name(args.dataset, args.extractor)), None)
    try:
        check_count("samples", len(samples.images), args.metrics or default)
    except UserError as err:
        raise UserError(f"{err} (name the metrics to compute with --metrics)") from None
    evaluator = Evaluator(
        args.dataset,
        extractor=args.extractor,
        metrics=args.metrics,
        weights_path=args.weights,
    )
    seed = int(samples.meta["sample_seed"])
    for result in evaluator.evaluate(samples.images, seed, labels=samples.labels):
        print(f"{result.name} = {result.value:.4f}   [{result.protocol.protocol_key()}]")
    return 0


def _run(args) -> int:
    import logging

    from harness.errors import UserError
    from harness.run.lock import StudyLock
    from harness.run.plan import measured_flops_per_second
    from harness.runner import prepare

    for noisy in ("mlflow", "alembic"):  # database set-up chatter; our progress lines say what matters
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # MLflow logs a store error as a traceback before raising it; the raised one is reported (exit 5)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    target = QUICKSTART if args.command == "quickstart" else args.study
    run = prepare(target, args.runs_root)
    gpu_tflops = args.gpu_tflops if run.spec.resources.gpu > 0 else None
    print(
        f"study {run.spec.name!r}: {run.plan.describe(measured_flops_per_second(), gpu_tflops)}", flush=True
    )
    if args.dry_run:
        from harness.runner import missing_files

        for line in missing_files(run.plan.trials):
            print(f"note: {line}")
        return 0
    if not (args.address or os.environ.get("RAY_ADDRESS")):  # refused before MLflow or Ray start
        from harness.runner import check_resources, local_resources, missing_files

        check_resources(run.spec, local_resources())
        missing = missing_files(run.plan.trials)  # not on a cluster: its workers may hold them
        if missing:
            raise UserError("; ".join(missing))
    with StudyLock(run.study_dir, run.spec.name):  # validated; nothing of the study written yet
        from cli.drive import drive

        return drive(args, run)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from harness.errors import UserError, unwritable
    from harness.run.lock import StudyLockedError

    try:
        if args.command == "validate":
            from harness.runner import prepare

            run = prepare(args.study, args.runs_root)
            print(
                f"valid: study {run.spec.name!r}, {len(run.plan.trainings)} training(s), "
                f"{len(run.plan.trials)} trial(s)"
            )
            return 0
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "tokenize":
            from harness.ingest.cli import main as tokenize

            return tokenize(args)
        if (
            args.command == "report"
            and Path(args.study).is_dir()
            and not (Path(args.study) / "ledger").is_dir()
        ):
            from cli.findings import report_folder

            return report_folder(args)
        if args.command == "report":
            from cli.report import report_study

            return report_study(args)
        if args.command == "extend":
            from cli.extend import extend

            return extend(args, _run)
        return _run(args)
    except UserError as err:  # bad input; anything not caught here is a bug and keeps its traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    except StudyLockedError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_LOCKED
    except OSError as err:
        if not unwritable(err):
            raise
        path = err.filename or getattr(args, "runs_root", "?")
        driver = args.command in ("run", "resume", "quickstart")
        hint = "; finished trials are kept: fix it, then resume the study" if driver else ""
        print(f"error: {path}: {err.strerror} ({errno.errorcode[err.errno]}){hint}", file=sys.stderr)
        return EXIT_UNWRITABLE


def exit_now(code: int) -> NoReturn:
    """Exits as the interpreter does (non-daemon threads joined, then the atexit handlers: Ray's,
    MLflow's, logging's flush, finalizers), then leaves what the run built to the OS instead of
    tearing down every module of torch, Ray and MLflow one object at a time (0.2-0.3 s of a
    study's wall, measured). A Python without the hooks used here exits the usual way."""
    join_threads = getattr(threading, "_shutdown", None)
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if join_threads is None or run_exit_handlers is None:
        gc.freeze()  # the last collections would walk every object of torch, MLflow and the report
        sys.exit(code)
    join_threads()
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone (a closed pipe)
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
