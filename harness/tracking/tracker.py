"""MLflow tracking: the only module that writes to MLflow (names in ``harness.tracking.schema``).

One MLflow experiment per study (``unmask/<study_name>``); one parent run per invocation of the
study (run or resume); one child run per trial, created from the ledger by :meth:`Tracker.sync`.

Exactly once: a trial is logged when its child run (tag ``unmask.trial_hash``) is FINISHED holding
this record (``unmask.record``, its digest: a re-run trial updates the run), or FAILED with the same
attempt count. The check
reads the store, not the process, so it survives the driver being killed and the study resumed.
A trial has one child run, ever: a run left RUNNING by a killed sync, or a FAILED run whose trial
was retried, is filled in again rather than joined by a second one. The caller holds the study's
lock (``harness.run.lock``), so no other driver syncs the same study meanwhile.

A SQLite store is created under a file lock beside the database (two drivers creating one store at
once would both run its migrations), as a copy of an empty store migrated once per MLflow version
and kept in the cache (MLflow's migrations cost ~2 s per new store: every fresh runs root). A
SQLite store that cannot be written (disk full, read-only) raises an OSError naming the database
file, as a failed file write would (harness.tracking.sqlite_store).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import (
    MAX_ENTITY_KEY_LENGTH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from harness.run.ledger import TrialRecord
from harness.tracking.schema import (
    CI_HIGH,
    CI_LOW,
    CURVE_PREFIX,
    ROLE_INVOCATION,
    ROLE_TRIAL,
    STUDY_CONFIG_ARTIFACT,
    TAG_ATTEMPTS,
    TAG_ERROR,
    TAG_HOST,
    TAG_PROTOCOL_PREFIX,
    TAG_RECORD,
    TAG_ROLE,
    TAG_SECONDS,
    TAG_STATUS,
    TAG_STUDY,
    TAG_TRAINING_HASH,
    TAG_TRIAL_HASH,
    experiment_name,
    protocol_tags,
    trial_runs,
)
from harness.tracking.sqlite_store import artifact_location, connect, store_faults

ERROR_TAG_CHARS = min(4000, MAX_TAG_VAL_LENGTH)
_RUN_STATUS = {"finished": "FINISHED", "failed": "FAILED"}


def resolve_tracking_uri(cli_uri: str | None, runs_root: Path) -> str:
    """The tracking URI: the CLI value, else ``$MLFLOW_TRACKING_URI``, else SQLite under runs_root."""
    if cli_uri:
        return cli_uri
    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if env_uri:
        return env_uri
    root = Path(runs_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root}/mlflow.db"


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {dotted key: leaf value}; an empty dict is kept as a leaf."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, prefix=f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _store_faults(method):
    """Runs a Tracker method under :func:`store_faults` for its store."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with store_faults(self.tracking_uri):
            return method(self, *args, **kwargs)

    return wrapper


def _experiment_id(client: MlflowClient, tracking_uri: str, name: str, create: bool) -> str | None:
    """The id of the named experiment, created when missing (if create)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage != "active":
            raise RuntimeError(f"MLflow experiment {name!r} is deleted; restore or purge it first")
        return experiment.experiment_id
    if not create:
        return None
    return client.create_experiment(name, artifact_location=artifact_location(tracking_uri))


def _is_logged(record: TrialRecord, runs: list[Run], digest: str) -> bool:
    """Whether one of the runs of this trial already holds the record's result (``digest``: the
    record's, computed once by the caller)."""
    for run in runs:
        if run.info.status == "FINISHED":  # a finished result is final, unless the ledger's was
            held = run.data.tags.get(TAG_RECORD)  # superseded (damaged samples: the trial re-ran)
            if held is not None and held != digest:
                return False
            # or a protocol is missing: versions before protocol_tags dropped a long one (a
            # finished run's parts are all there: they are written before it is terminated)
            return all(f"{TAG_PROTOCOL_PREFIX}{name}" in run.data.tags for name in record.protocols)
        same_attempt = run.data.tags.get(TAG_ATTEMPTS) == str(record.attempts)
        if run.info.status == "FAILED" and record.status == "failed" and same_attempt:
            return True
    return False


def _metrics_to_add(metrics: list[Metric], held: dict[str, float]) -> list[Metric]:
    """What a run holding ``held`` (each key's latest value) lacks: a key whose latest entry already
    has that value is left out, a changed one is logged whole (its later timestamp wins)."""
    latest: dict[str, Metric] = {}
    for m in metrics:
        if m.key not in latest or m.step >= latest[m.key].step:
            latest[m.key] = m
    return [m for m in metrics if held.get(m.key) != latest[m.key].value]


def _metric_entities(record: TrialRecord, timestamp: int) -> list[Metric]:
    """Final metrics, interval bounds, and the training curve as step metrics."""
    metrics = [Metric(name, float(value), timestamp, 0) for name, value in _numeric(record.metrics)]
    for name, bounds in record.intervals.items():
        if bounds is not None and len(bounds) == 2:
            low, high = bounds
            metrics.append(Metric(f"{name}{CI_LOW}", float(low), timestamp, 0))
            metrics.append(Metric(f"{name}{CI_HIGH}", float(high), timestamp, 0))
    for step, values in record.training_curve:
        for name, value in _numeric(values):
            key = name if name.startswith(CURVE_PREFIX) else f"{CURVE_PREFIX}{name}"
            metrics.append(Metric(key, float(value), timestamp, int(step)))
    return metrics


def _numeric(values: dict[str, Any]) -> list[tuple[str, float]]:
    """The (name, value) pairs whose value is a real number (bools and None are left out)."""
    return [
        (name, value)
        for name, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]


def _param_entities(config: dict[str, Any]) -> list[Param]:
    """The flattened config as params, keys and values cut to MLflow's limits."""
    flat = flatten_config(config)
    return [
        Param(key[:MAX_ENTITY_KEY_LENGTH], str(value)[:MAX_PARAM_VAL_LENGTH])
        for key, value in sorted(flat.items())
    ]


def _trial_tags(record: TrialRecord, parent_run_id: str) -> dict[str, str]:
    """Tags set when the child run is created (the trial hash first, so a crash leaves it findable)."""
    tags = {
        MLFLOW_PARENT_RUN_ID: parent_run_id,
        TAG_ROLE: ROLE_TRIAL,
        TAG_TRIAL_HASH: record.trial_hash,
        TAG_TRAINING_HASH: record.training_hash,
        TAG_STATUS: record.status,
        TAG_ATTEMPTS: str(record.attempts),
        TAG_SECONDS: f"{record.seconds:.3f}",
        TAG_RECORD: record.digest(),
    }
    if record.error:
        tags[TAG_ERROR] = record.error[:ERROR_TAG_CHARS]
    if record.host:
        tags[TAG_HOST] = record.host
    tags.update(protocol_tags(record.protocols, MAX_TAG_VAL_LENGTH))
    return tags


def _artifact_path(path: str, base_dir: Path | None) -> Path:
    """A record's artifact path; a relative one is read against base_dir when given."""
    candidate = Path(path)
    if not candidate.is_absolute() and base_dir is not None:
        candidate = Path(base_dir) / candidate
    return candidate


class Tracker:
    """Logs one study to MLflow: a parent run per invocation and a child run per trial."""

    def __init__(self, tracking_uri: str, study_name: str) -> None:
        self.tracking_uri = tracking_uri
        self.study_name = study_name
        with store_faults(tracking_uri):
            self.client = connect(tracking_uri)
            experiment_id = _experiment_id(
                self.client, tracking_uri, experiment_name(study_name), create=True
            )
        assert experiment_id is not None
        self.experiment_id: str = experiment_id
        self.parent_run_id: str | None = None
        # What sync knows of the trials' child runs, read once per invocation: the driver holds
        # the study's lock, so no one else logs them meanwhile (searching them all again after
        # each trial grew with the study: 0.1 s a sync at 120 trials).
        self._runs: dict[str, list[Run]] | None = None  # trial hash -> its runs, as first read
        self._held: dict[str, tuple[str, str]] = {}  # trial hash -> (run id, digest) known logged

    @_store_faults
    def end_stale_invocations(self) -> int:
        """Marks KILLED the study's parent runs still RUNNING; returns how many.

        Only the holder of the study's lock may call this: no other driver of the study is alive,
        so a RUNNING parent run belongs to an invocation that was killed before it could end it.
        """
        running = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG_ROLE}` = '{ROLE_INVOCATION}' and attributes.status = 'RUNNING'",
            max_results=1000,
        )
        stale = [run.info.run_id for run in running if run.info.run_id != self.parent_run_id]
        for run_id in stale:
            self.client.set_terminated(run_id, status="KILLED")
        return len(stale)

    @_store_faults
    def start_invocation(self, study_config: dict, tags: dict[str, str]) -> str:
        """Start the parent run of this run/resume, log the study config and tags; return its id."""
        if self.parent_run_id is not None:
            raise RuntimeError(f"invocation {self.parent_run_id} is still open; end it first")
        self._runs, self._held = None, {}
        run_tags = {
            **{k: str(v) for k, v in tags.items()},
            TAG_ROLE: ROLE_INVOCATION,
            TAG_STUDY: self.study_name,
        }
        run = self.client.create_run(
            self.experiment_id, tags=run_tags, run_name=f"{self.study_name}-invocation"
        )
        self.parent_run_id = run.info.run_id
        text = yaml.safe_dump(study_config, sort_keys=False)
        self.client.log_text(self.parent_run_id, text, STUDY_CONFIG_ARTIFACT)
        return self.parent_run_id

    @_store_faults
    def end_invocation(self, status: str = "FINISHED") -> None:
        """End the parent run (FINISHED, FAILED or KILLED)."""
        if self.parent_run_id is None:
            return
        self.client.set_terminated(self.parent_run_id, status=status)
        self.parent_run_id = None

    @_store_faults
    def log_parent_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Attach a file or a folder (a report, its figures) to the parent run."""
        if Path(path).is_dir():
            self.client.log_artifacts(self._require_parent(), str(path), artifact_path)
        else:
            self.client.log_artifact(self._require_parent(), str(path), artifact_path)

    @_store_faults
    def reopen_latest_invocation(self) -> bool:
        """Make the latest (finished) parent run the target of log_parent_artifact; False if none."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG_ROLE}` = '{ROLE_INVOCATION}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        self.parent_run_id = runs[0].info.run_id if runs else None
        return self.parent_run_id is not None

    @_store_faults
    def sync(self, records: list[TrialRecord], base_dir: Path | None = None) -> int:
        """Log every record not yet in MLflow in its trial's child run; return how many were logged.
        The trials' runs are read from MLflow by the invocation's first sync (and after a sync that
        failed); later syncs go by what this invocation read and logged since.

        base_dir: where relative paths in ``record.artifacts`` are read from (default: the cwd).
        """
        parent_run_id = self._require_parent()
        if self._runs is None:
            self._runs = {}
            for run in trial_runs(self.client, self.experiment_id):  # every invocation's child runs
                self._runs.setdefault(run.data.tags[TAG_TRIAL_HASH], []).append(run)
        logged_now: set[str] = set()
        try:
            for record in records:
                trial_hash, digest = record.trial_hash, record.digest()
                held = self._held.get(trial_hash)
                if trial_hash in logged_now or (held is not None and held[1] == digest):
                    continue
                if held is not None:  # a record that replaced one logged in this invocation
                    runs = [self.client.get_run(held[0])]
                else:
                    runs = sorted(self._runs.get(trial_hash, []), key=lambda r: r.info.start_time)
                if _is_logged(record, runs, digest):
                    self._held[trial_hash] = (runs[-1].info.run_id, digest)
                    continue
                for stale in (r for r in runs[:-1] if r.info.status == "RUNNING"):  # older versions
                    self.client.set_terminated(stale.info.run_id, status="KILLED")
                run_id = self._log_trial(record, parent_run_id, base_dir, runs[-1] if runs else None)
                self._held[trial_hash] = (run_id, digest)
                logged_now.add(trial_hash)
        except BaseException:
            self._runs, self._held = None, {}  # a half-logged run: the next sync reads them all again
            raise
        return len(logged_now)

    def _require_parent(self) -> str:
        if self.parent_run_id is None:
            raise RuntimeError("no open invocation: call start_invocation() first")
        return self.parent_run_id

    def _log_trial(
        self, record: TrialRecord, parent_run_id: str, base_dir: Path | None, earlier: Run | None
    ) -> str:
        """Fill and terminate the trial's child run: ``earlier`` (a run of the trial that does not
        hold this record: half-logged, or an earlier failed attempt) or else a new one. A run whose
        logging fails is left KILLED, never FAILED, and is filled in again by the next sync."""
        tags = _trial_tags(record, parent_run_id)
        metrics = _metric_entities(record, int(time.time() * 1000))
        params = _param_entities(record.config)
        if earlier is None:
            run_tags = []
            run = self.client.create_run(
                self.experiment_id, tags=tags, run_name=f"trial-{record.trial_hash[:12]}"
            )
            run_id = run.info.run_id
        else:
            run_tags = [RunTag(key, value) for key, value in tags.items()]
            run_id = earlier.info.run_id
            self.client.update_run(run_id, status="RUNNING")
            # log_batch writes all of a batch or nothing: what the run has came from one batch
            # (a half-logged run), or from a record the ledger has since replaced
            metrics = _metrics_to_add(metrics, earlier.data.metrics)
            params = [p for p in params if p.key not in earlier.data.params]  # one config per trial
            if TAG_ERROR in earlier.data.tags and TAG_ERROR not in tags:
                self.client.delete_tag(run_id, TAG_ERROR)
        try:
            # MLflow takes 100 params and tags a batch: the tags beyond that (a long protocol's
            # parts) go first; the run counts as logged only once terminated FINISHED
            room = max(0, MAX_PARAMS_TAGS_PER_BATCH - len(params))
            while len(run_tags) > room:
                extra, run_tags = run_tags[:MAX_PARAMS_TAGS_PER_BATCH], run_tags[MAX_PARAMS_TAGS_PER_BATCH:]
                self.client.log_batch(run_id, tags=extra, synchronous=True)
            self.client.log_batch(run_id, metrics=metrics, params=params, tags=run_tags, synchronous=True)
            self._log_trial_artifacts(run_id, record, base_dir)
        except BaseException:
            with contextlib.suppress(Exception):  # a store that fails here hides nothing of the first error
                self.client.set_terminated(run_id, status="KILLED")
            raise
        self.client.set_terminated(run_id, status=_RUN_STATUS.get(record.status, "FAILED"))
        return run_id

    def _log_trial_artifacts(self, run_id: str, record: TrialRecord, base_dir: Path | None) -> None:
        """The resolved config (YAML), the protocols (JSON) and every artifact file that exists."""
        self.client.log_text(run_id, yaml.safe_dump(record.config, sort_keys=False), "config.yaml")
        self.client.log_text(run_id, json.dumps(record.protocols, indent=2, sort_keys=True), "protocol.json")
        for name, path in sorted(record.artifacts.items()):
            local = _artifact_path(path, base_dir)
            if local.is_file():
                self.client.log_artifact(run_id, str(local), artifact_path=name)
