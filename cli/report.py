"""``run_study.py report STUDY``: the study's report from its MLflow runs (or, ``--from-ledger``,
from its ledger files alone).

The ledger is what a study finished; MLflow is where it is shown. Before the report is rendered
from MLflow, every ledger record the store lacks (a sync the driver never made, a trial finished
by another driver) is logged into the study's latest invocation, so that the report never shows
fewer trials than finished. A store that holds no invocation of a study that has run (deleted,
or another store named) is refused, naming what to do, rather than rendered as an empty report.
"""

from __future__ import annotations

from pathlib import Path

from harness.errors import UserError


def report_study(args) -> int:
    from cli.drive import log_report, write_study_report
    from harness.runner import prepare
    from harness.tracking.tracker import resolve_tracking_uri

    run = prepare(args.study, args.runs_root)
    if not (run.study_dir / "ledger").is_dir():
        raise UserError(f"study {run.spec.name!r} has not run yet: no ledger under {run.study_dir}")
    if args.from_ledger:  # no MLflow needed: tables from the study's ledger files
        from harness.config.study import metric_mode
        from reports.markdown import write_markdown_report

        spec = run.spec
        title = spec.description or spec.name
        path = write_markdown_report(run.study_dir, title, spec.metric, metric_mode(spec))
        print(f"report: {path}")
        return 0
    uri = resolve_tracking_uri(args.tracking_uri, args.runs_root.resolve())
    tracker = sync_ledger(uri, run.spec.name, run.study_dir)
    report = write_study_report(run, uri)
    if tracker.parent_run_id is not None:
        log_report(tracker, report)
    print(f"report: {report.markdown} and {report.html}")
    return 0


def sync_ledger(uri: str, name: str, study_dir: Path):
    """The study's tracker, its latest invocation reopened and every ledger record the store lacks
    logged into it; a store with no invocation of a study whose ledger has records is refused."""
    from harness.run.ledger import Ledger
    from harness.tracking.tracker import Tracker

    tracker = Tracker(uri, name)
    records = Ledger(study_dir).records()
    if tracker.reopen_latest_invocation():
        added = tracker.sync(records)
        if added:
            print(f"MLflow store: logged {added} trial(s) of study {name!r} from its ledger")
    elif records:
        raise UserError(
            f"MLflow store {uri} holds no run of study {name!r}, whose ledger has {len(records)}"
            f" trial(s) (a store moved or deleted, or another one named): run `run_study.py resume"
            f" {name}` to log them, or `report --from-ledger`"
        )
    return tracker
