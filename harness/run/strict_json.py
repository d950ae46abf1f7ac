"""Strict JSON: a NaN or an infinity is never a result. Torch-free, for the reports too."""

from __future__ import annotations

import json
import math
from typing import Any


def strict_loads(text: str) -> Any:
    """``json.loads`` that refuses NaN, Infinity and -Infinity (which Python's json accepts)."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} in JSON: a non-finite number is never a result")

    return json.loads(text, parse_constant=refuse)


def nonfinite_fields(value: Any, path: str = "") -> list[str]:
    """``path = value`` for every NaN or infinite float in a JSON-like value (dicts, lists, tuples)."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [f"{path} = {value}"]
    if isinstance(value, dict):
        prefix = f"{path}." if path else ""
        return [bad for k, v in value.items() for bad in nonfinite_fields(v, f"{prefix}{k}")]
    if isinstance(value, list | tuple):
        return [bad for i, v in enumerate(value) for bad in nonfinite_fields(v, f"{path}[{i}]")]
    return []
