"""``run_study.py extend``: run the study, then grow what its findings lack, round after round.

Without ``--seeds``: while a method's best trial sits at an edge of an ``extend`` axis that its
bound lets grow, the next value joins the grid. With ``--seeds N``: while a finding of the study's
paper reference is undetermined for overlapping CIs and a trial it compares has fewer than N
sample seeds, that trial's cell is given N (``harness.run.extend.more_seeds``). Either way the
grown study is written to the study folder and run again: finished cells are in the ledger and
drawn samples on disk, so only the new work runs. At most ``--rounds`` growths.
"""

from __future__ import annotations

from collections.abc import Callable

from cli import EXIT_TRIALS_FAILED


def extend(args, run_study: Callable) -> int:
    """``run_study``: the driver (run_study._run), called once per round with ``args``."""
    from harness.errors import UserError
    from harness.run.extend import edge_extensions, extended, more_seeds, write_study
    from harness.run.ledger import Ledger
    from harness.runner import prepare

    if args.rounds < 0:
        raise UserError(f"--rounds {args.rounds}: expected 0 or more")
    if args.seeds is not None and not 2 <= args.seeds <= 1000:
        raise UserError(f"--seeds {args.seeds}: expected 2 to 1000 sample seeds (a paired CI needs 2)")
    run = prepare(args.study, args.runs_root)
    if args.seeds is not None and run.spec.search.algorithm != "grid":
        raise UserError(
            f"--seeds: study {run.spec.name!r} is a {run.spec.search.algorithm} search; more seeds"
            " go to cells of a grid (search.algorithm: grid)"
        )
    if args.seeds is not None and not run.spec.reference_data.get("findings"):
        raise UserError(
            f"--seeds: study {run.spec.name!r} names no paper_reference with findings: nothing says"
            " which comparisons are undecided"
        )
    if args.seeds is None and not run.spec.extend:
        raise UserError(f"study {run.spec.name!r} has no extend section: nothing says which axes may grow")
    for round_ in range(args.rounds + 1):
        code = run_study(args)
        if code not in (0, EXIT_TRIALS_FAILED) or args.dry_run:
            return code
        run = prepare(args.study, args.runs_root)
        records = Ledger(run.study_dir).records()
        if args.seeds is not None:
            grown, lines = more_seeds(run.spec, records, _undecided_trials(args, run.spec), args.seeds)
            if not lines:
                print(f"extend: every trial an undecided finding compares has {args.seeds} sample seeds")
                return code
        else:
            grow, stopped = edge_extensions(run.spec, records)
            for line in stopped:
                print(f"not extended: {line}")
            if not grow:
                print("extend: no best trial sits at an edge it may pass")
                return code
            grown, lines = (
                extended(run.spec, grow),
                [f"{e.axis} += {e.added}  ({'; '.join(e.why)})" for e in grow],
            )
        if round_ == args.rounds:
            print(f"extend: stopped after {args.rounds} round(s); still to grow: {lines[0]}")
            return code
        for line in lines:
            print(f"extend: {line}")
        write_study(grown, run.study_dir)
        args.study = run.study_dir  # the grown study, from its folder, from now on
    return code


def _undecided_trials(args, spec) -> list[str]:
    """The trials (hashes) the study's findings undecided for their CIs compare, from MLflow."""
    from harness.tracking.tracker import resolve_tracking_uri
    from reports.mlflow_source import study_table
    from reports.paper_findings import check_study

    uri = resolve_tracking_uri(args.tracking_uri, args.runs_root.resolve())
    table = study_table(uri, spec.name).table
    if table.empty:
        return []
    found = check_study(spec.name, spec.paper_reference or "", table, spec.metric, spec.reference_data)
    return list(dict.fromkeys(h for c in found.checks for h in c.wants_seeds))
