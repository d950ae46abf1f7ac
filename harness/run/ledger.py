"""The study ledger: one JSON record per trial, keyed by the hash of its full config.

Each record is written atomically by whoever finishes the trial (a worker on any node, if
the study folder is shared), so a result survives the driver being killed right after.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.cache import atomic_write_text

STATUSES = ("finished", "failed")


@dataclass(frozen=True)
class TrialRecord:
    """What one trial produced.

    metrics: final metric values (name -> value); protocols: name -> protocol dict;
    intervals: name -> [low, high] where an uncertainty estimate exists;
    training_curve: [(step, {metric: value})]; artifacts: name -> path;
    host: where it ran (``<hostname>/<Ray node id>`` under Ray, the hostname otherwise).
    """

    trial_hash: str
    training_hash: str
    status: str
    config: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    protocols: dict[str, dict] = field(default_factory=dict)
    intervals: dict[str, list[float]] = field(default_factory=dict)
    training_curve: list = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    attempts: int = 1
    host: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialRecord:
        return cls(**d)


class Ledger:
    """``<study_dir>/ledger/<trial_hash>.json``; a finished record is never overwritten."""

    def __init__(self, study_dir: str | Path) -> None:
        self.root = Path(study_dir) / "ledger"

    def path(self, trial_hash: str) -> Path:
        return self.root / f"{trial_hash}.json"

    def get(self, trial_hash: str) -> TrialRecord | None:
        path = self.path(trial_hash)
        if not path.is_file():
            return None
        return TrialRecord.from_dict(json.loads(path.read_text()))

    def write(self, record: TrialRecord) -> None:
        if record.status not in STATUSES:
            raise ValueError(f"record status {record.status!r}; expected one of {STATUSES}")
        existing = self.get(record.trial_hash)
        if existing is not None and existing.status == "finished":
            return  # exactly once: a finished result is final
        if existing is not None:
            record = TrialRecord.from_dict(
                {**json.loads(record.to_json()), "attempts": existing.attempts + 1}
            )
        atomic_write_text(self.path(record.trial_hash), record.to_json())

    def records(self) -> list[TrialRecord]:
        if not self.root.is_dir():
            return []
        return [TrialRecord.from_dict(json.loads(p.read_text())) for p in sorted(self.root.glob("*.json"))]

    def finished(self) -> set[str]:
        return {r.trial_hash for r in self.records() if r.status == "finished"}
