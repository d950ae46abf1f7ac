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
resources: {cpu: 1, gpu: 0}
concurrency: 2
"""

from __future__ import annotations

import difflib
import itertools
import math
import random
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.config.recipes import RECIPES
from harness.config.trial import ConfigError, TrialConfig, build_trial, check_key, set_dotted
from harness.evaluation import METRICS

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")


class SearchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    algorithm: Literal["grid", "random", "optuna"] = "grid"
    num_trials: int = Field(default=8, ge=1)
    seed: int = 0


class SchedulerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Literal["fifo", "asha"] = "fifo"
    grace_period: int = Field(default=1, ge=1)
    reduction_factor: float = Field(default=3.0, gt=1)


class Resources(BaseModel):
    """Per trial; with ``workers`` > 1 each training runs data parallel on that many Ray Train
    workers of ``cpu`` and ``gpu`` each (harness.ray.distributed), the same steps as one process."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cpu: float = Field(default=1.0, gt=0)
    gpu: float = Field(default=0.0, ge=0)
    workers: int = Field(default=1, ge=1)


class StudySpec(BaseModel):
    """A validated study file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    base: str = "base.yaml"
    description: str = ""
    overrides: dict[str, Any] = Field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    space: dict[str, Any] = Field(default_factory=dict)
    metric: str = "fid"
    mode: Literal["min", "max"] | None = None
    search: SearchSpec = Field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    resources: Resources = Field(default_factory=Resources)
    concurrency: int = Field(default=2, ge=1)
    max_failures: int = Field(default=1, ge=0)
    paper_reference: str | None = None  # "<file relative to the study>#<entry>": the paper's numbers
    base_config: dict[str, Any] = Field(default_factory=dict)  # filled in by load_study
    reference_data: dict[str, Any] = Field(default_factory=dict)  # filled in by load_study


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _field_hint(loc: tuple) -> str:
    """'; did you mean ...?' for an unknown study field, from the fields of its section."""
    model: type[BaseModel] = StudySpec
    for part in loc[:-1]:
        info = model.model_fields.get(str(part))
        if info is None or not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)):
            return ""
        model = info.annotation
    close = difflib.get_close_matches(
        str(loc[-1]), [f for f in model.model_fields if f != "base_config"], n=1
    )
    return f"; did you mean {close[0]!r}?" if close else ""


def load_study(path: str | Path) -> StudySpec:
    """Reads and validates a study file and its base; raises ConfigError before any work starts."""
    path = Path(path)
    raw = read_yaml(path)
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as err:
        lines = [
            f"  {'.'.join(map(str, e['loc']))} = {e.get('input')!r}: {e['msg']}"
            + (_field_hint(e["loc"]) if e["type"] == "extra_forbidden" else "")
            for e in err.errors()
        ]
        raise ConfigError(f"invalid study file {path}:\n" + "\n".join(lines)) from None
    spec = spec.model_copy(update={"base_config": read_base(path.parent / spec.base)})
    if spec.paper_reference:
        spec = spec.model_copy(update={"reference_data": read_reference(path.parent, spec.paper_reference)})
    validate_study(spec)
    return spec


FINDING_KINDS = ("at_least_as_good", "interior_optimum", "gap_shrinks", "improves_along", "worsens_along")


def read_reference(folder: Path, ref: str) -> dict[str, Any]:
    """The entry ``<file>#<entry>`` of a paper reference file, its findings' kinds checked."""
    file, _, entry = ref.partition("#")
    data = read_yaml(folder / file)
    if entry not in data:
        raise ConfigError(
            f"paper_reference {ref!r}: no entry {entry!r} in {file}; expected one of {sorted(data)}"
        )
    reference = data[entry]
    for finding in reference.get("findings", []):
        if finding.get("kind") not in FINDING_KINDS:
            raise ConfigError(
                f"paper_reference {ref!r}: finding kind {finding.get('kind')!r};"
                f" expected one of {FINDING_KINDS}"
            )
    return reference


def read_base(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A base config; one that names its own ``base`` (relative to itself) is deep-merged over it,
    so a family of studies can share a partial base (``search_spaces/paper/mini/base.yaml``)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"base files form a cycle: {' -> '.join(map(str, (*seen, path)))}")
    data = read_yaml(path)
    parent = data.pop("base", None)
    if parent is None:
        return data
    return _deep_merge(read_base(path.parent / parent, (*seen, path)), data)


def _deep_merge(under: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(under)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _axis_values(key: str, value: Any) -> tuple[str, list[Any]]:
    """(distribution, parameters) of one space entry; a bare list is a grid."""
    if isinstance(value, list):
        return "grid", value
    if isinstance(value, dict) and len(value) == 1:
        ((kind, params),) = value.items()
        if kind not in DISTRIBUTIONS:
            raise ConfigError(
                f"space.{key}: unknown distribution {kind!r}; expected one of {list(DISTRIBUTIONS)}"
            )
        if not isinstance(params, list) or not params:
            raise ConfigError(f"space.{key}.{kind}: expected a non-empty list, got {params!r}")
        if kind in ("uniform", "loguniform", "randint") and len(params) != 2:
            raise ConfigError(f"space.{key}.{kind}: expected [low, high], got {params!r}")
        return kind, params
    raise ConfigError(f"space.{key}: expected a list (grid) or one of {list(DISTRIBUTIONS)}, got {value!r}")


def _probe_values(kind: str, params: list[Any]) -> list[Any]:
    """Values that stand for a distribution when validating types."""
    if kind in ("grid", "choice"):
        return params
    if kind == "randint":
        return [int(params[0]), int(params[1]) - 1]
    return [float(params[0]), float(params[1])]


def resolve(spec: StudySpec, assignment: dict[str, Any], variant: str | None, seed: int) -> TrialConfig:
    """base <- the variant's recipe <- overrides <- space assignment <- variant pins <- seed, validated.

    A variant's pins win over the space, so axes that do not apply to a variant (the kappa
    scheduler of the MaskGIT recipe, say) collapse into one trial instead of multiplying.
    """
    d: dict[str, Any] = yaml.safe_load(yaml.safe_dump(spec.base_config))  # deep copy
    pins = dict(spec.variants.get(variant, {})) if variant else {}
    recipe = pins.pop("recipe", None)
    if recipe is not None:  # under the study's overrides and space: a sweep still sweeps the recipe
        if recipe not in RECIPES:
            close = difflib.get_close_matches(str(recipe), list(RECIPES), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"variants.{variant}.recipe: unknown {recipe!r}; expected one of {sorted(RECIPES)}{hint}"
            )
        for key, value in RECIPES[recipe].overrides.items():
            set_dotted(d, key, value)
        d["recipe"] = recipe
    for layer in (spec.overrides, assignment, pins):
        for key, value in layer.items():
            set_dotted(d, key, value)
    d["seed"] = seed
    trial = build_trial(d, where=f"trial (variant {variant}, {assignment})" if assignment else "trial")
    if trial.train.batch_size % spec.resources.workers:
        raise ConfigError(
            f"train.batch_size = {trial.train.batch_size} is not divisible by resources.workers = "
            f"{spec.resources.workers}: each worker trains batch_size / workers rows"
        )
    return trial


def validate_study(spec: StudySpec) -> None:
    """Checks keys, distributions, types and the metric before anything starts."""
    for key in [
        *spec.overrides,
        *spec.space,
        *(k for v in spec.variants.values() for k in v if k != "recipe"),
    ]:
        check_key(key)
    if spec.search.algorithm == "grid":
        bad = [k for k, v in spec.space.items() if _axis_values(k, v)[0] not in ("grid", "choice")]
        if bad:
            raise ConfigError(
                f"search.algorithm grid needs grid/choice axes; {bad} are continuous: use random or optuna"
            )
    probes = {k: _probe_values(*_axis_values(k, v)) for k, v in spec.space.items()}
    variants = list(spec.variants) or [None]
    first = resolve(spec, {}, variants[0], spec.seeds[0])
    for variant in variants:
        for key, values in probes.items():
            for value in values:
                resolve(spec, {key: value}, variant, spec.seeds[0])
    if not spec.space and not spec.variants and len(spec.seeds) == 1 and spec.search.algorithm != "grid":
        raise ConfigError("space is empty: nothing to search")
    extra = [e.key(m) for e in first.eval.extra_protocols for m in e.metrics]
    produced = set(METRICS) | {"nfe", "seconds_per_sample", "heldout_masked_ce"} | set(extra)
    if spec.metric not in produced:
        raise ConfigError(
            f"metric {spec.metric!r} is not produced by the evaluator; expected one of {sorted(produced)}"
        )
    if spec.metric in METRICS and spec.metric not in first.eval.metrics:
        raise ConfigError(f"metric {spec.metric!r} is not in eval.metrics {first.eval.metrics}: add it there")


def metric_mode(spec: StudySpec) -> str:
    if spec.mode is not None:
        return spec.mode
    base = spec.metric.rsplit("/", 1)[-1]  # "<extractor>/<metric>" from eval.extra_protocols
    if base in METRICS:
        return "max" if METRICS[base].higher_is_better else "min"
    return "min"


def expand_grid(spec: StudySpec) -> list[TrialConfig]:
    """Every trial of a grid study: variants x space grid x seeds, duplicates removed."""
    keys = list(spec.space)
    axes = [_axis_values(k, spec.space[k])[1] for k in keys]
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
        assignment = {}
        for key, value in spec.space.items():
            kind, params = _axis_values(key, value)
            if kind in ("grid", "choice"):
                assignment[key] = rng.choice(params)
            elif kind == "uniform":
                assignment[key] = rng.uniform(*params)
            elif kind == "loguniform":
                assignment[key] = math.exp(rng.uniform(math.log(params[0]), math.log(params[1])))
            else:
                assignment[key] = rng.randrange(int(params[0]), int(params[1]))
        trials.append(resolve(spec, assignment, variants[i % len(variants)], spec.seeds[i % len(spec.seeds)]))
    return trials


def apply_assignment(spec: StudySpec, assignment: dict[str, Any]) -> TrialConfig:
    """A trial from a searcher's assignment (dotted keys plus optional 'variant' and 'seed')."""
    assignment = dict(assignment)
    variant = assignment.pop("variant", None)
    seed = assignment.pop("seed", spec.seeds[0])
    return resolve(spec, assignment, variant, seed)
