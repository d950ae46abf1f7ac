"""Every number carries its protocol: what was measured, against what, with which network.

Two FIDs are comparable only when they share the extractor (and its weights), the reference
set, the sample count N, the resize rule and the metric settings. ``Protocol.protocol_key()``
is equal exactly when those agree, so a report can group columns by it and never mix numbers
of different protocols. The sample seeds and the uncertainty method are recorded but left out
of the key: values from different seeds estimate the same quantity.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

# Fields recorded for provenance but left out of the comparability key.
_NOT_IN_KEY = ("sample_seeds", "uncertainty")


@dataclass(frozen=True)
class Protocol:
    """How one metric value was measured.

    metric: metric key (e.g. ``"fid"``); extractor / extractor_sha256: feature network and the
    sha256 of its weights; reference / reference_sha256: reference set name (``"digits/train"``)
    and the hash of its pixels; num_reference / num_samples: set sizes; resize_rule: how samples
    reach the extractor's input size; dtype: feature dtype and statistics dtype; library: who
    computed the metric and its version; options: metric settings as sorted (name, value) pairs.
    """

    metric: str
    extractor: str
    extractor_sha256: str
    reference: str
    reference_sha256: str
    num_reference: int
    num_samples: int
    resize_rule: str
    dtype: str
    library: str
    options: tuple[tuple[str, Any], ...] = ()
    sample_seeds: tuple[int, ...] = ()
    uncertainty: str = "none"

    def to_dict(self) -> dict[str, Any]:
        """A flat, JSON-able dict for logging (options become ``option.<name>`` entries)."""
        out = {k: v for k, v in asdict(self).items() if k != "options"}
        out["sample_seeds"] = list(self.sample_seeds)
        out.update({f"option.{k}": v for k, v in self.options})
        return out

    def protocol_key(self) -> str:
        """A stable, readable key: ``metric/extractor/reference/N<n>/<hash of everything else>``.

        Equal for two protocols exactly when every field except the sample seeds and the
        uncertainty method agrees.
        """
        fields = {k: v for k, v in self.to_dict().items() if k not in _NOT_IN_KEY}
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
        reference = self.reference.replace("/", "-")
        return f"{self.metric}/{self.extractor}/{reference}/N{self.num_samples}/{digest}"


@dataclass(frozen=True)
class MetricResult:
    """One metric value with its protocol; ci_low / ci_high bound a 95% interval when known.

    per_set: the values behind the interval (one per sample set, or one per bootstrap resample).
    """

    name: str
    value: float
    higher_is_better: bool
    protocol: Protocol
    ci_low: float | None = None
    ci_high: float | None = None
    per_set: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        numbers = {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high}
        numbers.update({f"per_set[{i}]": v for i, v in enumerate(self.per_set)})
        bad = [f"{k} = {v}" for k, v in numbers.items() if v is not None and not math.isfinite(v)]
        if bad:
            raise ValueError(f"{self.name}: non-finite {', '.join(bad)}; a NaN or infinity is not a result")

    def to_dict(self) -> dict[str, Any]:
        """Value, interval and the flattened protocol (``protocol.<field>``) plus its key."""
        out: dict[str, Any] = {
            "name": self.name,
            "value": self.value,
            "higher_is_better": self.higher_is_better,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "per_set": list(self.per_set),
            "protocol_key": self.protocol.protocol_key(),
        }
        out.update({f"protocol.{k}": v for k, v in self.protocol.to_dict().items()})
        return out
