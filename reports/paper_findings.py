"""The paper's findings over a folder of studies (``search_spaces/paper/mini``): one table of every
finding checked on its study's runs, and the gap between two values of a setting along training.

``run_study.py report FOLDER`` writes ``<runs-root>/<folder>-findings/findings.md`` and its figure;
with ``--readme README.md`` it also rewrites the README's block between
``<!-- findings: <folder> begin -->`` and ``<!-- findings: <folder> end -->``. The gap curve is
drawn from the folder's studies that vary ``train.steps`` and the gap's setting
(``model.timestep``: ITM - ETM): at each number of steps, per model size and CFG scale, the best
trial of one value against the best of the other, paired over their shared sample seeds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.errors import UserError
from reports.comparable import comparable, select
from reports.figures import best_rows, direction, save_figure
from reports.findings import FAILS, HOLDS, UNDETERMINED, Check, Difference, check, difference
from reports.markdown import atomic_write, markdown_table

GAP_KEY, GAP_A, GAP_B = "model.timestep", "implicit", "explicit"  # ITM - ETM
STEPS = "train.steps"
GAP_GROUPS = ("model.size", "sampler.cfg_scale")  # one gap curve per combination present


@dataclass(frozen=True)
class StudyFindings:
    """One study's checked findings, with the paper's protocol and ours."""

    study: str
    reference: str
    checks: list[Check]
    finished: int


@dataclass(frozen=True)
class Gap:
    """``a - b`` of the metric at one number of steps, for one combination of ``GAP_GROUPS``
    (``group``: its (key, value) pairs)."""

    group: tuple[tuple[str, object], ...]
    steps: int
    diff: Difference
    a: float
    b: float
    mode: str = "min"  # the metric's direction: 'min' (lower is better) or 'max'


def block_markers(block_id: str) -> tuple[str, str]:
    return f"<!-- findings: {block_id} begin -->", f"<!-- findings: {block_id} end -->"


def check_study(
    name: str, reference_name: str, table: pd.DataFrame, metric: str, reference: dict
) -> StudyFindings:
    finished = table[table["status"] == "finished"] if "status" in table else table
    checks = [check(finished, metric, f) for f in reference.get("findings", [])]
    return StudyFindings(name, reference_name, checks, len(finished))


def gaps(table: pd.DataFrame, metric: str) -> list[Gap]:
    """The a - b gap at each value of ``train.steps`` per combination of the gap groups present,
    among the comparable rows (finite model rows of the main protocol key, ``reports.comparable``)."""
    if GAP_KEY not in table or STEPS not in table or metric not in table or table[STEPS].nunique() < 2:
        return []
    finished = table[table["status"] == "finished"] if "status" in table else table
    mode = direction(finished, metric)
    finished, _ = comparable(finished, metric)
    groups = [g for g in GAP_GROUPS if g in finished]
    out = []
    for key, rows in finished.groupby([*groups, STEPS], dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        a = best_rows(select(rows, {GAP_KEY: GAP_A}), [GAP_KEY], metric, mode)
        b = best_rows(select(rows, {GAP_KEY: GAP_B}), [GAP_KEY], metric, mode)
        if a.empty or b.empty:
            continue
        ra, rb = a.iloc[0], b.iloc[0]
        group = tuple(zip(groups, key[:-1], strict=True))
        diff = difference(ra, rb, metric)
        out.append(Gap(group, int(key[-1]), diff, float(ra[metric]), float(rb[metric]), mode))
    return sorted(out, key=lambda g: (tuple(map(str, g.group)), g.steps))


def findings_lines(studies: list[StudyFindings], metric: str) -> list[str]:
    """The findings table: study, the paper's finding, our verdict, the evidence."""
    rows = []
    for s in studies:
        for c in s.checks:
            rows.append([f"`{s.study}`", c.text, f"**{c.verdict}**", c.detail])
    counts = {v: sum(c.verdict == v for s in studies for c in s.checks) for v in (HOLDS, FAILS, UNDETERMINED)}
    head = ", ".join(f"{n} {v}" for v, n in counts.items())
    return [
        f"{sum(counts.values())} findings of the paper checked on our runs ({head}); {metric} with its",
        "95% interval over the sample seeds, differences paired over shared seeds where recorded.",
        "",
        *markdown_table(["study", "the paper's finding", "ours", "evidence"], rows),
        "",
    ]


def gap_lines(found: list[Gap], metric: str) -> list[str]:
    """The gap curve as a table: one row per combination of the groups, one column per steps."""
    if not found:
        return []
    steps = sorted({g.steps for g in found})
    by_group: dict[tuple, dict[int, Gap]] = {}
    for g in found:
        by_group.setdefault(g.group, {})[g.steps] = g
    rows = [
        [group_label(group)] + [_gap_cell(cells.get(s)) for s in steps] for group, cells in by_group.items()
    ]
    return [
        f"ITM - ETM {metric} along training (the better one named where the interval decides; best of",
        "each over the other settings, paired over sample seeds):",
        "",
        *markdown_table(["", *(f"{s:,} steps" for s in steps)], rows),
        "",
    ]


def group_label(group: tuple[tuple[str, object], ...]) -> str:
    """("model.size", "tiny"), ("sampler.cfg_scale", 2.0) -> "size tiny, cfg_scale 2"."""
    return (
        ", ".join(
            f"{k.split('.')[-1]} {v:g}" if isinstance(v, float) else f"{k.split('.')[-1]} {v}"
            for k, v in group
        )
        or "all"
    )


def trend(found: list[Gap]) -> list[str]:
    """Per group, the gap at the fewest and the most steps: what training does to it."""
    by_group: dict[tuple, list[Gap]] = {}
    for g in found:
        by_group.setdefault(g.group, []).append(g)
    return [
        f"{group_label(group)}: {_gap_cell(points[0])} at {points[0].steps:,} steps, "
        f"{_gap_cell(points[-1])} at {points[-1].steps:,}"
        for group, points in by_group.items()
        if len(points) >= 2
    ]


def _gap_cell(g: Gap | None) -> str:
    """``a - b ± half`` to 3 significant digits, and the winner when the interval decides it (in
    the metric's direction: a negative gap is ITM better for FID, ETM better for precision)."""
    if g is None:
        return "—"
    sign = g.diff.decided() * (1 if g.mode == "min" else -1)  # +1: b (ETM) better
    mark = {-1: " (ITM better)", 1: " (ETM better)", 0: ""}[sign]
    return f"{g.diff.value:+.3g} ± {g.diff.half:.3g}{mark}"


def draw_gap(found: list[Gap], metric: str, path: Path) -> Path | None:
    """The gap curve as a figure: gap +- its interval against steps (log scale), a line per group."""
    if not found:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    by_group: dict[tuple, list[Gap]] = {}
    for g in found:
        by_group.setdefault(g.group, []).append(g)
    for group, points in by_group.items():
        label = group_label(group)
        ax.errorbar(
            [p.steps for p in points],
            [p.diff.value for p in points],
            yerr=[p.diff.half for p in points],
            marker="o",
            capsize=3,
            label=label,
        )
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training steps")
    ax.set_ylabel(f"ITM - ETM {metric}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def rewrite_block(readme: Path, block_id: str, body: str) -> None:
    """Replaces the text between the block's markers in ``readme`` (both must be there)."""
    begin, end = block_markers(block_id)
    text = readme.read_text()
    pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.DOTALL)
    if len(pattern.findall(text)) != 1:
        raise UserError(f"{readme}: expected one block '{begin}' ... '{end}' to rewrite")
    atomic_write(readme, pattern.sub(lambda _: f"{begin}\n{body.rstrip()}\n{end}", text))


def write_findings(
    out_dir: Path, title: str, studies: list[StudyFindings], tables: list[pd.DataFrame], metric: str
) -> tuple[Path, str]:
    """``out_dir/findings.md`` (and ``gap.png``) from the checked studies and every study's table;
    returns the path and the body the README's block gets (the same text, without the figure)."""
    found = [g for table in tables for g in gaps(table, metric)]
    body = findings_lines(studies, metric)
    failing = [c for s in studies for c in s.checks if c.verdict == FAILS]
    why = trend(found)
    if failing and why:
        body += ["What training does to the ITM - ETM gap (the learning-curve study):", ""]
        body += [f"- {line}" for line in why] + [""]
    body += gap_lines(found, metric)
    figure = draw_gap(found, metric, out_dir / "gap.png")
    page = [f"# {title}", "", *body]
    if figure is not None:
        page += ["![ITM - ETM along training](gap.png)", ""]
    path = out_dir / "findings.md"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "\n".join(page).rstrip("\n") + "\n")
    return path, "\n".join(body).rstrip("\n") + "\n"
