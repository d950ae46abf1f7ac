"""Paper vs ours: the paper's reference numbers beside ours, and its qualitative findings checked.

A reference entry (``search_spaces/paper/reference.yaml``) has a ``source`` (which figure or
table, and whether the numbers were read off a plot), ``points`` (settings -> the paper's
value) and ``findings``, each a claim of one kind, checked on the study's finished trials:

- ``at_least_as_good``: the best trial with ``key = a`` is as good as the best with ``key = b``
  or better, up to the root-sum-square of their CI half-widths;
- ``interior_optimum``: for every method, the best value of ``axis`` lies strictly inside its
  grid (a U-shaped curve);
- ``gap_shrinks``: the advantage of ``key = better`` over the other value is positive at the
  smallest ``axis`` value and larger there than at the largest;
- ``improves_along`` / ``worsens_along``: among trials matching ``where``, the metric at the
  largest ``axis`` value is better / worse than at the smallest (worse: than the best on the
  axis), by more than the CIs.

Each point of a curve is the best trial at that value over the study's other settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from harness.tracking.schema import CI_HIGH, CI_LOW
from reports.figures import best_rows, direction, with_methods


@dataclass(frozen=True)
class Check:
    text: str
    holds: bool | None  # None: the study has not the trials to tell
    detail: str


def _half_width(row: pd.Series, metric: str) -> float:
    low, high = row.get(f"{metric}{CI_LOW}"), row.get(f"{metric}{CI_HIGH}")
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return 0.0
    return float(high - low) / 2


def _better(a: float, b: float, mode: str) -> bool:
    return a < b if mode == "min" else a > b


def _select(table: pd.DataFrame, where: dict[str, Any]) -> pd.DataFrame:
    for key, value in where.items():
        if key not in table:
            return table[:0]
        table = table[table[key].astype(str) == str(value)]
    return table


def _along(table: pd.DataFrame, axis: str, metric: str, mode: str) -> pd.DataFrame:
    """The best row per value of axis (over the other settings), sorted by axis."""
    if axis not in table or table[axis].nunique() < 2:
        return table[:0]
    return best_rows(table, [axis], metric, mode).sort_values(axis)


def check(table: pd.DataFrame, metric: str, finding: dict[str, Any]) -> Check:
    mode = direction(table, metric)
    kind, text = finding["kind"], finding.get("text", finding["kind"])
    rows = _select(table[table[metric].notna()], finding.get("where", {}))
    fmt = lambda v: f"{v:.4g}"  # noqa: E731
    if kind == "at_least_as_good":
        key = finding["key"]
        a = best_rows(_select(rows, {key: finding["a"]}), [key], metric, mode)
        b = best_rows(_select(rows, {key: finding["b"]}), [key], metric, mode)
        if a.empty or b.empty:
            return Check(text, None, f"needs trials with {key} = {finding['a']} and {finding['b']}")
        ra, rb = a.iloc[0], b.iloc[0]
        slack = math.hypot(_half_width(ra, metric), _half_width(rb, metric))
        sign = 1 if mode == "min" else -1
        holds = sign * (ra[metric] - rb[metric]) <= slack
        detail = f"best {finding['a']} {fmt(ra[metric])} vs best {finding['b']} {fmt(rb[metric])}"
        detail += f" (CI slack {fmt(slack)})"
        return Check(text, bool(holds), detail)
    if kind == "interior_optimum":
        axis = finding["axis"]
        rows, _ = with_methods(rows)
        parts, verdicts = [], []
        for method, group in rows.groupby("method"):
            curve = _along(group, axis, metric, mode)
            if len(curve) < 3:
                continue
            best = curve.loc[curve[metric].idxmin() if mode == "min" else curve[metric].idxmax()]
            interior = curve[axis].iloc[0] < best[axis] < curve[axis].iloc[-1]
            verdicts.append(interior)
            parts.append(f"{method}: best at {axis} = {best[axis]:g} ({fmt(best[metric])})")
        if not verdicts:
            return Check(text, None, f"needs 3 or more values of {axis}")
        return Check(text, all(verdicts), "; ".join(parts))
    if kind == "gap_shrinks":
        axis, key, better = finding["axis"], finding["key"], finding["better"]
        good = _along(_select(rows, {key: better}), axis, metric, mode).set_index(axis)[metric]
        other_rows = rows[rows[key].astype(str) != str(better)] if key in rows else rows[:0]
        other = _along(other_rows, axis, metric, mode).set_index(axis)[metric]
        shared = sorted(set(good.index) & set(other.index))
        if len(shared) < 2:
            return Check(text, None, f"needs both values of {key} at 2 or more values of {axis}")
        sign = 1 if mode == "min" else -1
        gap = {v: sign * (other[v] - good[v]) for v in shared}
        low, high = gap[shared[0]], gap[shared[-1]]
        detail = f"advantage {fmt(low)} at {axis} = {shared[0]:g}, {fmt(high)} at {shared[-1]:g}"
        return Check(text, bool(low > 0 and low > high), detail)
    if kind in ("improves_along", "worsens_along"):
        axis = finding["axis"]
        curve = _along(rows, axis, metric, mode)
        if len(curve) < 2:
            return Check(text, None, f"needs 2 or more values of {axis}")
        first, last = curve.iloc[0], curve.iloc[-1]
        if kind == "improves_along":
            slack = math.hypot(_half_width(first, metric), _half_width(last, metric))
            margin = (first[metric] - last[metric]) if mode == "min" else (last[metric] - first[metric])
            detail = (
                f"{fmt(first[metric])} at {axis} = {first[axis]:g} -> {fmt(last[metric])} at {last[axis]:g}"
            )
            return Check(text, bool(margin > slack), detail)
        best = curve.loc[curve[metric].idxmin() if mode == "min" else curve[metric].idxmax()]
        slack = math.hypot(_half_width(best, metric), _half_width(last, metric))
        margin = (last[metric] - best[metric]) if mode == "min" else (best[metric] - last[metric])
        detail = f"best {fmt(best[metric])} at {axis} = {best[axis]:g}; {fmt(last[metric])} at {last[axis]:g}"
        return Check(text, bool(margin > slack), detail)
    raise ValueError(
        f"finding kind {kind!r}: expected at_least_as_good, interior_optimum, gap_shrinks, "
        "improves_along or worsens_along"
    )


def nearest_value(table: pd.DataFrame, settings: dict[str, Any], metric: str) -> tuple[dict, float | None]:
    """Our best trial at the settings nearest the paper's (numeric keys: the nearest grid value;
    others: equal), as (the settings used, the metric value)."""
    mode = direction(table, metric)
    rows = table[table[metric].notna()]
    used: dict[str, Any] = {}
    for key, value in settings.items():
        if key not in rows or rows.empty:
            return used, None
        column = rows[key]
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and pd.api.types.is_numeric_dtype(column)
        ):
            target = column.iloc[(column - value).abs().argsort().iloc[0]]
            target = target.item() if hasattr(target, "item") else target  # numpy -> Python
        else:
            target = value
        used[key] = target
        rows = rows[column.astype(str) == str(target)]
    if rows.empty:
        return used, None
    value = rows[metric].min() if mode == "min" else rows[metric].max()
    return used, float(value)


def paper_section(table: pd.DataFrame, metric: str, reference: dict[str, Any]) -> list[str]:
    """Markdown lines: the paper's points beside ours, then each finding checked."""
    from reports.markdown import format_value, markdown_table

    finished = table[table["status"] == "finished"] if "status" in table else table
    lines = ["## Paper vs ours", "", f"Paper: {reference.get('source', 'see PAPER.md')}.", ""]
    scale = reference.get("scale_note")
    if scale:
        lines += [scale, ""]
    rows = []
    for point in reference.get("points", []):
        settings = point["settings"]
        used, ours = nearest_value(finished, settings, metric)
        rows.append(
            [
                ", ".join(f"{k.split('.')[-1]} {v}" for k, v in settings.items()),
                format_value(point[metric]) + (" (read off the figure)" if point.get("approx", True) else ""),
                ", ".join(f"{k.split('.')[-1]} {format_value(v)}" for k, v in used.items()) or "—",
                format_value(ours),
            ]
        )
    if rows:
        lines += markdown_table(
            ["paper setting", f"paper {metric}", "our nearest setting", f"our {metric}"], rows
        )
        lines.append("")
    checks = [check(finished, metric, f) for f in reference.get("findings", [])]
    if checks:
        mark = {True: "holds", False: "does not hold", None: "not measured"}
        table_rows = [[c.text, mark[c.holds], c.detail] for c in checks]
        lines += ["Findings of the paper, checked on our run:", ""]
        lines += markdown_table(["finding", "ours", "evidence"], table_rows) + [""]
    return lines
