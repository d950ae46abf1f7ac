"""What a study's search may add to a grid or a sampler: ``extend`` rules (``run_study.py
extend`` grows a numeric axis past an edge optimum) and multi-objective ``search.objectives``."""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import ConfigDict, Field

from harness.config.section import StrictModel
from harness.config.trial import ConfigError
from harness.errors import did_you_mean, short
from harness.evaluation import METRICS

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")

STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ExtendRule(StrictModel):
    """How ``run_study.py extend`` grows a numeric grid axis past an edge optimum: by ``step``
    (added) or ``factor`` (multiplied), never below ``min`` or above ``max`` (the stated bound;
    a direction without one is not extended)."""

    model_config = STRICT
    step: float | None = Field(default=None, gt=0)
    factor: float | None = Field(default=None, gt=1)
    min: float | None = None
    max: float | None = None

    def beyond(self, edge: float, up: bool) -> float | None:
        """The next value past ``edge`` (up or down), or None when the bound stops it."""
        if self.step is not None:
            value = edge + self.step if up else edge - self.step
        else:
            value = edge * self.factor if up else edge / self.factor
        bound = self.max if up else self.min
        if bound is None or (value > bound if up else value < bound):
            return None
        return value


def numeric_grid(values: Any) -> bool:
    """Whether an axis of the space is a grid list of numbers (an axis ``extend`` can grow)."""
    return isinstance(values, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    )


def check_extend(extend: dict[str, ExtendRule], space: dict[str, Any], algorithm: str) -> None:
    """An extended axis is a grid list of numbers in the space, with one way to grow and a bound."""
    for key, rule in extend.items():
        values = space.get(key)
        if algorithm != "grid" or not numeric_grid(values) or not values:
            raise ConfigError(
                f"extend.{key}: expected an axis of the grid's space given as a list of numbers; got "
                f"{short(values) if values is not None else 'no such axis'}"
            )
        if (rule.step is None) == (rule.factor is None):
            raise ConfigError(f"extend.{key}: give step (added) or factor (multiplied), exactly one")
        if rule.min is None and rule.max is None:
            raise ConfigError(f"extend.{key}: give min or max (or both): how far the grid may grow")
        if rule.factor is not None and min(values) <= 0:
            raise ConfigError(f"extend.{key}: factor needs positive values; the grid has {min(values)}")


def direction_of(metric: str) -> str:
    """'max' for a metric where higher is better, else 'min' (NFE, seconds, losses)."""
    base = metric.rsplit("/", 1)[-1]  # "<extractor>/<metric>" from eval.extra_protocols
    if base in METRICS:
        return "max" if METRICS[base].higher_is_better else "min"
    return "min"


def check_objectives(
    objectives: list[str], metric: str, algorithm: str, scheduler: str, produced: set[str]
) -> None:
    """A multi-objective search: Optuna, two or more produced metrics, the study's metric among
    them, and no scheduler that stops trials on one metric."""
    if not objectives:
        return
    if algorithm != "optuna":
        raise ConfigError(
            f"search.objectives {objectives}: a multi-objective search needs search.algorithm optuna;"
            f" got {algorithm!r}"
        )
    if len(set(objectives)) < 2:
        raise ConfigError(f"search.objectives {objectives}: expected two or more distinct metrics")
    for name in objectives:
        if name not in produced:
            raise ConfigError(
                f"search.objectives: {name!r} is not produced by the evaluator; expected one of"
                f" {sorted(produced)}{did_you_mean(name, produced)}"
            )
    if metric not in objectives:
        raise ConfigError(
            f"metric {metric!r} must be one of search.objectives {objectives}: it ranks the report"
        )
    if scheduler != "fifo":
        raise ConfigError(f"scheduler {scheduler!r} stops trials on one metric; search.objectives needs fifo")


SECTIONS = ("data", "model", "train", "sampler", "eval")


def check_settable(spec: Any) -> None:
    """Keys a study may not set where it sets trial keys, each of which would be ignored or do
    something else than it reads: ``seed`` (the study's ``seeds`` list sets it, last), ``recipe``
    outside a variant (it would relabel the trial and change nothing), and a whole section as a
    mapping (``train: {steps: 20}`` replaces every other train setting of the base)."""
    layers = {"overrides": spec.overrides, "space": spec.space}
    layers.update({f"variants.{name}": pins for name, pins in spec.variants.items()})
    layers.update({f"refine[{i}].overrides": r.overrides for i, r in enumerate(spec.refine)})
    for where, layer in layers.items():
        for key, value in layer.items():
            if key == "seed":
                raise ConfigError(
                    f"{where}.seed: the trials' seeds are the study's seeds list; set seeds: [...]"
                )
            if key == "recipe" and not where.startswith("variants."):
                raise ConfigError(
                    f"{where}.recipe: a recipe is a variant's (variants: {{name: {{recipe: maskgit}}}});"
                    " here it would only relabel the trials"
                )
            if key in SECTIONS and isinstance(value, dict):
                first = next(iter(value), "steps")
                raise ConfigError(
                    f"{where}.{key}: a mapping would replace the whole {key} section of the base; set its"
                    f" keys one by one ({key}.{str(first)[:40]}: ...)"
                )


def axis_values(key: str, value: Any) -> tuple[str, list[Any]]:
    """(distribution, parameters) of one space entry; a bare list is a grid. A distribution's
    bounds are numbers with low < high (randint: integers; loguniform: both positive)."""
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"space.{key}: an empty grid; expected at least one value")
        check_distinct(f"space.{key}", value)
        return "grid", value
    if isinstance(value, dict) and len(value) == 1:
        ((kind, params),) = value.items()
        if kind not in DISTRIBUTIONS:
            raise ConfigError(
                f"space.{str(key)[:100]}: unknown distribution {short(kind)};"
                f" expected one of {list(DISTRIBUTIONS)}"
            )
        if not isinstance(params, list) or not params:
            raise ConfigError(
                f"space.{str(key)[:100]}.{kind}: expected a non-empty list, got {short(params)}"
            )
        if kind in ("uniform", "loguniform", "randint"):
            check_bounds(f"space.{key}.{kind}", kind, params)
        else:
            check_distinct(f"space.{key}.{kind}", params)
        return kind, params
    expected = f"a list (grid) or one of {list(DISTRIBUTIONS)}"
    raise ConfigError(f"space.{str(key)[:100]}: expected {expected}, got {short(value)}")


def check_distinct(where: str, values: list[Any]) -> None:
    """A value named twice on an axis is one cell (4 and 4.0 too): refused, not silently merged."""
    seen, twice = set(), []
    for value in values:
        if isinstance(value, bool):
            key: Any = ("bool", value)
        elif isinstance(value, int | float):
            key = ("number", float(value))
        else:
            key = ("other", json.dumps(value, sort_keys=True, default=str))
        if key in seen:
            twice.append(value)
        seen.add(key)
    if twice:
        raise ConfigError(f"{where}: {short(twice)} named more than once; expected distinct values")


def check_bounds(where: str, kind: str, params: list[Any]) -> None:
    numbers = len(params) == 2 and all(
        isinstance(p, int | float) and not isinstance(p, bool) and math.isfinite(p) for p in params
    )
    if not numbers:
        raise ConfigError(f"{where}: expected [low, high], two finite numbers; got {short(params)}")
    low, high = params
    if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
        raise ConfigError(f"{where}: expected two integers [low, high); got {short(params)}")
    if not low < high:
        raise ConfigError(f"{where}: expected low < high; got {short(params)}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: expected 0 < low < high (a log scale); got {short(params)}")
