"""The report's plots, chosen from the axes a study varies (matplotlib, its Agg backend).

Input: the tidy table of ``reports.mlflow_source.study_table`` (one row per finished trial).
- a *method* is the combination of the categorical settings that vary (sampler family, timestep
  mode, scheduler, ...), named in words; one colour per method in every figure;
- curves: the metric against each varying numeric axis (NFE on a log scale, temperature, CFG),
  per method, each point the best trial at that value over the other axes, with its 95% CI;
  rows with no network calls (data baselines, nfe = 0) are drawn as labelled horizontal lines;
- heatmaps: the best method's metric over each pair of varying numeric axes;
- trade-offs: quality vs a second metric (IS, or precision vs recall) and vs cost (seconds per
  sample), with the Pareto front.
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from harness.tracking.schema import CI_HIGH, CI_LOW  # noqa: E402
from reports.markdown import PROTOCOL_KEY, protocols_by_use  # noqa: E402

# Numeric axes worth a curve, with their axis labels (units in words).
NUMERIC_AXES: dict[str, str] = {
    "sampler.num_steps": "sampling steps (NFE, log scale)",
    "sampler.temperature": "sampling temperature",
    "sampler.cfg_scale": "CFG scale s (u + s(c - u); 1 = no guidance)",
    "sampler.maskgit.gumbel_scale": "MaskGIT Gumbel temperature",
    "train.steps": "training steps",
}
LOG_AXES = ("sampler.num_steps", "train.steps")
SHORT: dict[str, str] = {
    "sampler.num_steps": "steps",
    "sampler.temperature": "temperature",
    "sampler.cfg_scale": "CFG scale",
    "sampler.maskgit.gumbel_scale": "Gumbel temperature",
    "train.steps": "training steps",
}
# Categorical settings that name a method, and how each value reads in a legend.
METHOD_KEYS = (
    "sampler.name",
    "recipe",
    "model.timestep",
    "train.scheduler",
    "train.corruption",
    "train.loss",
    "sampler.euler.argmax_fill",
    "sampler.euler.remask_scale",
    "sampler.maskgit.randomization",
    "sampler.maskgit.schedule",
    "sampler.maskgit.counts",
    "sampler.halton.counts",
    "model.text.encoder",
    "model.text.prefix",
)
WORDS: dict[tuple[str, Any], str] = {
    ("recipe", "maskgit"): "MaskGIT recipe",
    ("recipe", "discrete_interpolant"): "Discrete Interpolants paper recipe",
    ("recipe", "halton"): "Halton-MaskGIT recipe",
    ("sampler.name", "euler"): "Euler sampler",
    ("sampler.name", "maskgit"): "MaskGIT sampler",
    ("sampler.name", "halton"): "Halton-order sampler",
    ("sampler.name", "class_marginals"): "trivial baseline (independent tokens per class)",
    ("sampler.name", "heldout_tokens"): "tokenizer reconstructions (floor)",
    ("model.timestep", "explicit"): "ETM (timestep input)",
    ("model.timestep", "implicit"): "ITM (no timestep)",
    ("train.corruption", "maskgit"): "MaskGIT exact-count masking",
    ("train.corruption", "interpolant"): "interpolant masking",
    ("sampler.euler.argmax_fill", True): "argmax fill",
    ("sampler.euler.argmax_fill", False): "sampled fill",
    ("sampler.euler.remask_scale", 0.0): "no corrector",
    ("sampler.maskgit.counts", "reference"): "the paper's reference counts",
    ("sampler.maskgit.counts", "maskgit"): "Google's MaskGIT counts",
    ("sampler.maskgit.counts", "floor"): "floor counts",
    ("model.text.encoder", "learned"): "learned text encoder",
    ("model.text.encoder", "clip"): "CLIP text encoder",
    ("model.text.prefix", True): "caption tokens as prefix",
    ("model.text.prefix", False): "pooled caption only",
}
SECONDS = "seconds_per_sample"
NFE = "nfe"
METRIC_WORDS = {
    "fid": "FID",
    "is_mean": "Inception-Score analogue",
    "precision": "precision",
    "recall": "recall",
    "kid_mean": "KID",
    "fvd": "FVD",
    "miou": "mIoU",
    "caption_agreement": "caption agreement",
    NFE: "network calls (NFE)",
    SECONDS: "seconds per sample",
}


@dataclass(frozen=True)
class Figure:
    title: str
    caption: str
    path: Path


def words(key: str, value: Any) -> str:
    if (key, value) in WORDS:
        return WORDS[(key, value)]
    short = key.rsplit(".", 1)[-1].replace("_", " ")
    return f"{short} {value}"


def metric_words(metric: str) -> str:
    base = metric.rsplit("/", 1)[-1]
    prefix = f"{metric.rsplit('/', 1)[0]} " if "/" in metric else ""
    return prefix + METRIC_WORDS.get(base, metric)


def varying(table: pd.DataFrame, keys: tuple[str, ...] | list[str]) -> list[str]:
    return [k for k in keys if k in table and table[k].map(repr).nunique() > 1]  # None counts as a value


# For runs logged without a direction in their protocol; anything else unknown: lower is better.
HIGHER_IS_BETTER = ("is_mean", "precision", "recall", "miou", "caption_agreement")


def direction(table: pd.DataFrame, metric: str) -> str:
    """'min' or 'max', from the metric's protocol; NFE and seconds: min."""
    for protocols in table.get("protocol", []):
        if isinstance(protocols, dict) and "direction" in protocols.get(metric, {}):
            return protocols[metric]["direction"]
    return "max" if metric.rsplit("/", 1)[-1] in HIGHER_IS_BETTER else "min"


def with_methods(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The table with a ``method`` column naming each row's categorical settings in words."""
    keys = varying(table, [k for k in METHOD_KEYS if k != "sampler.name"])
    keys = ["sampler.name", *keys] if "sampler.name" in table else keys
    table = table.copy()
    if not keys:
        table["method"] = "all trials"
        return table, keys

    def name(row: pd.Series) -> str:
        if row.get(NFE) == 0:  # a data baseline: the sampler name says it all
            return words("sampler.name", row.get("sampler.name"))
        return ", ".join(words(k, row[k]) for k in keys if k in row and pd.notna(row[k]) and _applies(k, row))

    table["method"] = table.apply(name, axis=1)
    return table, keys


def _applies(key: str, row: pd.Series) -> bool:
    """Whether a setting shapes the row's trial: a sampler's own option (``sampler.<name>.*``)
    only for that sampler (the Euler sampler has no count rule; Halton reads its own)."""
    parts = key.split(".")
    return not (len(parts) == 3 and parts[0] == "sampler" and parts[1] != row.get("sampler.name"))


def palette(methods: list[str]) -> dict[str, Any]:
    """One colour per method (sorted by name), matplotlib's ten categorical colours in turn."""
    colours = plt.get_cmap("tab10").colors
    return {m: colours[i % len(colours)] for i, m in enumerate(sorted(methods))}


def best_rows(frame: pd.DataFrame, by: list[str], metric: str, mode: str) -> pd.DataFrame:
    """Per group of ``by``, the row with the best metric."""
    frame = frame[frame[metric].notna()]
    if frame.empty:
        return frame
    pick = frame.groupby(by, dropna=False)[metric].idxmin if mode == "min" else None
    index = pick() if pick else frame.groupby(by, dropna=False)[metric].idxmax()
    return frame.loc[index.values]


def pareto_front(x: pd.Series, y: pd.Series, x_mode: str, y_mode: str) -> list[int]:
    """Positions (into x, y) of the points no other point beats on both axes, sorted by x."""
    sx = 1.0 if x_mode == "min" else -1.0
    sy = 1.0 if y_mode == "min" else -1.0
    points = sorted(range(len(x)), key=lambda i: (sx * x.iloc[i], sy * y.iloc[i]))
    front, best = [], math.inf
    for i in points:
        if sy * y.iloc[i] < best:
            front.append(i)
            best = sy * y.iloc[i]
    return front


def _errorbars(frame: pd.DataFrame, metric: str) -> Any:
    low, high = f"{metric}{CI_LOW}", f"{metric}{CI_HIGH}"
    if low not in frame or high not in frame or frame[low].isna().all():
        return None
    below = (frame[metric] - frame[low]).clip(lower=0).values
    return [below, (frame[high] - frame[metric]).clip(lower=0).values]


def _legend_outside(ax: Any) -> None:
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _save(fig: Any, path: Path) -> Path:
    return save_figure(fig, path, bbox_inches="tight")  # cropped to what is drawn, the legend too


def save_figure(fig: Any, path: Path, **options: Any) -> Path:
    """The figure written whole or not at all (a temporary file beside it, renamed), then closed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=110, **options)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path


def curve(table: pd.DataFrame, metric: str, axis: str, out: Path, colours: dict) -> Figure | None:
    mode = direction(table, metric)
    models = table[(table[NFE] != 0) & table[metric].notna()]
    baselines = table[(table[NFE] == 0) & table[metric].notna()]
    if models.empty or models[axis].nunique() < 2:
        return None
    best = best_rows(models, ["method", axis], metric, mode).sort_values(axis)
    fig, ax = plt.subplots(figsize=(10, 4.2))
    for method, rows in best.groupby("method", sort=True):
        ax.errorbar(
            rows[axis], rows[metric], yerr=_errorbars(rows, metric), marker="o", capsize=3,
            label=method, color=colours[method],
        )  # fmt: skip
    for _, row in baselines.iterrows():
        ax.axhline(row[metric], ls="--", lw=1, color=colours[row["method"]], label=row["method"])
    if axis in LOG_AXES:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(best[axis].unique()), [f"{v:g}" for v in sorted(best[axis].unique())])
    ax.set_xlabel(NUMERIC_AXES.get(axis, axis))
    better = "lower is better" if mode == "min" else "higher is better"
    ax.set_ylabel(f"{metric_words(metric)} ({better})")
    _legend_outside(ax)
    ax.grid(alpha=0.3)
    others = [a for a in varying(models, list(NUMERIC_AXES)) if a != axis]
    over = f", each point the best over {' and '.join(SHORT.get(a, a) for a in others)}" if others else ""
    caption = (
        f"{metric_words(metric)} vs {SHORT.get(axis, axis)} per method{over}; bars: 95% CI over"
        " sample seeds where measured; dashed: data baselines."
    )
    name = f"{metric}_vs_{axis}".replace("/", "-").replace(".", "-")
    return Figure(f"{metric_words(metric)} vs {axis}", caption, _save(fig, out / f"{name}.png"))


def heatmap(table: pd.DataFrame, metric: str, axes: tuple[str, str], out: Path) -> Figure | None:
    mode = direction(table, metric)
    models = table[(table[NFE] != 0) & table[metric].notna()]
    if models.empty:
        return None
    method = best_rows(models, ["method"], metric, mode).sort_values(metric, ascending=mode == "min")
    method = method["method"].iloc[0]
    rows = best_rows(models[models["method"] == method], list(axes), metric, mode)
    grid = rows.pivot_table(index=axes[0], columns=axes[1], values=metric, aggfunc="first")
    if grid.shape[0] < 2 or grid.shape[1] < 2:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.2))
    _annotated_grid(fig, ax, grid, "viridis_r" if mode == "min" else "viridis")
    ax.set_ylabel(NUMERIC_AXES.get(axes[0], axes[0]))
    ax.set_xlabel(NUMERIC_AXES.get(axes[1], axes[1]))
    ax.set_title(method, fontsize=9)
    caption = (
        f"{metric_words(metric)} of the best method ({method}) over {SHORT.get(axes[0], axes[0])} x"
        f" {SHORT.get(axes[1], axes[1])}, each cell the best over the other settings."
    )
    name = f"{metric}_heatmap_{axes[0]}_{axes[1]}".replace("/", "-").replace(".", "-")
    return Figure(f"{metric_words(metric)} heatmap", caption, _save(fig, out / f"{name}.png"))


def _annotated_grid(fig: Any, ax: Any, grid: pd.DataFrame, cmap: str) -> None:
    """The grid's cells coloured by value (first row on top, a missing value left blank), each
    written in it to 3 significant digits, dark on light cells and light on dark ones."""
    values = grid.to_numpy(dtype=float)
    rows, cols = values.shape
    mesh = ax.pcolormesh(np.ma.masked_invalid(values), cmap=cmap)
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)
    ax.set_xticks(np.arange(cols) + 0.5, [str(c) for c in grid.columns])
    ax.set_yticks(np.arange(rows) + 0.5, [str(r) for r in grid.index])
    fig.colorbar(mesh, ax=ax)
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            red, green, blue, _ = mesh.cmap(mesh.norm(value))
            light = 0.2126 * red + 0.7152 * green + 0.0722 * blue > 0.408  # relative luminance
            colour = "black" if light else "white"
            ax.text(j + 0.5, i + 0.5, f"{value:.3g}", ha="center", va="center", color=colour)


def tradeoff(
    table: pd.DataFrame,
    x: str,
    y: str,
    out: Path,
    colours: dict,
    log_x: bool = False,
    other: tuple[str, pd.DataFrame] | None = None,
) -> Figure | None:
    """y vs x, a point per trial, with the Pareto front; ``other`` (a study's name and table)
    adds that study's front, dashed: e.g. what a search found against what a grid found."""
    rows = table[table[x].notna() & table[y].notna()]
    if x == SECONDS:
        rows = rows[rows[x] > 0]
    if len(rows) < 2:
        return None
    x_mode, y_mode = direction(table, x), direction(table, y)
    fig, ax = plt.subplots(figsize=(10, 4.2))
    for method, group in rows.groupby("method", sort=True):
        ax.scatter(group[x], group[y], color=colours[method], s=40, label=method, edgecolors="white", lw=0.5)
    front = rows.iloc[pareto_front(rows[x], rows[y], x_mode, y_mode)]
    ax.plot(front[x], front[y], color="black", lw=1, ls=":", label="Pareto front")
    caption = f"{metric_words(y)} vs {metric_words(x)}, one point per trial; dotted: the Pareto front."
    if other is not None and {x, y} <= set(other[1].columns):
        theirs = _same_protocol(other[1], rows, y)
        theirs = theirs[theirs[x].notna() & theirs[y].notna()]
        theirs = theirs[(theirs["status"] == "finished") & (theirs[x] > 0 if x == SECONDS else True)]
        if len(theirs):
            front_b = theirs.iloc[pareto_front(theirs[x], theirs[y], x_mode, y_mode)]
            ax.plot(front_b[x], front_b[y], color="grey", lw=1.5, ls="--", label=f"{other[0]}: Pareto front")
            caption += f" Dashed: the Pareto front of study {other[0]!r} ({len(theirs)} trials)."
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(f"{metric_words(x)} ({'lower' if x_mode == 'min' else 'higher'} is better)")
    ax.set_ylabel(f"{metric_words(y)} ({'lower' if y_mode == 'min' else 'higher'} is better)")
    _legend_outside(ax)
    ax.grid(alpha=0.3)
    name = f"tradeoff_{y}_vs_{x}".replace("/", "-").replace(".", "-")
    return Figure(f"{metric_words(y)} vs {metric_words(x)}", caption, _save(fig, out / f"{name}.png"))


def protocol_keys(table: pd.DataFrame, metric: str) -> pd.Series:
    """The protocol key each row's ``metric`` was measured under (None where none is recorded)."""
    protocols = table["protocol"] if "protocol" in table else [None] * len(table)
    keys = [((p if isinstance(p, dict) else {}).get(metric) or {}).get(PROTOCOL_KEY) for p in protocols]
    return pd.Series(keys, index=table.index, dtype=object)  # None stays None, not NaN


def under_main_protocol(table: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, list[str | None]]:
    """The rows holding ``metric`` under the study's main protocol (``protocols_by_use``), and
    every key it was measured under: a value of another extractor, reference or sample count is
    never ranked or drawn beside these."""
    if metric not in table:
        return table.iloc[:0], []
    rows = table[table[metric].notna()]
    protocols = rows["protocol"] if "protocol" in rows else [None] * len(rows)
    order = protocols_by_use((p or {}).get(metric) if isinstance(p, dict) else None for p in protocols)
    return (rows[protocol_keys(rows, metric) == order[0]] if len(order) > 1 else rows), order


def _same_protocol(theirs: pd.DataFrame, ours: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Another study's rows whose ``metric`` shares the protocol of ours (all, where neither
    study recorded one)."""
    keys = set(protocol_keys(ours, metric).dropna())
    return theirs[protocol_keys(theirs, metric).isin(keys)] if keys else theirs


def study_figures(
    table: pd.DataFrame, metric: str, out: Path, other: tuple[str, pd.DataFrame] | None = None
) -> list[Figure]:
    """Every figure the study's axes call for (finished trials only); ``other``: a study whose
    quality / cost Pareto front the seconds-per-sample trade-off draws too."""
    if metric not in table:
        return []
    table, _ = under_main_protocol(table[table["status"] == "finished"], metric)
    if table.empty:
        return []
    if NFE not in table:
        table = table.assign(**{NFE: math.nan})
    table, _ = with_methods(table)
    colours = palette(list(table["method"].unique()))
    models = table[table[NFE] != 0]
    axes = varying(models, list(NUMERIC_AXES))
    figures = [curve(table, metric, axis, out, colours) for axis in axes]
    figures += [heatmap(table, metric, pair, out) for pair in itertools.combinations(axes, 2)]
    if "is_mean" in table and metric != "is_mean":
        figures.append(tradeoff(under_main_protocol(table, "is_mean")[0], "is_mean", metric, out, colours))
    if "precision" in table and "recall" in table:
        rows = under_main_protocol(under_main_protocol(table, "precision")[0], "recall")[0]
        figures.append(tradeoff(rows, "recall", "precision", out, colours))
    if SECONDS in table:
        figures.append(tradeoff(table, SECONDS, metric, out, colours, log_x=True, other=other))
    return [f for f in figures if f is not None]
