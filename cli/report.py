"""``run_study.py report STUDY``: the study's report from its MLflow runs (or, ``--from-ledger``,
from its ledger files alone).

The ledger is what a study finished; MLflow is where it is shown. Before the report is rendered
from MLflow, every ledger record the store lacks (a sync the driver never made, a trial finished
by another driver) is logged into the study's latest invocation, so that the report never shows
fewer trials than finished. A store that holds no invocation of a study that has run (deleted,
or another store named) is refused, naming what to do, rather than rendered as an empty report.
"""

from __future__ import annotations

from harness.errors import UserError


def report_study(args) -> int:
    from cli.drive import log_report, write_study_report
    from harness.run.ledger import Ledger
    from harness.runner import prepare
    from harness.tracking.tracker import Tracker, resolve_tracking_uri

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
    tracker = Tracker(uri, run.spec.name)
    records = Ledger(run.study_dir).records()
    if tracker.reopen_latest_invocation():
        added = tracker.sync(records)
        if added:
            print(f"MLflow store: {added} trial(s) of the ledger it lacked logged")
    elif records:
        raise UserError(
            f"MLflow store {uri} holds no run of study {run.spec.name!r}, whose ledger has"
            f" {len(records)} trial(s) (a store moved or deleted, or another one named): run"
            f" `run_study.py resume {run.spec.name}` to log them, or `report --from-ledger`"
        )
    report = write_study_report(run, uri)
    if tracker.parent_run_id is not None:
        log_report(tracker, report)
    print(f"report: {report.markdown} and {report.html}")
    return 0
