"""Study files: a base config, fixed overrides, named variants and a search space over dotted keys.

name: quickstart
base: base.yaml                      # relative to the study file
overrides: {train.steps: 800}
variants:                            # named bundles of overrides, crossed with the space
  interpolant: {}
  maskgit: {train.corruption: maskgit, sampler.name: maskgit}
space:
  model.timestep: [explicit, implicit]            # a list is a grid
  sampler.temperature: {uniform: [0.5, 1.5]}      # also loguniform, randint, choice, grid
metric: fid                           # direction from the evaluator's registry unless mode is given
search: {algorithm: grid}             # grid | random | optuna (with num_trials)
seeds: [0]                            # training seeds, an axis of its own
refine:                               # per-cell overrides, after the space and the variants' pins
  - where: {model.timestep: implicit, sampler.temperature: 1.0}
    overrides: {eval.sample_seeds: [0, 1, 2, 3]}
resources: {cpu: 1, gpu: 0}
concurrency: 2
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.config.files import read_base, read_reference, read_yaml
from harness.config.recipes import RECIPES
from harness.config.search import DISTRIBUTIONS as DISTRIBUTIONS  # re-exported: where studies are read
from harness.config.search import (
    ExtendRule,
    axis_values,
    check_extend,
    check_objectives,
    check_settable,
    direction_of,
)
from harness.config.section import StrictModel
from harness.config.trial import (
    ConfigError,
    Seed,
    TrialConfig,
    build_trial,
    check_key,
    distinct_seeds,
    get_dotted,
    set_dotted,
)
from harness.errors import did_you_mean, short
from harness.evaluation import METRICS

# A study name is a folder under the runs root: a plain name, never a path.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
# What else a runs root holds: a study of one of these names would take its place.
RESERVED_NAMES = ("checkpoints", "mlartifacts", "mlflow.db", "mlflow.db.lock", "quarantine")
STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SearchSpec(StrictModel):
    model_config = STRICT
    algorithm: Literal["grid", "random", "optuna"] = "grid"
    num_trials: int = Field(default=8, ge=1, le=10**9)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)  # what Optuna's and numpy's generators take
    # The most trials a study may plan (grid cells x variants x seeds, or num_trials): a typo
    # such as num_trials: 1e9 is refused with its count instead of running validation for hours;
    # raising it has a ceiling too (a million trials is no study one driver plans).
    max_trials: int = Field(default=5000, ge=1, le=1_000_000)
    # Optuna's multi-objective TPE over these metrics (e.g. [fid, seconds_per_sample]): it looks
    # for the quality / cost Pareto front; the study's metric, one of them, ranks the report.
    objectives: list[str] = Field(default_factory=list)


class SchedulerSpec(StrictModel):
    model_config = STRICT
    name: Literal["fifo", "asha"] = "fifo"
    grace_period: int = Field(default=1, ge=1)
    reduction_factor: float = Field(default=3.0, gt=1)


class Resources(StrictModel):
    """Per trial; with ``workers`` > 1 each training runs data parallel on that many Ray Train
    workers of ``cpu`` and ``gpu`` each (harness.ray.distributed), the same steps as one process."""

    model_config = STRICT
    cpu: float = Field(default=1.0, gt=0, le=4096)
    gpu: float = Field(default=0.0, ge=0, le=4096)
    workers: int = Field(default=1, ge=1, le=4096)


class Refinement(StrictModel):
    """Overrides for the cells whose resolved config matches ``where`` (e.g. more sample seeds for
    the two trials a finding compares; ``run_study.py extend --seeds`` writes these)."""

    model_config = STRICT
    where: dict[str, Any] = Field(min_length=1)
    overrides: dict[str, Any] = Field(min_length=1)

    def matches(self, config: dict[str, Any]) -> bool:
        return all(get_dotted(config, key) == value for key, value in self.where.items())


class StudySpec(StrictModel):
    """A validated study file."""

    model_config = STRICT
    name: str = Field(pattern=NAME_PATTERN)
    base: str = "base.yaml"
    description: str = ""
    overrides: dict[str, Any] = Field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    space: dict[str, Any] = Field(default_factory=dict)
    metric: str = "fid"
    mode: Literal["min", "max"] | None = None
    search: SearchSpec = Field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1, max_length=1000)
    resources: Resources = Field(default_factory=Resources)
    concurrency: int = Field(default=2, ge=1, le=100_000)
    max_failures: int = Field(default=1, ge=0)
    paper_reference: str | None = None  # "<file relative to the study>#<entry>": the paper's numbers
    extend: dict[str, ExtendRule] = Field(default_factory=dict)  # run_study.py extend: axis -> rule
    refine: list[Refinement] = Field(default_factory=list)
    compare_front: str | None = Field(default=None, pattern=NAME_PATTERN)  # its front in the report
    base_config: dict[str, Any] = Field(default_factory=dict)  # filled in by load_study
    reference_data: dict[str, Any] = Field(default_factory=dict)  # filled in by load_study

    _seeds = field_validator("seeds")(distinct_seeds)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name.lower() in RESERVED_NAMES:
            raise ValueError(
                f"{name!r} is a name the runs root keeps for itself; expected none of {RESERVED_NAMES}"
            )
        return name


def _field_hint(loc: tuple) -> str:
    """'; did you mean ...?' for an unknown study field, from the fields of its section."""
    model: type[BaseModel] = StudySpec
    for part in loc[:-1]:
        info = model.model_fields.get(str(part))
        if info is None or not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)):
            return ""
        model = info.annotation
    if len(str(loc[-1])) > 200:  # a typo is short; a huge key gets no suggestion
        return ""
    return did_you_mean(loc[-1], [f for f in model.model_fields if f != "base_config"])


def load_study(path: str | Path) -> StudySpec:
    """Reads and validates a study file and its base; raises ConfigError before any work starts."""
    path = Path(path)
    raw = read_yaml(path)
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as err:
        lines = [
            f"  {'.'.join(str(part)[:100] for part in e['loc'])} = {short(e.get('input'))}: {e['msg'][:300]}"
            + (_field_hint(e["loc"]) if e["type"] == "extra_forbidden" else "")
            for e in err.errors()
        ]
        raise ConfigError(f"invalid study file {path}:\n" + "\n".join(lines)) from None
    spec = spec.model_copy(update={"base_config": read_base(path.parent / spec.base)})
    if spec.paper_reference:
        spec = spec.model_copy(update={"reference_data": read_reference(path.parent, spec.paper_reference)})
    validate_study(spec)
    return spec


@dataclass(frozen=True)
class Axis:
    """One axis of a study's space: a grid / choice of values or a distribution over [low, high)
    (``randint``: integers low..high - 1). The one place a distribution's meaning is written:
    random search draws from it here, Ray Tune gets it from ``tune_distribution``."""

    key: str
    kind: str
    params: list[Any]

    @classmethod
    def of(cls, key: str, value: Any) -> Axis:
        return cls(key, *axis_values(key, value))

    def probe_values(self) -> list[Any]:
        """Values that stand for the axis when validating types."""
        if self.kind in ("grid", "choice"):
            return self.params
        if self.kind == "randint":
            return [int(self.params[0]), int(self.params[1]) - 1]
        return [float(self.params[0]), float(self.params[1])]

    def draw(self, rng: random.Random) -> Any:
        if self.kind in ("grid", "choice"):
            return rng.choice(self.params)
        low, high = self.params
        if self.kind == "uniform":
            return rng.uniform(low, high)
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(low), math.log(high)))
        return rng.randrange(int(low), int(high))

    def tune_distribution(self) -> tuple[str, tuple[Any, ...]]:
        """(name of the ``ray.tune`` search-space function, its arguments)."""
        if self.kind in ("grid", "choice"):
            return "choice", (self.params,)
        if self.kind == "randint":
            return "randint", (int(self.params[0]), int(self.params[1]))
        return self.kind, (float(self.params[0]), float(self.params[1]))


def axes(spec: StudySpec) -> list[Axis]:
    return [Axis.of(key, value) for key, value in spec.space.items()]


def resolve(spec: StudySpec, assignment: dict[str, Any], variant: str | None, seed: int) -> TrialConfig:
    """base <- the variant's recipe <- overrides <- space assignment <- variant pins <- the
    refinements whose ``where`` matches the config so far <- seed, validated.

    A variant's pins win over the space, so axes that do not apply to a variant (the kappa
    scheduler of the MaskGIT recipe, say) collapse into one trial instead of multiplying.
    """
    d: dict[str, Any] = copy.deepcopy(spec.base_config)  # plain YAML types (a YAML round trip took ~20 ms)
    pins = dict(spec.variants.get(variant, {})) if variant else {}
    recipe = pins.pop("recipe", None)
    if recipe is not None:  # under the study's overrides and space: a sweep still sweeps the recipe
        if not isinstance(recipe, str) or recipe not in RECIPES:
            raise ConfigError(
                f"variants.{variant}.recipe: unknown {short(recipe)}; expected one of {sorted(RECIPES)}"
                f"{did_you_mean(recipe, RECIPES) if isinstance(recipe, str) else ''}"
            )
        for key, value in RECIPES[recipe].overrides.items():
            set_dotted(d, key, value)
        d["recipe"] = recipe
    for layer in (spec.overrides, assignment, pins):
        for key, value in layer.items():
            set_dotted(d, key, value)
    for refinement in [r for r in spec.refine if r.matches(d)]:  # matched before any applies
        for key, value in refinement.overrides.items():
            set_dotted(d, key, value)
    d["seed"] = seed
    where = ", ".join(
        ([f"variant {variant}"] if variant else []) + ([short(assignment, 200)] if assignment else [])
    )
    trial = build_trial(d, where=f"trial ({where})" if where else "trial")
    if trial.train.batch_size % spec.resources.workers:
        raise ConfigError(
            f"train.batch_size = {trial.train.batch_size} is not divisible by resources.workers = "
            f"{spec.resources.workers}: each worker trains batch_size / workers rows"
        )
    return trial


def planned_trials(spec: StudySpec) -> int:
    """How many trials the study asks for, counted without expanding anything."""
    if spec.search.algorithm != "grid":
        return spec.search.num_trials
    cells = math.prod(len(axis.params) for axis in axes(spec))
    return cells * max(1, len(spec.variants)) * len(spec.seeds)


def validate_study(spec: StudySpec) -> None:
    """Checks keys, distributions, types and the metric before anything starts."""
    count = planned_trials(spec)
    if count > spec.search.max_trials:
        raise ConfigError(
            f"the study plans {count:,} trials, more than search.max_trials = {spec.search.max_trials:,};"
            " narrow the space or raise search.max_trials"
        )
    for key in [
        *spec.overrides,
        *spec.space,
        *(k for v in spec.variants.values() for k in v if k != "recipe"),
        *(k for r in spec.refine for k in [*r.where, *r.overrides] if k != "recipe"),
    ]:
        check_key(key)
    check_settable(spec)
    if spec.search.algorithm == "grid":
        bad = [k for k, v in spec.space.items() if axis_values(k, v)[0] not in ("grid", "choice")]
        if bad:
            raise ConfigError(
                f"search.algorithm grid needs grid/choice axes; {bad} are continuous: use random or optuna"
            )
    # Every axis value is tried in a real cell of the study: the other axes at their first value
    # (a config outside the space, e.g. without the axis that makes it valid, is not judged).
    probes = {axis.key: axis.probe_values() for axis in axes(spec)}
    corner = {key: values[0] for key, values in probes.items()}
    variants = list(spec.variants) or [None]
    first = resolve(spec, corner, variants[0], spec.seeds[0])
    for variant in variants:
        resolve(spec, corner, variant, spec.seeds[0])
        for key, values in probes.items():
            for value in values:
                resolve(spec, {**corner, key: value}, variant, spec.seeds[0])
    check_extend(spec.extend, spec.space, spec.search.algorithm)
    if spec.refine and spec.search.algorithm == "grid":
        _check_refinements(spec)
    if not spec.space and not spec.variants and len(spec.seeds) == 1 and spec.search.algorithm != "grid":
        raise ConfigError("space is empty: nothing to search")
    extra = [e.key(m) for e in first.eval.extra_protocols for m in e.metrics]
    produced = set(METRICS) | {"nfe", "seconds_per_sample", "heldout_masked_ce"} | set(extra)
    if spec.metric not in produced:
        raise ConfigError(
            f"metric {spec.metric!r} is not produced by the evaluator; expected one of {sorted(produced)}"
            f"{did_you_mean(spec.metric, produced)}"
        )
    if spec.metric in METRICS and spec.metric not in first.eval.metrics:
        raise ConfigError(f"metric {spec.metric!r} is not in eval.metrics {first.eval.metrics}: add it there")
    check_objectives(
        spec.search.objectives, spec.metric, spec.search.algorithm, spec.scheduler.name, produced
    )
    for name in spec.search.objectives:
        if name in METRICS and name not in first.eval.metrics:
            raise ConfigError(
                f"search.objectives: {name!r} is not in eval.metrics {first.eval.metrics}: add it there"
            )


def _check_refinements(spec: StudySpec) -> None:
    """Each refinement must reach a cell of the grid (a typo in ``where`` refines nothing)."""
    cells = [t.model_dump(mode="json") for t in expand_grid(spec)]
    for i, refinement in enumerate(spec.refine):
        if not any(refinement.matches(cell) for cell in cells):
            raise ConfigError(
                f"refine[{i}].where = {short(refinement.where, 200)} matches no cell of the grid;"
                " expected the values of a cell (space axes, variant pins)"
            )


def metric_mode(spec: StudySpec) -> str:
    if spec.mode is not None:
        return spec.mode
    return direction_of(spec.metric)


def objective_modes(spec: StudySpec) -> list[str]:
    """The direction of each of ``search.objectives`` (the study's metric keeps its mode)."""
    return [metric_mode(spec) if m == spec.metric else direction_of(m) for m in spec.search.objectives]


def expand_grid(spec: StudySpec) -> list[TrialConfig]:
    """Every trial of a grid study: variants x space grid x seeds, duplicates removed."""
    keys = list(spec.space)
    axes = [axis_values(k, spec.space[k])[1] for k in keys]
    trials: dict[str, TrialConfig] = {}
    for variant in list(spec.variants) or [None]:
        for values in itertools.product(*axes):
            for seed in spec.seeds:
                trial = resolve(spec, dict(zip(keys, values, strict=True)), variant, seed)
                trials.setdefault(trial.trial_hash(), trial)
    return list(trials.values())


def sample_random(spec: StudySpec) -> list[TrialConfig]:
    """``search.num_trials`` trials drawn from the space (seeded), for dry runs and random search."""
    rng = random.Random(spec.search.seed)
    variants = list(spec.variants) or [None]
    trials = []
    for i in range(spec.search.num_trials):
        assignment = {axis.key: axis.draw(rng) for axis in axes(spec)}
        trials.append(resolve(spec, assignment, variants[i % len(variants)], spec.seeds[i % len(spec.seeds)]))
    return trials


def apply_assignment(spec: StudySpec, assignment: dict[str, Any]) -> TrialConfig:
    """A trial from a searcher's assignment (dotted keys plus optional 'variant' and 'seed')."""
    assignment = dict(assignment)
    variant = assignment.pop("variant", None)
    seed = assignment.pop("seed", spec.seeds[0])
    return resolve(spec, assignment, variant, seed)
