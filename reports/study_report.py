"""The study report, from MLflow: ``report.md`` and a self-contained ``report.html``.

Reads the study's trial runs (``reports.mlflow_source``), picks tables and plots from the axes
the study varies (``reports.figures``), downloads the best configurations' sample grids, and
writes, in the study folder: ``report.md`` (figures under ``report_files/``) and ``report.html``
(the same content with every image embedded, so the file can be mailed or archived alone).
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from markdown_it import MarkdownIt

from harness.config.recipes import RECIPES
from harness.tracking.schema import SAMPLES_PNG, TAG_GIT_COMMIT
from reports.figures import (
    NFE,
    NUMERIC_AXES,
    SECONDS,
    SHORT,
    Figure,
    direction,
    metric_words,
    study_figures,
    under_main_protocol,
    with_methods,
)
from reports.findings import paper_section
from reports.markdown import (
    atomic_write,
    ceiling_section,
    data_section,
    failed_section,
    flatten,
    format_value,
    markdown_table,
    metric_cell,
    metric_columns,
    protocol_section,
    short,
    sort_best_first,
    trials_section,
    varying_keys,
)
from reports.mlflow_source import artifact_file, latest_invocation, records, study_table

FILES = "report_files"
VERSION_TAG_PREFIX = "version."


@dataclass(frozen=True)
class Report:
    markdown: Path
    html: Path
    figures: list[Figure]


def _best_per_method(table: pd.DataFrame, by_hash: dict[str, dict], metric: str, mode: str) -> list[dict]:
    """The best finished trial of each method under the study's main protocol, best first."""
    finished, _ = under_main_protocol(table[table["status"] == "finished"], metric)
    if finished.empty:
        return []
    finished, _ = with_methods(finished)
    ascending = mode == "min"
    best = finished.sort_values(metric, ascending=ascending).drop_duplicates("method")
    return [{**by_hash[h], "method": m} for h, m in zip(best["trial_hash"], best["method"], strict=True)]


def _best_section(best: list[dict], metric: str, axes: list[str], protocols: list[str | None]) -> list[str]:
    if not best:
        return []
    column = metric_columns(best, metric)[0]
    axes = [a for a in NUMERIC_AXES if a in axes]
    headers = ["method", "trial", metric_words(metric), *(SHORT.get(a, a) for a in axes), "NFE", "s/sample"]
    rows = []
    for record in best:
        flat = _flat(record)
        baseline = record["metrics"].get(NFE) == 0  # no network: the sampling settings do not apply
        row = [record["method"], short(record["trial_hash"]), metric_cell(record, column)]
        row += ["—" if baseline else format_value(flat.get(a)) for a in axes]
        row += [format_value(record["metrics"].get(k)) for k in (NFE, SECONDS)]
        rows.append(row)
    note = "Each method's best trial over every other setting; ± is the 95% CI half-width over sample seeds"
    note += " ([low, high]: the interval's bounds, where it is not centred on the value)."
    if len(protocols) > 1:  # values of other protocols are not comparable with these: not ranked
        note += (
            f" Ranked under protocol `{protocols[0]}`, the one most trials were measured under;"
            f" {len(protocols) - 1} other protocol(s) in the table of all trials."
        )
    return ["## Best configuration per method", "", note, "", *markdown_table(headers, rows), ""]


def _flat(record: dict) -> dict:
    return flatten(record["config"])


def _figures_section(figures: list[Figure], study_dir: Path) -> list[str]:
    if not figures:
        return []
    lines = ["## Figures", ""]
    for figure in figures:
        rel = figure.path.relative_to(study_dir).as_posix()
        lines += [f"![{figure.title}]({rel})", "", f"*{figure.caption}*", ""]
    return lines


def _samples_section(best: list[dict], tracking_uri: str, study_dir: Path) -> list[str]:
    lines = []
    for record in best:
        if record["metrics"].get(NFE) == 0 and "reconstructions" not in record["method"]:
            continue  # a trivial baseline's samples say nothing new
        path = artifact_file(
            tracking_uri, record["run_id"], SAMPLES_PNG, study_dir / FILES / "samples" / record["trial_hash"]
        )
        if path is not None:
            rel = path.relative_to(study_dir).as_posix()
            lines += [f"**{record['method']}** ({short(record['trial_hash'])})", "", f"![samples]({rel})", ""]
    return ["## Samples of the best configurations", "", *lines] if lines else []


def _recipes_section(table: pd.DataFrame) -> list[str]:
    """Provenance of each named recipe (a published baseline) the study used, and how its
    parameters translate into ours."""
    names = sorted({r for r in table.get("recipe", pd.Series(dtype=object)).dropna() if r in RECIPES})
    if not names:
        return []
    lines = ["## Baselines and recipes", ""]
    for name in names:
        recipe = RECIPES[name]
        lines += [f"**{name}**: {recipe.provenance}", ""]
        rows = [[theirs, ours] for theirs, ours in recipe.translation.items()]
        rows += [[f"(set) {k}", format_value(v)] for k, v in recipe.overrides.items()]
        lines += markdown_table(["their parameter", "ours"], rows) + [""]
    return lines


def _context_section(invocation, study_dir: Path) -> list[str]:
    tags = invocation.tags
    lines = ["## Reproduce", ""]
    lines.append(f"- git commit: `{tags.get(TAG_GIT_COMMIT, 'unknown')}`")
    prefix = VERSION_TAG_PREFIX
    versions = {k[len(prefix) :]: v for k, v in sorted(tags.items()) if k.startswith(prefix)}
    if versions:
        lines.append("- libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if invocation.run_id:
        lines.append(f"- MLflow parent run: `{invocation.run_id}`")
    lines.append("")
    if invocation.study_config:
        text = yaml.safe_dump(invocation.study_config, sort_keys=False).rstrip()
        lines += ["Resolved study config:", "", "```yaml", text, "```", ""]
    return lines


def render_markdown(
    tracking_uri: str,
    study_name: str,
    study_dir: Path,
    title: str,
    metric: str,
    mode: str | None = None,
    reference: dict | None = None,
    compare_front: str | None = None,
) -> tuple[str, list[Figure]]:
    """The report's Markdown and its figures. mode: 'min' or 'max' (default: the metric's
    direction as its protocol records it)."""
    study_dir = Path(study_dir)
    study = study_table(tracking_uri, study_name)
    table = study.table
    recs = records(study)
    mode = mode or (direction(table, metric) if not table.empty else "min")
    finished = [r for r in recs if r["status"] == "finished"]
    failed = [r for r in recs if r["status"] != "finished"]
    ordered = sort_best_first(finished, metric, mode)
    keys = varying_keys([r["config"] for r in recs])
    better = "lower is better" if mode == "min" else "higher is better"
    lines = [
        f"# {title}",
        "",
        f"- Study: `{study_name}`; {len(finished)} trials finished, {len(failed)} failed",
        f"- Ranked by `{metric}` ({metric_words(metric)}, {better})",
        "",
    ]
    figures: list[Figure] = []
    if ordered:
        by_hash = {r["trial_hash"]: r for r in recs}
        best = _best_per_method(table, by_hash, metric, mode)
        other = None
        if compare_front:  # another study's trials, for its Pareto front (empty if it has none)
            other = (compare_front, study_table(tracking_uri, compare_front).table)
        figures = study_figures(table, metric, study_dir / FILES, other)
        protocols = under_main_protocol(table[table["status"] == "finished"], metric)[1]
        lines += _best_section(best, metric, keys, protocols) + ceiling_section(ordered)
        lines += paper_section(table, metric, reference) if reference else []
        lines += _figures_section(figures, study_dir)
        lines += _samples_section(best, tracking_uri, study_dir)
        lines += trials_section(ordered, metric, keys) + protocol_section(ordered, metric)
    else:
        lines += ["No finished trials.", ""]
    lines += _recipes_section(table) + failed_section(failed, keys) + data_section(study_dir)
    lines += _context_section(latest_invocation(tracking_uri, study_name), study_dir)
    return "\n".join(lines).rstrip("\n") + "\n", figures


_IMG = re.compile(r'<img src="([^"]+)"')


def render_html(markdown_text: str, base_dir: Path, title: str) -> str:
    """The Markdown as a standalone HTML page, every local image inlined as a data URI."""
    body = MarkdownIt("commonmark").enable("table").render(markdown_text)

    def inline(match: re.Match) -> str:
        src = html.unescape(match.group(1))
        path = base_dir / src
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<img src="data:image/png;base64,{data}"'

    body = _IMG.sub(inline, body)
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#f3f3f3}"
        "img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow-x:auto}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{style}</style></head>\n"
        f"<body>\n{body}</body></html>\n"
    )


def write_report(
    tracking_uri: str,
    study_name: str,
    study_dir: Path,
    title: str,
    metric: str,
    mode: str | None = None,
    reference: dict | None = None,
    compare_front: str | None = None,
) -> Report:
    """Write report.md and report.html in the study folder from the study's MLflow runs;
    ``reference`` (a paper reference entry) adds the paper-vs-ours section; ``compare_front`` (a
    study in the same store) draws its quality / cost Pareto front beside this one's."""
    study_dir = Path(study_dir).resolve()  # artifacts download to absolute paths; links are relative to it
    text, figures = render_markdown(
        tracking_uri, study_name, study_dir, title, metric, mode, reference, compare_front
    )
    md = study_dir / "report.md"
    atomic_write(md, text)
    page = study_dir / "report.html"
    atomic_write(page, render_html(text, study_dir, title))
    return Report(md, page, figures)
