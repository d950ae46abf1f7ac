"""Growing a grid past an edge optimum (``run_study.py extend``).

A study's ``extend: {axis: {step | factor, min, max}}`` names the numeric grid axes whose optimum
the study means to find. After a round, each group of trials that share their categorical
settings (the space's non-numeric axes and whatever the variants set: a "method") has its best
trial; where that trial sits at an edge of an extended axis, the next value past that edge (by
``step`` or ``factor``, within ``min`` / ``max``) joins the grid. The grown study is written to
the study folder's ``study.yaml`` and run again: finished cells are in the ledger, so only the
new ones run. It stops when no best trial sits at an edge it may pass.

``--seeds N`` instead gives more sample seeds (up to N) to the cells behind the study's findings
that are undetermined for overlapping CIs: each such cell gets a ``refine`` entry (its settings ->
``eval.sample_seeds``), and only its new seeds are drawn (the others' samples are on disk).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.cache import atomic_write_text
from harness.config.search import ExtendRule, numeric_grid
from harness.config.study import Refinement, StudySpec, metric_mode
from harness.config.trial import get_dotted
from harness.run.ledger import TrialRecord

STUDY_FILE = "study.yaml"  # a study folder's copy of its study (its base and reference beside it)


@dataclass(frozen=True)
class Extension:
    axis: str
    added: list[float]
    why: list[str]  # per value: which method's best sat at which edge


def _numeric(values: Any) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    )


def method_keys(spec: StudySpec) -> list[str]:
    """The settings that tell methods apart: the space's non-numeric axes and every key a variant
    sets (the numeric axes, e.g. steps or CFG, are settings a method's best is taken over)."""
    keys = {k for k, v in spec.space.items() if not numeric_grid(v)}
    keys |= {k for variant in spec.variants.values() for k in variant}
    return sorted(keys)


def _like(value: float, grid: list[float]) -> float | int:
    """An integer axis stays integer (rounded); otherwise the float, rid of accumulated fuzz."""
    if all(isinstance(v, int) for v in grid):
        return round(value)
    return round(value, 10)


def _next(rule: ExtendRule, edge: float, up: bool, grid: list[float]) -> float | int | None:
    """The value past ``edge``, or None at the bound; an integer axis whose step rounds back to
    its edge (factor 1.1 from 4) moves by one instead of standing still."""
    beyond = rule.beyond(edge, up)
    if beyond is None:
        return None
    value = _like(beyond, grid)
    if value == edge:
        value = edge + (1 if up else -1)
        bound = rule.max if up else rule.min
        if value > bound if up else value < bound:
            return None
    return value


def edge_extensions(spec: StudySpec, records: list[TrialRecord]) -> tuple[list[Extension], list[str]]:
    """(what to add, per extended axis; the edges where the bound stops the growth)."""
    minimize = metric_mode(spec) == "min"
    finished = [r for r in records if r.status == "finished" and spec.metric in r.metrics]
    keys = method_keys(spec)
    best: dict[tuple, TrialRecord] = {}
    for r in finished:
        group = tuple(repr(get_dotted(r.config, k)) for k in keys)
        held = best.get(group)
        value = r.metrics[spec.metric]
        if held is None or (
            value < held.metrics[spec.metric] if minimize else value > held.metrics[spec.metric]
        ):
            best[group] = r
    extensions, stopped = [], []
    for axis, rule in spec.extend.items():
        grid = sorted(spec.space[axis])
        added: dict[float | int, list[str]] = {}
        for group, r in best.items():
            method = ", ".join(f"{k}={v}" for k, v in zip(keys, group, strict=True)) or "every trial"
            at = get_dotted(r.config, axis)
            for up, edge in ((True, grid[-1]), (False, grid[0])):
                if at != edge:
                    continue
                side = "top" if up else "bottom"
                value = _next(rule, edge, up, grid)
                if value is None:
                    stopped.append(f"{axis}: {method} is best at the grid's {side}, {edge}, the stated bound")
                    continue
                if value not in grid:
                    added.setdefault(value, []).append(f"{method} best at the grid's {side}, {edge}")
        if added:
            values = sorted(added)
            extensions.append(Extension(axis, values, [f"{v}: {'; '.join(added[v])}" for v in values]))
    return extensions, stopped


def extended(spec: StudySpec, extensions: list[Extension]) -> StudySpec:
    space = dict(spec.space)
    for e in extensions:
        space[e.axis] = sorted(set(space[e.axis]) | set(e.added))
    return spec.model_copy(update={"space": space})


def write_study(spec: StudySpec, study_dir: Path) -> None:
    """The study as its folder's copy: ``study.yaml`` beside the ``base.yaml`` and ``reference.yaml``
    it was resolved with (all three rewritten, so the copy never names a base or a reference the
    folder holds from an older version of the study)."""
    data = spec.model_dump(mode="json", exclude={"base_config", "reference_data"})
    atomic_write_text(study_dir / "base.yaml", yaml.safe_dump(spec.base_config, sort_keys=False))
    data["base"] = "base.yaml"
    if data.get("paper_reference"):
        entry = data["paper_reference"].partition("#")[2]
        reference = yaml.safe_dump({entry: spec.reference_data}, sort_keys=False)
        atomic_write_text(study_dir / "reference.yaml", reference)
        data["paper_reference"] = f"reference.yaml#{entry}"
    atomic_write_text(study_dir / STUDY_FILE, yaml.safe_dump(data, sort_keys=False))


SEEDS_KEY = "eval.sample_seeds"


def cell_keys(spec: StudySpec) -> list[str]:
    """The settings that name a cell of the grid: the space's axes and what the variants pin."""
    keys = dict.fromkeys(spec.space)
    for pins in spec.variants.values():
        keys.update(dict.fromkeys(pins))
    return list(keys)


def more_seeds(
    spec: StudySpec, records: list[TrialRecord], wanted: list[str], seeds: int
) -> tuple[StudySpec, list[str]]:
    """The study with each wanted trial's cell raised to ``seeds`` sample seeds (its own seeds
    kept, the next unused integers added), and a line per cell raised; cells that have them
    already are left alone (no lines: nothing to run)."""
    by_hash = {r.trial_hash: r for r in records}
    refine = list(spec.refine)
    lines = []
    for trial_hash in wanted:
        record = by_hash.get(trial_hash)
        if record is None:
            continue
        where = {k: get_dotted(record.config, k) for k in cell_keys(spec)}
        given = [r.overrides.get(SEEDS_KEY) or [] for r in refine if r.where == where]
        have = max([list(get_dotted(record.config, SEEDS_KEY) or []), *given], key=len)  # a stale record: its
        if len(have) >= seeds:  # cell's refinement already gives more
            continue
        extra = [s for s in range(seeds + len(have)) if s not in have][: seeds - len(have)]
        refine = [r for r in refine if r.where != where]
        refine.append(Refinement(where=where, overrides={SEEDS_KEY: have + extra}))
        cell = ", ".join(f"{k}={v}" for k, v in where.items())
        lines.append(f"{cell}: {len(have)} -> {seeds} sample seeds")
    return spec.model_copy(update={"refine": refine}), lines
