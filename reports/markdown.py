"""A Markdown report of one study, read from its ledger (``<study_dir>/ledger/*.json``).

Reads plain JSON on disk: no harness, model, torch or Ray imports. Metric values measured under
different protocols (the ``"key"`` of a metric's protocol dict) never share a column: a metric
with several protocol keys gets one column per key.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.run.strict_json import strict_loads

GROUP_KEYS = ("model.timestep", "sampler.name", "train.corruption")
NFE = "nfe"
SECONDS_PER_SAMPLE = "seconds_per_sample"
SAMPLES_PNG = "samples_png"
PROTOCOL_KEY = "key"
_MISSING = "—"
_PROTOCOL_FIRST = ("key", "extractor", "extractor_sha256", "reference", "num_reference", "num_samples")


@dataclass(frozen=True)
class MetricColumn:
    """One table column: a metric under one protocol key (None: the metric has a single protocol)."""

    metric: str
    protocol_key: str | None
    split: bool

    @property
    def header(self) -> str:
        return f"{self.metric} [{self.protocol_key or 'no protocol'}]" if self.split else self.metric

    def holds(self, record: dict) -> bool:
        """Whether the record has a value for this metric under this column's protocol."""
        if self.metric not in record["metrics"]:
            return False
        return not self.split or protocol_key(record, self.metric) == self.protocol_key


def load_records(study_dir: Path) -> list[dict]:
    """Every ledger record of the study, as dicts with the TrialRecord fields (defaults filled).

    A file that is not a record (truncated, foreign) is skipped with a warning naming it; the
    next run of the study moves it to the quarantine and runs its trial again."""
    defaults = {"metrics": {}, "protocols": {}, "intervals": {}, "artifacts": {}, "config": {}}
    records = []
    for path in sorted((Path(study_dir) / "ledger").glob("*.json")):
        if path.name.startswith("."):
            continue  # an atomic write in progress
        try:
            record = strict_loads(path.read_text())  # a NaN or an infinity is never a result
            if not isinstance(record, dict) or not isinstance(record.get("status"), str):
                raise ValueError("not a JSON object with a status")
        except (OSError, ValueError) as err:
            print(f"warning: {path}: skipped, not a ledger record ({err})", file=sys.stderr, flush=True)
            continue
        records.append({**defaults, "seconds": 0.0, "error": None, "attempts": 1, **record})
    return records


SEEDS_KEY = "eval.sample_seeds"


def one_per_cell(rows: list[dict], flat_config: Callable[[dict], dict[str, Any]]) -> list[dict]:
    """Trials that differ only in their sample seeds measure one cell: a trial is dropped when a
    finished trial of its cell has more seeds, so a cell given more seeds supersedes its earlier
    measurement instead of being counted twice (a failed attempt with more seeds leaves the
    finished one standing, and is kept to be reported). Order is kept."""
    cells, seeds = [], []
    most: dict[str, int] = {}  # cell -> the most seeds a finished trial of it has
    for row in rows:
        config = flat_config(row)
        cell = json.dumps({k: v for k, v in config.items() if k != SEEDS_KEY}, sort_keys=True, default=str)
        cells.append(cell)
        seeds.append(len(config.get(SEEDS_KEY) or ()))
        if row.get("status") == "finished":
            most[cell] = max(most.get(cell, 0), seeds[-1])
    return [row for row, cell, n in zip(rows, cells, seeds, strict=True) if n >= most.get(cell, 0)]


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {dotted key: leaf value}; an empty dict is kept as a leaf."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, prefix=f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def varying_keys(configs: list[dict]) -> list[str]:
    """Dotted config keys with more than one distinct value (a missing key counts as a value)."""
    flats = [flatten(c) for c in configs]
    keys = sorted({k for flat in flats for k in flat})
    return [k for k in keys if len({json.dumps(flat.get(k, _MISSING), sort_keys=True) for flat in flats}) > 1]


def protocol_key(record: dict, metric: str) -> str | None:
    """The protocol key a record's metric value was measured under, if recorded."""
    protocol = record["protocols"].get(metric) or {}
    return protocol.get(PROTOCOL_KEY)


def protocols_by_use(protocols: Iterable[dict | None]) -> list[str | None]:
    """The distinct keys of a metric's protocols (one per value), the one most values were
    measured under first; a tie goes to the larger ``num_samples``, then to the key's name; None
    (a value without a recorded protocol) comes last. The first is the study's main protocol:
    what its best-per-method table ranks by, its figures draw and its findings compare; values of
    two keys are never ranked, drawn or compared together."""
    counts: Counter = Counter()
    samples: dict[str | None, float] = {}
    for protocol in protocols:
        protocol = protocol if isinstance(protocol, dict) else {}
        key, n = protocol.get(PROTOCOL_KEY), protocol.get("num_samples")
        counts[key] += 1
        if _is_number(n) and math.isfinite(n):
            samples[key] = max(samples.get(key, -math.inf), n)
    return sorted(counts, key=lambda k: (k is None, -counts[k], -samples.get(k, -math.inf), k or ""))


def metric_columns(records: list[dict], metric: str) -> list[MetricColumn]:
    """The metric's columns: one per protocol key (the main protocol first), or one when all agree."""
    order = protocols_by_use(r["protocols"].get(metric) for r in records if metric in r["metrics"])
    if len(order) <= 1:
        return [MetricColumn(metric, next(iter(order), None), split=False)]
    return [MetricColumn(metric, key, split=True) for key in order]


def sort_best_first(records: list[dict], metric: str, mode: str) -> list[dict]:
    """Finished records best-first, grouped by the metric's protocol column; no value goes last."""
    columns = metric_columns(records, metric)
    sign = 1.0 if mode == "min" else -1.0

    def rank(record: dict) -> tuple:
        for index, column in enumerate(columns):
            value = record["metrics"].get(metric)
            if column.holds(record) and _is_number(value) and not math.isnan(value):
                return (0, index, sign * value)
        return (1, 0, 0.0)

    return sorted(records, key=rank)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def format_value(value: Any) -> str:
    """A number in 4 significant digits (integers whole); other values as compact JSON or text."""
    if value is None:
        return _MISSING
    if _is_number(value):
        if math.isfinite(value) and float(value).is_integer() and abs(value) < 1e7:
            return str(int(value))
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def metric_cell(record: dict, column: MetricColumn) -> str:
    """The value with its interval when the record has one: ± the half-width when the interval is
    centred on the value (within a tenth of the half-width), else both bounds (a bootstrap
    interval need not be: ± would claim bounds it does not have)."""
    if not column.holds(record):
        return _MISSING
    value = record["metrics"][column.metric]
    text = format_value(value)
    bounds = record["intervals"].get(column.metric)
    if bounds and len(bounds) == 2 and all(_is_number(b) for b in bounds):
        low, high = bounds
        half = (high - low) / 2
        if _is_number(value) and abs((low + high) / 2 - value) <= 0.1 * half:
            text += f" ± {half:.2g}"
        else:
            text += f" [{format_value(low)}, {format_value(high)}]"
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def short(trial_hash: str) -> str:
    return f"`{trial_hash[:10]}`"


def _header(study_dir: Path, title: str, metric: str, mode: str, counts: tuple[int, int]) -> list[str]:
    direction = "lower is better" if mode == "min" else "higher is better"
    return [
        f"# {title}",
        "",
        f"- Study: `{Path(study_dir).name}`",
        f"- Trials: {counts[0]} finished, {counts[1]} failed",
        f"- Metric: `{metric}` ({mode}: {direction})",
        "",
    ]


def trials_section(ordered: list[dict], metric: str, keys: list[str]) -> list[str]:
    """All finished trials best-first: varying config keys, the metric, other metrics, NFE, s/sample."""
    others = sorted({m for r in ordered for m in r["metrics"]} - {metric, NFE, SECONDS_PER_SAMPLE})
    columns = [c for name in [metric, *others] for c in metric_columns(ordered, name)]
    headers = ["#", "trial", *keys, *(c.header for c in columns), "NFE", "s/sample"]
    rows = []
    for rank, record in enumerate(ordered, start=1):
        flat = flatten(record["config"])
        row = [str(rank), short(record["trial_hash"]), *(format_value(flat.get(k)) for k in keys)]
        row += [metric_cell(record, c) for c in columns]
        row += [format_value(record["metrics"].get(name)) for name in (NFE, SECONDS_PER_SAMPLE)]
        rows.append(row)
    note = []
    if metric_columns(ordered, metric)[0].split:
        note = [f"`{metric}` was measured under several protocols: trials are ranked within each column.", ""]
    return ["## Finished trials (best first)", "", *note, *markdown_table(headers, rows), ""]


def _groups_section(ordered: list[dict], metric: str, keys: list[str]) -> list[str]:
    """The best trial per value of each varying group key (per protocol when the metric is split)."""
    columns = metric_columns(ordered, metric)
    split = columns[0].split
    lines: list[str] = []
    for key in (k for k in GROUP_KEYS if k in keys):
        best: dict[tuple[str, MetricColumn], dict] = {}
        for record in ordered:
            value = format_value(flatten(record["config"]).get(key))
            for column in (c for c in columns if c.holds(record)):
                best.setdefault((value, column), record)
        headers = [key, *(["protocol"] if split else []), "best trial", metric]
        rows = [
            [value, *([column.protocol_key or _MISSING] if split else [])]
            + [short(record["trial_hash"]), metric_cell(record, column)]
            for (value, column), record in best.items()
        ]
        lines += [f"### Best per `{key}`", "", *markdown_table(headers, rows), ""]
    return ["## Best per group", "", *lines] if lines else []


def _protocol_rows(ordered: list[dict], metric: str) -> list[tuple[str, str, dict]]:
    """(trial, metric, protocol): the best trial's protocols, plus the best trial of each other
    protocol column of the ranking metric."""
    rows = [(ordered[0]["trial_hash"], name, protocol) for name, protocol in ordered[0]["protocols"].items()]
    for column in metric_columns(ordered, metric)[1:]:
        holder = next((r for r in ordered if column.holds(r)), None)
        if holder is not None and metric in holder["protocols"]:
            rows.append((holder["trial_hash"], metric, holder["protocols"][metric]))
    return rows


def protocol_section(ordered: list[dict], metric: str) -> list[str]:
    """Every protocol field there is, one row per metric (a row per protocol for a split metric)."""
    rows = _protocol_rows(ordered, metric)
    if not rows:
        return []
    fields = {f for _, _, protocol in rows for f in protocol} - {"metric"}
    order = [f for f in _PROTOCOL_FIRST if f in fields] + sorted(fields - set(_PROTOCOL_FIRST))
    table = [
        [name, short(trial_hash), *(format_value(protocol.get(f)) for f in order)]
        for trial_hash, name, protocol in rows
    ]
    return ["## Protocols", "", *markdown_table(["metric", "trial", *order], table), ""]


CEILING = "option.classifier_heldout_accuracy"  # caption agreement's protocol: real data's agreement


def ceiling_section(ordered: list[dict]) -> list[str]:
    """For each metric whose protocol records its classifier's held-out accuracy (caption
    agreement), that accuracy: the agreement of real held-out data, the ceiling of the column."""
    lines = []
    for name, protocol in sorted(ordered[0]["protocols"].items()) if ordered else []:
        if protocol.get(CEILING) is not None:
            lines.append(
                f"- `{name}` ceiling: real held-out data agree {format_value(protocol[CEILING])} under "
                f"{protocol.get('extractor', 'the classifier')} (its held-out accuracy)"
            )
    return ["## Ceilings", "", *lines, ""] if lines else []


def failed_section(failed: list[dict], keys: list[str]) -> list[str]:
    """One line per failed trial: its varying settings and the first line of its error."""
    if not failed:
        return []
    lines = ["## Failed trials", ""]
    for record in failed:
        flat = flatten(record["config"])
        settings = ", ".join(f"{k}={format_value(flat.get(k))}" for k in keys)
        error = (record["error"] or "no error recorded").strip().splitlines() or ["no error recorded"]
        where = f" ({settings})" if settings else ""
        lines.append(f"- {short(record['trial_hash'])}{where}, attempts {record['attempts']}: {error[0]}")
    return [*lines, ""]


def data_section(study_dir: Path) -> list[str]:
    """The datasets the study used (``datasets.json``, written by the harness), with a learned
    tokenizer's reconstruction figures: the floor under every FID in the tables."""
    path = Path(study_dir) / "datasets.json"
    if not path.is_file():
        return []
    datasets = json.loads(path.read_text())
    learned = any(d.get("tokenizer") for d in datasets)  # pixel tokens (digits, clips) have no columns
    columns = _TOKENIZER_COLUMNS if learned else {}
    rows = []
    for d in datasets:
        tok = d.get("tokenizer") or {}
        options = json.dumps(d.get("options") or {}, sort_keys=True)
        grid = "x".join(str(g) for g in d["grid"])
        rows.append(
            [d["name"], options, str(d["num_train"]), str(d["num_heldout"]), grid, str(d["vocab_size"])]
            + [format_value(tok.get(k)) for k in columns]
        )
    headers = ["dataset", "options", "train", "held out", "tokens", "vocabulary", *columns.values()]
    note = (
        "Reconstruction FID: held-out images through the tokenizer against the real training"
        " images; held-out real FID: the held-out images themselves. Both use every held-out image."
    )
    return ["## Data", "", *markdown_table(headers, rows), "", *([note, ""] if learned else [])]


_TOKENIZER_COLUMNS = {
    "heldout_mse": "recon. MSE",
    "heldout_perplexity": "code perplexity",
    "reconstruction_fid": "recon. FID",
    "heldout_real_fid": "held-out real FID",
}


def _samples_section(best: dict, study_dir: Path) -> list[str]:
    """The best trial's sample grid as an image link relative to the study folder."""
    path = best["artifacts"].get(SAMPLES_PNG)
    if not path:
        return []
    image = Path(path)
    if not image.is_absolute() and not (study_dir / image).exists():
        image = Path.cwd() / image  # a path relative to where the study ran
    link = image if not image.is_absolute() else Path(os.path.relpath(image, study_dir.resolve()))
    return [
        "## Samples of the best trial",
        "",
        f"![samples of {best['trial_hash'][:10]}]({link.as_posix()})",
        "",
    ]


def atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_markdown_report(study_dir: Path, title: str, metric: str, mode: str) -> Path:
    """Write ``<study_dir>/report.md`` from the study's ledger and return its path.

    mode: ``"min"`` when lower values of ``metric`` are better, ``"max"`` when higher are.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode {mode!r}; expected 'min' or 'max'")
    study_dir = Path(study_dir)
    records = one_per_cell(load_records(study_dir), lambda record: flatten(record["config"]))
    finished = [r for r in records if r.get("status") == "finished"]
    failed = [r for r in records if r.get("status") != "finished"]
    keys = varying_keys([r["config"] for r in records])
    ordered = sort_best_first(finished, metric, mode)
    lines = _header(study_dir, title, metric, mode, (len(finished), len(failed)))
    if ordered:
        lines += trials_section(ordered, metric, keys) + _groups_section(ordered, metric, keys)
        lines += ceiling_section(ordered) + protocol_section(ordered, metric)
        lines += _samples_section(ordered[0], study_dir)
    else:
        lines += ["No finished trials.", ""]
    lines += failed_section(failed, keys) + data_section(study_dir)
    path = study_dir / "report.md"
    atomic_write(path, "\n".join(lines).rstrip("\n") + "\n")
    return path
