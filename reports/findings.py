"""Paper vs ours: the paper's reference numbers beside ours, and its qualitative findings checked.

A reference entry (``search_spaces/paper/reference.yaml``) has a ``source`` (which figure or
table, and whether the numbers were read off a plot), ``points`` (settings -> the paper's
value) and ``findings``, each a claim of one kind, checked on the study's finished trials:

- ``at_least_as_good``: the best trial with ``key = a`` is no worse than the best with ``key = b``
  by more than a margin (``margin``, relative to b's value; default ``MARGIN``, 5 %): holds when
  the whole 95% interval of a - b lies within the margin, does not hold when it lies beyond it
  (a non-inferiority test: a tie decides, where "a better beyond the CI" never would);
- ``interior_optimum``: for every method, the best value of ``axis`` lies strictly inside its
  grid (a U-shaped curve);
- ``gap_shrinks``: the advantage of ``key = better`` over the other value is positive at the
  smallest ``axis`` value and larger there than at the largest;
- ``improves_along`` / ``worsens_along``: among trials matching ``where``, the metric at the
  largest ``axis`` value is better than at the smallest / worse than the best of the other
  values, by more than the interval of the difference (undetermined within it).

Only results are compared: finite model rows of the study's main protocol key (the rule is in
``reports.comparable``; a finding's detail names the key when the rows carried several).

Each point of a curve is the best trial at that value over the study's other settings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from reports.comparable import comparable, keep, same, select
from reports.difference import Difference, difference
from reports.figures import best_rows, direction, with_methods

__all__ = ["Check", "Difference", "check", "difference", "nearest_value", "paper_section"]

HOLDS, FAILS, UNDETERMINED = "holds", "does not hold", "undetermined"


@dataclass(frozen=True)
class Check:
    """A finding checked: ``verdict`` is holds, does not hold or undetermined; ``detail`` gives the
    numbers and, when undetermined, why and what would decide it (more seeds, a wider grid)."""

    text: str
    verdict: str
    detail: str
    # Undetermined for want of seeds: the trials (hashes) whose extra sample seeds would decide it
    # (``run_study.py extend --seeds`` gives them more).
    wants_seeds: tuple[str, ...] = ()

    @property
    def holds(self) -> bool | None:
        """True / False when decided; None when undetermined."""
        return {HOLDS: True, FAILS: False}.get(self.verdict)


def _along(table: pd.DataFrame, axis: str, metric: str, mode: str) -> pd.DataFrame:
    """The best row per value of axis (over the other settings), sorted by axis."""
    if axis not in table or table[axis].nunique() < 2:
        return table[:0]
    return best_rows(table, [axis], metric, mode).sort_values(axis)


def _worse(a: pd.Series, b: pd.Series, metric: str, mode: str) -> Difference:
    """How much worse a is than b (positive: worse), in the metric's direction."""
    d = difference(a, b, metric)
    return d if mode == "min" else d.negated()


def _relative(d: Difference, base: float) -> str:
    """The difference as a percentage of ``base`` (the comparable figure across protocols)."""
    return f"{100 * d.value / abs(base):+.1f} %" if base else "n/a"


MORE_SEEDS = "the CIs overlap: more sample seeds would decide it"


def _hashes(*rows: pd.Series) -> tuple[str, ...]:
    return tuple(dict.fromkeys(str(r["trial_hash"]) for r in rows if isinstance(r.get("trial_hash"), str)))


MARGIN = 0.05  # at_least_as_good: how much worse (relative) still counts as as good
KINDS = ("at_least_as_good", "interior_optimum", "gap_shrinks", "improves_along", "worsens_along")


def fmt(v: float) -> str:
    return f"{v:.4g}"


def check(table: pd.DataFrame, metric: str, finding: dict[str, Any]) -> Check:
    """The finding checked on the table's results of the metric: finite model rows of the study's
    main protocol key (``reports.comparable``), restricted to ``where``."""
    kind, text = finding["kind"], finding.get("text", finding["kind"])
    if kind not in KINDS:
        raise ValueError(f"finding kind {kind!r}: expected {', '.join(KINDS[:-1])} or {KINDS[-1]}")
    if metric not in table:
        return Check(text, UNDETERMINED, f"no trial measured {metric} (did every trial fail?)")
    mode = direction(table, metric)
    rows, note = comparable(table, metric)
    rows = select(rows, finding.get("where", {}))
    found = _CHECKS[kind](rows, metric, mode, finding, text)
    return replace(found, detail=f"{found.detail}; {note}") if note else found


def _at_least_as_good(rows: pd.DataFrame, metric: str, mode: str, finding: dict, text: str) -> Check:
    key = finding["key"]
    a = best_rows(select(rows, {key: finding["a"]}), [key], metric, mode)
    b = best_rows(select(rows, {key: finding["b"]}), [key], metric, mode)
    if a.empty or b.empty:
        return Check(text, UNDETERMINED, f"needs trials with {key} = {finding['a']} and {finding['b']}")
    ra, rb = a.iloc[0], b.iloc[0]
    worse = _worse(ra, rb, metric, mode)  # positive: a is worse
    margin = finding.get("margin", MARGIN) * abs(float(rb[metric]))
    detail = f"best {finding['a']} {fmt(ra[metric])} vs best {finding['b']} {fmt(rb[metric])}"
    detail += f"; {finding['a']} - {finding['b']} = {worse.text(fmt)}, {_relative(worse, rb[metric])}"
    detail += f" (margin {fmt(margin)})"
    if worse.high <= margin:
        return Check(text, HOLDS, detail)
    if worse.low > margin:
        return Check(text, FAILS, detail)
    need = worse.seeds_to_reach(abs(margin - worse.value))
    detail += f"; {MORE_SEEDS}" + (
        f" (about {need} paired seeds at the measured spread: a - b lies "
        f"{fmt(abs(margin - worse.value))} from the margin)"
        if need
        else ""
    )
    return Check(text, UNDETERMINED, detail, _hashes(ra, rb))


def _best(curve: pd.DataFrame, metric: str, mode: str) -> pd.Series:
    return curve.loc[curve[metric].idxmin() if mode == "min" else curve[metric].idxmax()]


def _interior_optimum(rows: pd.DataFrame, metric: str, mode: str, finding: dict, text: str) -> Check:
    axis = finding["axis"]
    rows, _ = with_methods(rows)
    parts, verdicts, wanting = [], [], []
    for method, group in rows.groupby("method"):
        curve = _along(group, axis, metric, mode)
        if len(curve) < 3:
            continue
        best = _best(curve, metric, mode)
        where = f"{method}: best at {axis} = {best[axis]:g} ({fmt(best[metric])})"
        ends = (curve.iloc[0], curve.iloc[-1])
        if best[axis] in (ends[0][axis], ends[1][axis]):
            verdicts.append(UNDETERMINED)
            parts.append(f"{where}, the grid's edge: extend the grid past {axis} = {best[axis]:g}")
            continue
        rises = [_worse(end, best, metric, mode) for end in ends]
        if all(r.decided() == 1 for r in rises):
            verdicts.append(HOLDS)
            parts.append(where)
        else:
            verdicts.append(UNDETERMINED)
            parts.append(f"{where}, an edge within its CI ({MORE_SEEDS})")
            wanting += _hashes(best, *ends)
    if not verdicts:
        return Check(text, UNDETERMINED, f"needs 3 or more values of {axis}")
    if all(v == HOLDS for v in verdicts):
        return Check(text, HOLDS, "; ".join(parts))
    return Check(text, UNDETERMINED, "; ".join(parts), tuple(dict.fromkeys(wanting)))


def _gap_shrinks(rows: pd.DataFrame, metric: str, mode: str, finding: dict, text: str) -> Check:
    axis, key, better = finding["axis"], finding["key"], finding["better"]
    good = _along(select(rows, {key: better}), axis, metric, mode).set_index(axis)
    other_rows = keep(rows, [not same(v, better) for v in rows[key]]) if key in rows else rows[:0]
    other = _along(other_rows, axis, metric, mode).set_index(axis)
    shared = sorted(set(good.index) & set(other.index))
    if len(shared) < 2:
        return Check(text, UNDETERMINED, f"needs both values of {key} at 2 or more values of {axis}")
    low, high = (_worse(other.loc[v], good.loc[v], metric, mode) for v in (shared[0], shared[-1]))
    detail = f"advantage {low.text(fmt)} at {axis} = {shared[0]:g}, {high.text(fmt)} at {shared[-1]:g}"
    shrink = low.minus(high)
    exact_no = lambda d: d.low == d.high and d.value <= 0  # noqa: E731 (no CI: a tie decides)
    if low.decided() == -1 or shrink.decided() == -1 or exact_no(low) or exact_no(shrink):
        return Check(text, FAILS, detail)
    if low.decided() == 1 and shrink.decided() == 1:
        return Check(text, HOLDS, detail)
    ends = [t.loc[v] for t in (good, other) for v in (shared[0], shared[-1])]
    return Check(text, UNDETERMINED, f"{detail}; {MORE_SEEDS}", _hashes(*ends))


def _along_axis(rows: pd.DataFrame, metric: str, mode: str, finding: dict, text: str) -> Check:
    """improves_along: the last point better than the first; worsens_along: the last worse than
    the best of the others. Either way decided only beyond the interval of the difference."""
    axis = finding["axis"]
    curve = _along(rows, axis, metric, mode)
    if len(curve) < 2:
        return Check(text, UNDETERMINED, f"needs 2 or more values of {axis}")
    first, last = curve.iloc[0], curve.iloc[-1]
    at = lambda row: f"{fmt(row[metric])} at {axis} = {row[axis]:g}"  # noqa: E731
    if finding["kind"] == "improves_along":
        compared = (first, last)
        change = _worse(first, last, metric, mode)  # positive: the last is better
        detail = f"{at(first)} -> {at(last)}"
    else:
        best = _best(curve.iloc[:-1], metric, mode)
        compared = (last, best)
        change = _worse(last, best, metric, mode)  # positive: the last is worse than the best
        detail = f"best of the others {at(best)}; {at(last)}"
    detail += f"; change {change.text(fmt)}"
    verdict = {1: HOLDS, -1: FAILS, 0: UNDETERMINED}[change.decided()]
    if verdict != UNDETERMINED:
        return Check(text, verdict, detail)
    return Check(text, verdict, f"{detail}; {MORE_SEEDS}", _hashes(*compared))


_CHECKS = {
    "at_least_as_good": _at_least_as_good,
    "interior_optimum": _interior_optimum,
    "gap_shrinks": _gap_shrinks,
    "improves_along": _along_axis,
    "worsens_along": _along_axis,
}


def nearest_value(table: pd.DataFrame, settings: dict[str, Any], metric: str) -> tuple[dict, float | None]:
    """Our best trial at the settings nearest the paper's (numeric keys: the nearest grid value;
    others: equal), as (the settings used, the metric value); among the comparable rows only
    (finite model rows of the main protocol key, ``reports.comparable``)."""
    if metric not in table:
        return {}, None
    mode = direction(table, metric)
    rows, _ = comparable(table, metric)
    used: dict[str, Any] = {}
    for key, value in settings.items():
        if key not in rows or rows.empty:
            return used, None
        column = rows[key]
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and pd.api.types.is_numeric_dtype(column)
            and column.notna().any()
        ):
            grid = column.dropna()
            target = grid.iloc[(grid - value).abs().argsort().iloc[0]]
            target = target.item() if hasattr(target, "item") else target  # numpy -> Python
        else:
            target = value
        used[key] = target
        rows = select(rows, {key: target})
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
    ours_by = sorted(
        {
            p[metric]["key"]
            for p in finished.get("protocol", [])
            if isinstance(p, dict) and "key" in p.get(metric, {})
        }
    )
    lines += [
        f"Protocols: the paper's {metric} is {reference.get('protocol', 'its own (see its source)')};"
        " ours is "
        + (", ".join(f"`{k}`" for k in ours_by) or "this study's")
        + ". Numbers of different protocols are not comparable by value: compare the shapes (where"
        " the optimum lies, which setting wins) and the relative margins the findings give.",
        "",
    ]
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
        table_rows = [[c.text, c.verdict, c.detail] for c in checks]
        lines += ["Findings of the paper, checked on our run:", ""]
        lines += markdown_table(["finding", "ours", "evidence"], table_rows) + [""]
    return lines
