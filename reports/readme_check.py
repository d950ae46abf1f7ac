"""Each README figure measured on its study's ledger and compared with the quoted value.

A figure that cannot be measured (no trial or several trials match its selector, the trial lacks
the metric, the picked trial is not the one the README names) is an error that names the figure;
a figure measured outside its tolerance is a mismatch, which ``--write`` regenerates.
Reads the study folder's JSON files (``ledger/*.json``, ``datasets.json``); no torch, no Ray.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import scipy.stats

from harness.errors import UserError, did_you_mean
from reports.markdown import flatten, load_records, markdown_table, varying_keys
from reports.readme_numbers import ONE_OF, Figure, ReadmeNumbers, allowed

LEVEL = 0.95  # the level of the ledger's Student-t intervals over sample seeds
DATASETS_FILE = "datasets.json"


@dataclass(frozen=True)
class Measured:
    value: float
    ci: float | None = None  # half-width of the 95% interval, where the trial has one
    trial: str | None = None  # the trial hash it was read from (None: a dataset figure)


@dataclass(frozen=True)
class Check:
    """One figure: what the README quotes, what the study measured, how far they may differ."""

    block: str
    name: str
    figure: Figure
    number_format: str
    allowed: float
    measured: Measured | None = None
    error: str | None = None  # why nothing comparable was measured: --write cannot fix it

    @property
    def status(self) -> str:
        if self.figure.unchecked:
            return "unchecked"
        if self.error is not None or self.measured is None:
            return "error"
        return "ok" if abs(self.measured.value - self.figure.quoted) <= self.allowed else "MISMATCH"

    @property
    def failed(self) -> bool:
        return self.status in ("error", "MISMATCH")


def _matches(flat: dict[str, Any], key: str, wanted: Any) -> bool:
    if key not in flat:
        return False
    if isinstance(wanted, dict) and set(wanted) == {ONE_OF}:
        return flat[key] in wanted[ONE_OF]
    return flat[key] == wanted


def candidates(records: list[dict], figure: Figure, where: str) -> list[dict]:
    """The finished records the figure's selector matches; UserError when none does."""
    if not records:
        raise UserError(f"{where}: the study's ledger holds no trial (did the study run?)")
    flats = [(record, flatten(record["config"])) for record in records]
    known = {key for _, flat in flats for key in flat}
    for key in [*figure.select, *figure.expect]:
        if key not in known:
            hint = did_you_mean(key, known)
            raise UserError(f"{where}: config key {key!r} is in no trial of the study{hint}")
    matched = [r for r, flat in flats if all(_matches(flat, k, v) for k, v in figure.select.items())]
    finished = [r for r in matched if r["status"] == "finished"]
    if not finished:
        failed = f" ({len(matched)} failed: see their ledger records)" if matched else ""
        raise UserError(f"{where}: no finished trial matches select {figure.select}{failed}")
    return finished


def read(record: dict, figure: Figure, where: str) -> Measured:
    """The figure's quantity in one ledger record."""
    metric, trial = figure.metric, record["trial_hash"]
    if metric not in record["metrics"]:
        known = sorted(record["metrics"])
        raise UserError(f"{where}: trial {trial[:10]} has no metric {metric!r}{did_you_mean(metric, known)}")
    mean = float(record["metrics"][metric])
    bounds = record["intervals"].get(metric)
    half = (bounds[1] - bounds[0]) / 2 if bounds else None
    if figure.quantity == "value":
        return Measured(mean, half, trial)
    if figure.quantity == "sd_percent":
        seeds = len(record["config"].get("eval", {}).get("sample_seeds", []))
        if half is None or seeds < 2:
            raise UserError(f"{where}: trial {trial[:10]} has one sample set: no spread across seeds")
        sd = half * math.sqrt(seeds) / scipy.stats.t.ppf(0.5 + LEVEL / 2, df=seeds - 1)
        return Measured(100 * sd / abs(mean), None, trial)
    field = figure.quantity.split(":", 1)[1]  # protocol:FIELD
    value = record["protocols"].get(metric, {}).get(field)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise UserError(f"{where}: trial {trial[:10]}: the {metric} protocol has no number {field!r}")
    return Measured(float(value), None, trial)


def measure(figure: Figure, records: list[dict], datasets: list[dict] | None, where: str) -> Measured:
    """The figure's value in the study's results (the selected trial, or the dataset summary)."""
    if figure.quantity.startswith("dataset:"):
        return Measured(dataset_field(datasets, figure.quantity.split(":", 1)[1], where))
    found = candidates(records, figure, where)
    if figure.pick is None and len(found) > 1:
        differ = varying_keys([r["config"] for r in found])
        raise UserError(
            f"{where}: {len(found)} trials match select {figure.select}; they differ in {differ}:"
            " add keys to select, or pick: min | max"
        )
    values = [read(record, figure, where) for record in found]
    keys = sorted({str(r.get("protocols", {}).get(figure.metric, {}).get("key")) for r in found})
    if len(keys) > 1:  # pick: min | max across protocols would compare numbers that do not compare
        raise UserError(
            f"{where}: the {len(found)} trials select {figure.select} matches differ in the"
            f" {figure.metric} protocol key ({', '.join(keys)}): add keys to select so one protocol remains"
        )
    chosen = (min if figure.pick == "min" else max)(values, key=lambda m: m.value)
    if figure.ci is not None and chosen.ci is None:
        raise UserError(f"{where}: the README quotes an interval; trial {chosen.trial[:10]} has none")
    flat = flatten(next(r for r in found if r["trial_hash"] == chosen.trial)["config"])
    wrong = {k: flat.get(k) for k, v in figure.expect.items() if flat.get(k) != v}
    if wrong:
        raise UserError(
            f"{where}: the trial picked is {chosen.trial[:10]} with {wrong}; the README names"
            f" {figure.expect}: edit the README's words (and expect) first"
        )
    return chosen


def dataset_field(datasets: list[dict] | None, key: str, where: str) -> float:
    """A dotted field of the study's only dataset summary (``datasets.json``)."""
    if not datasets or len(datasets) != 1:
        count = 0 if not datasets else len(datasets)
        raise UserError(f"{where}: dataset:{key} needs {DATASETS_FILE} with one dataset; found {count}")
    value = flatten(datasets[0]).get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        known = sorted(flatten(datasets[0]))
        raise UserError(f"{where}: {DATASETS_FILE} has no number {key!r}{did_you_mean(key, known)}")
    return float(value)


def check_block(
    spec: ReadmeNumbers, block_id: str, study_dir: Path, planned: set[str] | None = None
) -> list[Check]:
    """Every figure of the block against the study's ledger. ``planned``: the trial hashes the study
    file plans now; records of other trials (an older version of the study) are ignored."""
    block = spec.blocks[block_id]
    records = [r for r in load_records(study_dir) if planned is None or r["trial_hash"] in planned]
    path = study_dir / DATASETS_FILE
    datasets = json.loads(path.read_text()) if path.is_file() else None
    checks = []
    for name, figure in block.figures.items():
        number_format = block.number_format(name)
        tolerance = allowed(figure, number_format, spec.tolerance)
        check = Check(block_id, name, figure, number_format, tolerance)
        if not figure.unchecked:
            try:
                check = replace(check, measured=measure(figure, records, datasets, f"{block_id}/{name}"))
            except UserError as err:
                check = replace(check, error=str(err))
        checks.append(check)
    return checks


def unmeasured(spec: ReadmeNumbers, block_id: str, error: str) -> list[Check]:
    """The block's figures, each failed with the same error (its study did not run)."""
    block = spec.blocks[block_id]
    checks = []
    for name, figure in block.figures.items():
        number_format = block.number_format(name)
        tolerance = allowed(figure, number_format, spec.tolerance)
        checks.append(Check(block_id, name, figure, number_format, tolerance, error=error))
    return checks


def _number(value: float, ci: float | None, number_format: str) -> str:
    return format(value, number_format) + ("" if ci is None else f" ± {ci:{number_format}}")


def checks_table(checks: Iterable[Check]) -> list[str]:
    """One row per figure: quoted, ours, how far they may differ, the trial, the verdict."""
    rows = []
    for c in checks:
        quoted = _number(c.figure.quoted, c.figure.ci, c.number_format)
        ours = "—" if c.measured is None else _number(c.measured.value, c.measured.ci, c.number_format)
        trial = (c.measured.trial or "")[:10] if c.measured else ""
        tolerance = "" if c.status == "unchecked" else f"± {c.allowed:.3g}"
        note = c.error or c.figure.unchecked or ""
        rows.append([f"{c.block}/{c.name}", quoted, ours, tolerance, trial, c.status, note])
    return markdown_table(["figure", "quoted", "ours", "tolerance", "trial", "status", "note"], rows)
