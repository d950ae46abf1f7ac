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
  over several sample seeds ``per_seed``: the value of each; ``harness.run.ledger.PER_SEED``);
  a protocol longer than a tag's value (hundreds of seeds) goes on under
  ``unmask.protocol-part.<i>.<metric>``, i = 1, 2, ... (``protocol_tags`` / ``read_protocols``).
"""

from __future__ import annotations

import contextlib
import json
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
TAG_PROTOCOL_PART = "unmask.protocol-part."  # a long protocol's further parts: <i>.<metric>
PER_SEED = "per_seed"  # harness.run.ledger.PER_SEED, for readers that must not import torch
TAG_GIT_COMMIT = "git_commit"
CURVE_PREFIX = "train/"
CI_LOW, CI_HIGH = "_ci_low", "_ci_high"
ROLE_TRIAL, ROLE_INVOCATION = "trial", "invocation"
STUDY_CONFIG_ARTIFACT = "study_config.yaml"
SAMPLES_PNG = "samples_png"


def protocol_tags(protocols: dict[str, dict[str, Any]], limit: int) -> dict[str, str]:
    """Each metric's protocol as JSON in tags of at most ``limit`` characters: the whole of it under
    ``unmask.protocol.<metric>`` when it fits, else its first part there and the rest in order
    under ``unmask.protocol-part.<i>.<metric>`` (a protocol over hundreds of sample seeds holds a
    value per seed: 460 seeds take ~12,000 characters, beyond MLflow's 8,000 per tag)."""
    tags = {}
    for name, protocol in protocols.items():
        text = json.dumps(protocol, sort_keys=True)
        parts = [text[i : i + limit] for i in range(0, len(text), limit)]  # JSON is never empty
        tags[f"{TAG_PROTOCOL_PREFIX}{name}"] = parts[0]
        for i, part in enumerate(parts[1:], start=1):
            tags[f"{TAG_PROTOCOL_PART}{i}.{name}"] = part
    return tags


def read_protocols(tags: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The protocols ``protocol_tags`` wrote, each joined from its parts; one whose parts do not
    all parse (a run being logged) is left out."""
    protocols = {}
    for key, first in tags.items():
        if not key.startswith(TAG_PROTOCOL_PREFIX):
            continue
        name = key[len(TAG_PROTOCOL_PREFIX) :]
        parts, i = [first], 1
        while (part := tags.get(f"{TAG_PROTOCOL_PART}{i}.{name}")) is not None:
            parts.append(part)
            i += 1
        with contextlib.suppress(json.JSONDecodeError):
            protocols[name] = json.loads("".join(parts))
    return protocols


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
