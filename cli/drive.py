"""``run_study.py run`` / ``resume``'s driver: Ray, MLflow and the report around a validated study.

Set-up runs side by side, each in the background where it mostly waits: Ray starts (its own
processes) while the MLflow store opens (MLflow's imports and store, ~2 s) and the driver imports
Ray Tune. The jobs are handed to Tune once Ray is up; the first job runs only once the store is
open too (Tune's ``on_trial_start``, after its worker started and imported what it needs), so the
store opens while that worker starts, and a store that cannot be opened is reported before any
training or trial has run. The report's modules are imported once that first job runs (its own
set-up, data and network, is single-threaded: the driver's imports take the core it leaves).
Ray stops while the report is written.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from cli import EXIT_TRIALS_FAILED


def drive(args, run) -> int:
    """Runs a validated study under its lock; the exit code."""
    from harness.runner import dispatcher_for

    dispatcher = dispatcher_for(run, address=args.address, verbose=args.verbose)
    try:
        return _track(args, run, dispatcher)
    finally:
        dispatcher.close()  # Ray stopped: in the background while the report was written


class _OpeningTracker:
    """The study's MLflow invocation, opened in a background thread; :meth:`get` waits for it and
    raises what opening it raised, in the thread that needs it."""

    def __init__(self, args, run) -> None:
        self.uri: str | None = None
        self._tracker = None
        self._lock = threading.Lock()  # the driver and the sync thread may both ask
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mlflow-open")
        self._future: Future = self._pool.submit(_open, args, run)

    def get(self):
        with self._lock:
            if self._tracker is None:
                if self._future.exception() is None:  # after a failed opening, no report
                    self._pool.submit(_import_report)  # next, on the same thread
                self._pool.shutdown(wait=False)  # the thread ends with it
                uri, tracker, killed = self._future.result()
                if killed:  # we hold the study's lock: their drivers are gone
                    stale = f"{killed} invocation(s) left RUNNING by a stopped driver"
                    print(f"marked {stale} as KILLED in MLflow")
                self.uri, self._tracker = uri, tracker
            return self._tracker

    def __getstate__(self) -> dict:
        """Tune pickles its callbacks (ours reach this) into the experiment's state: the state
        holds no thread, and a restored copy opens nothing (the driver that restores opens its own)."""
        return {"uri": self.uri, "_tracker": None, "_future": None, "_lock": None, "_pool": None}

    def get_quietly(self):
        """The tracker, or None when opening it failed (its error is not the one to report)."""
        try:
            return self.get()
        except Exception:
            return None


def _import_report() -> None:
    """The report's modules (matplotlib, pandas: ~1 s of CPU), imported once the store is open and
    the first job has been let run, rather than after the last trial: while that job sets itself
    up on one core, not while its worker imports torch beside Ray's start and the driver's own
    imports (measured on 2 cores: those ~4 s are bound by CPU). An import that fails here is left
    for the report to raise."""
    with contextlib.suppress(Exception):
        import reports.study_report  # noqa: F401


def _open(args, run) -> tuple:
    from harness.tracking.tracker import Tracker, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri, args.runs_root.resolve())
    tracker = Tracker(uri, run.spec.name)
    killed = tracker.end_stale_invocations()
    tracker.start_invocation(run.spec.model_dump(mode="json"), {"git_commit": git_commit(), **versions()})
    return uri, tracker, killed


def _track(args, run, dispatcher) -> int:
    """The study's MLflow invocation around its trials, their sync and the report; the exit code."""
    from harness.run.ledger import Ledger
    from harness.runner import execute

    opening = _OpeningTracker(args, run)
    syncing = _Syncing(opening, Ledger(run.study_dir))

    try:
        records = execute(
            run,
            address=args.address,
            dispatcher=dispatcher,
            on_complete=syncing.request,
            on_start=opening.get,  # the store open before any training or trial runs
        )
        tracker = opening.get()  # also when nothing was dispatched (every trial finished)
        syncing.finish()  # an unwritable store met by a sync: raised here, not wrapped by Tune
        tracker.sync(syncing.ledger.records())
        report = write_study_report(run, opening.uri)
        log_report(tracker, report)
    except BaseException as err:
        syncing.stop()
        tracker = opening.get_quietly()
        if tracker is not None:
            _end_quietly(tracker, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    tracker.end_invocation("FINISHED")
    total = max(len(records), len(run.plan.trials))
    print(f"{sum(r.status == 'finished' for r in records)}/{total} trials finished")
    print(f"report: {report.markdown} and {report.html}")
    print(f"MLflow store: {opening.uri}  (view: mlflow ui --backend-store-uri {opening.uri})")
    return _trial_failures(run, records)


class _Syncing:
    """The ledger synced into MLflow after each finished trial, in a thread of its own: Tune starts
    the next trial without waiting for it (~40 ms a trial, more as the ledger grows). A request
    made while a sync waits to start is served by that sync (each reads the whole ledger). The
    first error is held and raised by :meth:`finish`; after it no sync is tried (an OSError: the
    store cannot be written, exit 5 naming the path)."""

    def __init__(self, opening: _OpeningTracker, ledger) -> None:
        self.opening, self.ledger = opening, ledger
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mlflow-sync")
        self._queued: Future | None = None
        self._lock = threading.Lock()
        self._error: BaseException | None = None

    def __getstate__(self) -> dict:
        """Tune pickles its callbacks (``request`` among them): no thread or lock in the state."""
        return {"opening": self.opening, "ledger": self.ledger}

    def request(self) -> None:
        with self._lock:
            if self._queued is not None and not (self._queued.running() or self._queued.done()):
                return  # not started yet: it will read this trial's record too
            self._queued = self._pool.submit(self._sync)

    def _sync(self) -> None:
        if self._error is not None:
            return
        try:
            self.opening.get().sync(self.ledger.records())
        except BaseException as err:
            self._error = err

    def finish(self) -> None:
        """Waits for the requested syncs; raises the first error one met."""
        self._pool.shutdown(wait=True)
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """On an error: the sync under way finishes, queued ones are dropped, nothing is raised."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def git_commit() -> str:
    head = Path(__file__).resolve().parents[1] / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (head.parent / ref[5:]).read_text().strip()
        return ref
    except OSError:
        return "unknown"


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("torch", "ray", "mlflow", "torch-fidelity", "clean-fid", "unmask"):
        try:
            out[f"version.{package}"] = version(package)
        except PackageNotFoundError:
            out[f"version.{package}"] = "missing"
    return out


def write_study_report(run, uri: str):
    """report.md / report.html from the study's MLflow runs."""
    from harness.config.study import metric_mode
    from reports.study_report import write_report

    spec = run.spec
    title = spec.description or spec.name
    reference = spec.reference_data or None
    mode = metric_mode(spec)
    return write_report(
        uri, spec.name, run.study_dir, title, spec.metric, mode, reference, spec.compare_front
    )


def log_report(tracker, report) -> None:
    """The report, its page and its figures as artifacts of the tracker's parent run."""
    tracker.log_parent_artifact(report.markdown)
    tracker.log_parent_artifact(report.html)
    files = report.markdown.parent / "report_files"
    if files.is_dir():
        tracker.log_parent_artifact(files, "report_files")


def _end_quietly(tracker, status: str) -> None:
    """Ends the parent run while an error propagates: a store that fails here must not hide it."""
    try:
        tracker.end_invocation(status)
    except Exception as err:
        print(f"note: the parent run stays RUNNING ({err}); the next run marks it KILLED", file=sys.stderr)


def _trial_failures(run, records: list) -> int:
    """0 when every planned trial finished; else says how many did not, and where their errors are."""
    failed = [r for r in records if r.status != "finished"]
    missing = max(len(run.plan.trials) - len(records), 0)  # a worker that died before its record
    if not failed and not missing:
        return 0
    lines = [f"error: {len(failed) + missing} of {max(len(records), len(run.plan.trials))} trials failed"]
    if failed:
        lines.append(f"  {len(failed)} with a ledger record (its 'error' field; MLflow tag unmask.error):")
        lines += [f"    {run.study_dir / 'ledger' / f'{r.trial_hash}.json'}" for r in failed[:10]]
        lines += [f"    ... and {len(failed) - 10} more"] if len(failed) > 10 else []
    if missing:
        lines.append(f"  {missing} without one (its worker died): see error.txt in {run.study_dir / 'ray'}")
    print("\n".join(lines), file=sys.stderr)
    return EXIT_TRIALS_FAILED
