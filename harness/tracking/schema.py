"""What a study looks like in MLflow: the names and the one query shared by the writer
(``harness.tracking.tracker``) and the reader (``reports.mlflow_source``). Imports nothing of the
harness (and no torch), so that reports can import it.

- experiment ``unmask/<study>``; a parent run per invocation (tag role=invocation, with the git
  commit and library versions as tags and ``study_config.yaml`` as an artifact); a child run per
  trial (tag role=trial).
- child params: the resolved config, flattened to dotted keys.
- child metrics: every final metric, ``<metric>_ci_low`` / ``<metric>_ci_high`` when it has a
  confidence interval, and the training curve under ``train/`` as step metrics.
- child tags: trial and training hashes, status, attempts, seconds, host, and per metric
  ``unmask.protocol.<metric>`` = the protocol as JSON (with its ``key`` and ``direction``, and
  over several sample seeds ``per_seed``: the value of each; ``harness.run.ledger.PER_SEED``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

EXPERIMENT_PREFIX = "unmask/"
TAG_ROLE = "unmask.role"
TAG_STUDY = "unmask.study"
TAG_TRIAL_HASH = "unmask.trial_hash"
TAG_TRAINING_HASH = "unmask.training_hash"
TAG_STATUS = "unmask.status"
TAG_ERROR = "unmask.error"
TAG_ATTEMPTS = "unmask.attempts"
TAG_SECONDS = "unmask.seconds"
TAG_HOST = "unmask.host"
TAG_RECORD = "unmask.record"  # a digest of the ledger record the run holds (a re-run trial differs)
TAG_PROTOCOL_PREFIX = "unmask.protocol."
PER_SEED = "per_seed"  # harness.run.ledger.PER_SEED, for readers that must not import torch
TAG_GIT_COMMIT = "git_commit"
CURVE_PREFIX = "train/"
CI_LOW, CI_HIGH = "_ci_low", "_ci_high"
ROLE_TRIAL, ROLE_INVOCATION = "trial", "invocation"
STUDY_CONFIG_ARTIFACT = "study_config.yaml"
SAMPLES_PNG = "samples_png"


def experiment_name(study_name: str) -> str:
    """The MLflow experiment name of a study."""
    return f"{EXPERIMENT_PREFIX}{study_name}"


def trial_runs(client: Any, experiment_id: str, page_size: int = 1000) -> Iterator[Any]:
    """Every active run of the experiment that carries a trial hash, page by page."""
    from mlflow.entities import ViewType

    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{TAG_TRIAL_HASH}` IS NOT NULL",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=page_size,
            page_token=token,
        )
        yield from page
        token = page.token
        if not token:
            return
