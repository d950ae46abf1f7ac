"""A study read back from MLflow: one tidy table with a row per trial, and the invocation's context.

The table has ``trial_hash``, ``status``, ``seconds``, one column per config key (dotted, values
parsed back from MLflow's strings), one per metric, ``<metric>_ci_low`` / ``_ci_high`` where an
interval was logged, and ``protocol`` (metric -> protocol dict, read from the trial's tags).
The layout is in ``harness.tracking.schema``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from mlflow import MlflowClient

from harness.run.strict_json import nonfinite_fields
from harness.tracking.schema import (
    CI_HIGH,
    CI_LOW,
    CURVE_PREFIX,
    ROLE_INVOCATION,
    STUDY_CONFIG_ARTIFACT,
    TAG_ATTEMPTS,
    TAG_ERROR,
    TAG_ROLE,
    TAG_SECONDS,
    TAG_STATUS,
    TAG_TRIAL_HASH,
    experiment_name,
    read_protocols,
    trial_runs,
)
from reports.markdown import one_per_cell


def _experiment_id(client: MlflowClient, study_name: str) -> str | None:
    experiment = client.get_experiment_by_name(experiment_name(study_name))
    return None if experiment is None or experiment.lifecycle_stage != "active" else experiment.experiment_id


def _latest_per_trial(runs: list) -> list:
    """One run per trial hash: its FINISHED run, else its latest FAILED one."""
    best: dict[str, Any] = {}
    # FINISHED sorts after FAILED, then later starts win: the last one seen per hash is kept.
    for run in sorted(runs, key=lambda r: (r.info.status == "FINISHED", r.info.start_time or 0)):
        best[run.data.tags[TAG_TRIAL_HASH]] = run
    return list(best.values())


def _terminated_runs(tracking_uri: str, study_name: str, latest_only: bool) -> list:
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = _experiment_id(client, study_name)
    if experiment_id is None:
        return []
    runs = [r for r in trial_runs(client, experiment_id) if r.info.status in ("FINISHED", "FAILED")]
    return _latest_per_trial(runs) if latest_only else runs


def study_runs(tracking_uri: str, study_name: str, latest_only: bool = True) -> pd.DataFrame:
    """The study's trial runs as MLflow shows them: ``params.*``, ``metrics.*`` and ``tags.*`` columns.

    latest_only: one row per trial hash; False gives every terminated trial run, earlier failed
    attempts included. KILLED (half-logged) runs never appear.
    """
    rows = []
    for run in _terminated_runs(tracking_uri, study_name, latest_only):
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "status": run.info.status,
            "start_time": run.info.start_time,
            "end_time": run.info.end_time,
        }
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def parse_param(text: str) -> Any:
    """An MLflow param string back to its value: numbers, booleans, None, lists; else the string."""
    if text == "None":  # how MLflow stores a Python None
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, int | float | bool | list | dict) or value is None else text


@dataclass
class StudyTable:
    """table: one row per trial; config_keys / metric_keys: which of its columns are which."""

    table: pd.DataFrame
    config_keys: list[str]
    metric_keys: list[str]


def study_table(tracking_uri: str, study_name: str) -> StudyTable:
    """The tidy table: one row per trial (its latest result), config keys and metrics as columns,
    plus trial_hash, run_id, status, seconds, attempts, error and protocol (metric -> dict); a cell
    measured again with more sample seeds appears once (``one_per_cell``)."""
    rows, config_keys, metric_keys = [], set(), set()
    for run in _terminated_runs(tracking_uri, study_name, latest_only=True):
        tags = run.data.tags
        row: dict[str, Any] = {
            "trial_hash": tags[TAG_TRIAL_HASH],
            "run_id": run.info.run_id,
            "status": tags.get(TAG_STATUS, run.info.status.lower()),
            "seconds": float(tags.get(TAG_SECONDS, "nan")),
            "attempts": int(tags.get(TAG_ATTEMPTS, "1")),
            "error": tags.get(TAG_ERROR),
        }
        params = {key: parse_param(value) for key, value in run.data.params.items()}
        metrics = {k: v for k, v in run.data.metrics.items() if not k.startswith(CURVE_PREFIX)}
        protocols = read_protocols(tags)
        if broken := _not_results(metrics, protocols):  # a store written by hand or by old code
            row.update(status="failed", error=f"not a result: {', '.join(broken[:3])}")
            metrics, protocols = {}, {}
        config_keys.update(params)
        metric_keys.update(k for k in metrics if not k.endswith((CI_LOW, CI_HIGH)))
        row.update(params)
        row.update(metrics)
        row["protocol"] = protocols
        rows.append(row)
    rows = one_per_cell(rows, lambda row: {k: row.get(k) for k in config_keys})
    return StudyTable(pd.DataFrame(rows), sorted(config_keys), sorted(metric_keys))


def _not_results(metrics: dict[str, float], protocols: dict[str, Any]) -> list[str]:
    """``name = value`` of each metric, interval bound or per-seed value that is not a finite
    number. MLflow keeps an infinity as +-1.797e308 (the largest float) and a NaN as NaN; the
    harness never logs either, so a run holding one is broken, and none of its numbers is a
    result."""
    largest = sys.float_info.max
    infinite = [f"{k} = {v}" for k, v in metrics.items() if not math.isfinite(v) or abs(v) >= largest]
    return infinite + nonfinite_fields(protocols, "protocol")


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """{dotted key: value} -> nested dicts (the inverse of flattening a config)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def records(study: StudyTable) -> list[dict]:
    """The table as ledger-shaped records (config, metrics, intervals, protocols) for the tables."""
    out = []
    for row in study.table.to_dict("records"):
        row = {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
        metrics = {k: row[k] for k in study.metric_keys if k in row}
        intervals = {
            k: [row[f"{k}{CI_LOW}"], row[f"{k}{CI_HIGH}"]]
            for k in metrics
            if f"{k}{CI_LOW}" in row and f"{k}{CI_HIGH}" in row
        }
        out.append(
            {
                "trial_hash": row["trial_hash"],
                "run_id": row["run_id"],
                "status": row["status"],
                "seconds": row.get("seconds", 0.0),
                "attempts": row["attempts"],
                "error": row.get("error"),
                "config": nested({k: row[k] for k in study.config_keys if k in row}),
                "metrics": metrics,
                "intervals": intervals,
                "protocols": row["protocol"],
                "artifacts": {},
            }
        )
    return out


@dataclass
class Invocation:
    """The latest invocation (parent run) of a study: its tags and the resolved study config."""

    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    study_config: dict[str, Any] = field(default_factory=dict)


def latest_invocation(tracking_uri: str, study_name: str) -> Invocation:
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = _experiment_id(client, study_name)
    if experiment_id is None:
        return Invocation()
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_ROLE}` = '{ROLE_INVOCATION}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return Invocation()
    run = runs[0]
    try:
        text = Path(client.download_artifacts(run.info.run_id, STUDY_CONFIG_ARTIFACT)).read_text()
        config = yaml.safe_load(text) or {}
    except Exception:  # an invocation killed before it logged its config
        config = {}
    return Invocation(run.info.run_id, dict(run.data.tags), config)


def artifact_file(tracking_uri: str, run_id: str, artifact_dir: str, dst: Path) -> Path | None:
    """The first file under a run's artifact folder (e.g. the sample grid), copied under dst."""
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        entries = client.list_artifacts(run_id, artifact_dir)
    except Exception:
        return None
    files = [e for e in entries if not e.is_dir]
    if not files:
        return None
    dst.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, files[0].path, str(dst)))
