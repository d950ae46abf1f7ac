"""Which rows of a study's table are results that may be compared, for one metric.

A row is a result when its metric, both ends of its interval (where it has one) and every
per-seed value are finite: a NaN or an infinity is a broken run, never evidence. Only model rows
are compared (a data baseline has ``nfe = 0``, as in ``reports.figures``), and only rows of one
protocol key (two FIDs of different sample counts or reference sets measure different things).

The rule for the protocol key: when the metric's rows carry several, the study's main evaluation
is the key most rows carry; a tie goes to the larger ``num_samples``, then to the key's name; rows
without a recorded protocol come last (``reports.markdown.protocols_by_use``, which the report's
tables and figures follow too).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import pandas as pd

from harness.tracking.schema import CI_HIGH, CI_LOW, PER_SEED
from reports.figures import NFE
from reports.markdown import protocols_by_use

PROTOCOL = "protocol"


def protocol_entry(row: pd.Series, metric: str) -> dict[str, Any]:
    """The row's protocol of the metric (empty when it recorded none)."""
    protocols = row.get(PROTOCOL)
    entry = protocols.get(metric) if isinstance(protocols, dict) else None
    return entry if isinstance(entry, dict) else {}


def protocol_key(row: pd.Series, metric: str) -> str | None:
    return protocol_entry(row, metric).get("key")


def _finite(value: Any) -> bool:
    return _kind(value) == "number" and math.isfinite(value)


def is_result(row: pd.Series, metric: str) -> bool:
    """The metric finite; the interval absent (both ends missing) or both ends finite; every
    per-seed value finite."""
    if not _finite(row.get(metric)):
        return False
    bounds = [row.get(f"{metric}{CI_LOW}"), row.get(f"{metric}{CI_HIGH}")]
    missing = [b is None or (isinstance(b, float) and math.isnan(b)) for b in bounds]
    if not all(missing) and not all(_finite(b) for b in bounds):
        return False
    per_seed = protocol_entry(row, metric).get(PER_SEED) or []
    return all(_finite(v) for v in per_seed)


def results(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The rows that are results of the metric (none when no row has the metric)."""
    if metric not in table or table.empty:
        return table[:0]
    return table[table.apply(lambda row: is_result(row, metric), axis=1).astype(bool)]


def model_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a model: a data baseline (no network call, ``nfe = 0``) is none."""
    return table[table[NFE] != 0] if NFE in table else table


def main_key(table: pd.DataFrame, metric: str) -> tuple[str | None, int]:
    """The protocol key of the study's main evaluation of the metric, and how many keys its rows
    carry (``reports.markdown.protocols_by_use``: the rule the tables and figures follow too)."""
    order = protocols_by_use(protocol_entry(row, metric) for _, row in table.iterrows())
    return (order[0] if order else None), len(order)


def comparable(table: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, str]:
    """The model rows that are results of the metric, of the main protocol key; and a note naming
    the key when the rows carried several (empty otherwise)."""
    rows = model_rows(results(table, metric))
    key, count = main_key(rows, metric)
    if count <= 1:
        return rows, ""
    kept = keep(rows, [protocol_key(row, metric) == key for _, row in rows.iterrows()])
    note = f"protocol key {key}: {len(kept)} of {len(rows)} trials ({count - 1} other key(s) left out)"
    return kept, note


def _kind(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "bool"
    return "number" if isinstance(value, numbers.Real) else "other"


def same(value: Any, wanted: Any) -> bool:
    """Numbers compared as numbers (4.0 is 4), booleans as booleans, anything else as text."""
    kind = _kind(value)
    if kind != _kind(wanted):
        return False
    if kind == "number":
        return float(value) == float(wanted)
    if kind == "bool":
        return bool(value) == bool(wanted)
    return str(value) == str(wanted)


def keep(table: pd.DataFrame, mask: list[bool]) -> pd.DataFrame:
    """The rows where ``mask`` is true, keeping every column (``table[[]]`` would select no
    column of an empty table, not no row)."""
    return table.loc[np.asarray(mask, dtype=bool)]


def select(table: pd.DataFrame, where: dict[str, Any]) -> pd.DataFrame:
    """The rows whose settings equal ``where``'s (none when a key is not a column)."""
    for key, wanted in where.items():
        if key not in table:
            return table[:0]
        table = keep(table, [same(v, wanted) for v in table[key]])
    return table
