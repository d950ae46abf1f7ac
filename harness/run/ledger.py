"""The study ledger: one JSON record per trial, keyed by the hash of its full config.

Each record is written atomically by whoever finishes the trial (a worker on any node, if
the study folder is shared), so a result survives the driver being killed right after. A record
that does not parse or validate (a truncated file, a foreign one) is moved to
``<study_dir>/quarantine/ledger/<name>.<UTC timestamp>`` with a warning, and its trial runs again.

Records are strict JSON: a NaN or an infinity is never a result, so a record holding one cannot
be built (the trial that produced it is recorded as failed, naming the value), is never
written, and a file holding one does not parse.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.cache import QUARANTINE, atomic_write_text, quarantine
from harness.run.strict_json import nonfinite_fields as nonfinite_fields
from harness.run.strict_json import strict_loads as strict_loads

STATUSES = ("finished", "failed")


PER_SEED = "per_seed"  # in a metric's protocol dict: its value per sample seed, in sample_seeds' order


@dataclass(frozen=True)
class TrialRecord:
    """What one trial produced.

    metrics: final metric values (name -> value); protocols: name -> protocol dict (over several
    sample seeds with ``PER_SEED``: the values behind the interval, for paired comparisons);
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

    def __post_init__(self) -> None:
        bad = nonfinite_fields(vars(self))
        if bad:
            raise ValueError(
                f"trial {self.trial_hash}: non-finite value(s) {', '.join(bad)}; "
                "a NaN or infinite number is never recorded as a result"
            )

    def to_json(self) -> str:
        """Strict JSON (no NaN / Infinity)."""
        return json.dumps(asdict(self), sort_keys=True, allow_nan=False)

    def digest(self) -> str:
        """A short sha256 of the record's JSON: tells one record of a trial from a later one."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialRecord:
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> TrialRecord:
        """The record in ``text``; ValueError says why it is not one (truncated JSON, a missing or
        unknown field, a field of the wrong type, an unknown status)."""
        try:
            d = strict_loads(text)
            record = cls(**d) if isinstance(d, dict) else None
        except TypeError as err:  # a missing or unknown field
            raise ValueError(str(err)) from err
        if record is None:
            raise ValueError(f"holds a JSON {type(d).__name__}, not an object")
        for name, kind in (("trial_hash", str), ("config", dict), ("metrics", dict), ("artifacts", dict)):
            if not isinstance(getattr(record, name), kind):
                raise ValueError(f"field {name!r} is not a {kind.__name__}")
        if record.status not in STATUSES:
            raise ValueError(f"status {record.status!r}; expected one of {STATUSES}")
        return record


class Ledger:
    """``<study_dir>/ledger/<trial_hash>.json``; a finished record is never overwritten."""

    def __init__(self, study_dir: str | Path, heal: bool = True) -> None:
        """``heal=False`` reads only: a damaged record counts as absent but stays where it is (a
        plan made by ``validate``, or before the driver holds the study's lock, moves nothing)."""
        self.root = Path(study_dir) / "ledger"
        self.heal = heal

    def path(self, trial_hash: str) -> Path:
        return self.root / f"{trial_hash}.json"

    def get(self, trial_hash: str) -> TrialRecord | None:
        """The trial's record; None when there is none, or it was damaged (and is quarantined now)."""
        return self._read(self.path(trial_hash))

    def _read(self, path: Path) -> TrialRecord | None:
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None
        try:
            record = TrialRecord.from_json(raw.decode())
            if record.trial_hash != path.stem:
                raise ValueError(f"holds trial {record.trial_hash!r}, not {path.stem!r}")
        except ValueError as err:  # UnicodeDecodeError and JSONDecodeError included
            if self.heal:
                quarantine(path, self.quarantine_folder, f"not a ledger record ({err})")
            return None
        return record

    @property
    def quarantine_folder(self) -> Path:
        """``<study_dir>/quarantine/ledger``: damaged or superseded records, kept, never read."""
        return self.root.parent / QUARANTINE / "ledger"

    def quarantine(self, trial_hash: str, reason: str) -> Path | None:
        """Moves the trial's record aside (its trial runs again); where it went, or None if absent."""
        return quarantine(self.path(trial_hash), self.quarantine_folder, reason)

    def write(self, record: TrialRecord) -> None:
        if record.status not in STATUSES:
            raise ValueError(f"record status {record.status!r}; expected one of {STATUSES}")
        existing = self.get(record.trial_hash)
        if existing is not None and existing.status == "finished":
            return  # exactly once: a finished result is final
        if existing is not None:
            record = TrialRecord.from_dict(
                {**strict_loads(record.to_json()), "attempts": existing.attempts + 1}
            )
        atomic_write_text(self.path(record.trial_hash), record.to_json())

    def records(self) -> list[TrialRecord]:
        if not self.root.is_dir():
            return []
        found = (self._read(p) for p in sorted(self.root.glob("*.json")))
        return [r for r in found if r is not None]

    def finished(self) -> set[str]:
        return {r.trial_hash for r in self.records() if r.status == "finished"}
