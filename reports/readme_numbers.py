"""The numbers the README quotes, each tied to the study and the trial that produce it.

``search_spaces/readme_numbers.yaml`` lists the README's generated blocks. A block names one
study and holds a Markdown template whose placeholders are figures: ``{euler-4}`` prints the
figure's quoted value, ``{euler-4.ci}`` the half-width of its quoted 95% interval. A figure says
which finished trial of the study it comes from (``select``: dotted config keys -> a value, or
``{one_of: [...]}``; with ``pick: min | max`` the extreme among the matches, else exactly one
trial must match; ``expect``: settings the picked trial must have, because the README names
them), what it reads (``metric`` and ``quantity``) and the value the README quotes.

Quantities: ``value`` (the metric's mean over sample seeds, with its interval), ``sd_percent``
(the standard deviation over the k sample seeds as a percent of the mean, recovered from the
Student-t interval: s = half-width * sqrt(k) / t_{0.975, k-1}), ``protocol:FIELD`` (a field of the
metric's protocol, e.g. a classifier's held-out accuracy) and ``dataset:KEY`` (a dotted field of
the study's ``datasets.json``, e.g. a tokenizer's floors; no trial).

A measured value agrees with the quoted one when |measured - quoted| <= the quoted interval's
half-width (or ``tolerance`` x |quoted| where the README gives none) + half the last printed digit.

Reads YAML and the study's JSON files on disk: no model, torch or Ray imports.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.errors import UserError

PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_-]+)(\.ci)?\}")
NUMBER_FORMAT = re.compile(r",?\.(\d)f")  # fixed point, optionally with thousands separators
BLOCK_ID = re.compile(r"[a-z0-9][a-z0-9-]*")
QUANTITIES = ("value", "sd_percent", "protocol:FIELD", "dataset:KEY")
ONE_OF = "one_of"  # a select value {one_of: [a, b]} matches a or b


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _number_format(spec: str | None) -> str | None:
    if spec is not None and not NUMBER_FORMAT.fullmatch(spec):
        raise ValueError(f"format {spec!r}; expected fixed point such as '.0f', '.3f' or ',.0f'")
    return spec


class Figure(_Strict):
    """One quoted number: the trial and quantity it comes from, and what the README says."""

    select: dict[str, Any] = Field(default_factory=dict)
    metric: str | None = None
    quantity: str = "value"
    pick: Literal["min", "max"] | None = None
    expect: dict[str, Any] = Field(default_factory=dict)
    quoted: float
    ci: float | None = Field(default=None, ge=0)  # half-width of the quoted 95% interval
    tolerance: float | None = Field(default=None, ge=0)  # relative; the file's default if None
    format: str | None = None  # the block's if None
    unchecked: str | None = None  # why no study checks it: printed as quoted, never rewritten

    _format = field_validator("format")(_number_format)

    @model_validator(mode="after")
    def _source(self) -> Figure:
        kind = self.quantity.split(":", 1)[0]
        if self.quantity in ("value", "sd_percent") or (kind == "protocol" and ":" in self.quantity):
            if self.metric is None:
                raise ValueError(f"quantity {self.quantity!r} needs a metric")
        elif kind == "dataset" and ":" in self.quantity:
            if self.select or self.metric or self.pick or self.expect:
                raise ValueError("a dataset: quantity reads datasets.json: no select, metric, pick, expect")
        else:
            raise ValueError(f"quantity {self.quantity!r}; expected one of {list(QUANTITIES)}")
        if self.ci is not None and self.tolerance is not None:
            raise ValueError("give ci (the quoted interval is the tolerance) or tolerance, not both")
        return self


class Block(_Strict):
    """A generated block of the README: one study, a Markdown template, the figures in it."""

    study: str  # the study file, relative to the repository root
    minutes: float = Field(gt=0)  # a fresh run on 2 busy CPU cores, trainings included
    format: str = ".0f"
    template: str
    figures: dict[str, Figure] = Field(min_length=1)

    _format = field_validator("format")(_number_format)

    @model_validator(mode="after")
    def _placeholders(self) -> Block:
        used = {(m[1], bool(m[2])) for m in PLACEHOLDER.finditer(self.template)}
        names, defined = {name for name, _ in used}, set(self.figures)
        if names - defined:
            raise ValueError(f"the template names figures it does not define: {sorted(names - defined)}")
        if defined - names:
            raise ValueError(f"figures the template never shows: {sorted(defined - names)}")
        for name, figure in self.figures.items():
            if (figure.ci is not None) != ((name, True) in used):
                raise ValueError(f"figures.{name}: give ci exactly when the template shows {{{name}.ci}}")
        return self

    def number_format(self, name: str) -> str:
        return self.figures[name].format or self.format


class Unchecked(_Strict):
    """A number the README quotes outside every block, and why no study checks it."""

    text: str
    why: str


class ReadmeNumbers(_Strict):
    readme: str = "README.md"
    tolerance: float = Field(default=0.03, ge=0)
    blocks: dict[str, Block] = Field(min_length=1)
    unchecked: list[Unchecked] = Field(default_factory=list)

    @field_validator("blocks")
    @classmethod
    def _ids(cls, blocks: dict[str, Block]) -> dict[str, Block]:
        bad = [b for b in blocks if not BLOCK_ID.fullmatch(b)]
        if bad:
            raise ValueError(f"block ids {bad}: lower-case letters, digits and '-' only")
        return blocks


def parse_spec(text: str, where: str) -> ReadmeNumbers:
    """The spec in ``text``; UserError names the field (``blocks.<id>.figures.<name>.<field>``)."""
    try:
        return ReadmeNumbers.model_validate(yaml.safe_load(text))
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(part) for part in first["loc"])
        raise UserError(f"{where}: {loc}: {first['msg']}") from None
    except yaml.YAMLError as err:
        raise UserError(f"{where}: not YAML ({err})") from None


def load_spec(path: Path) -> ReadmeNumbers:
    try:
        return parse_spec(path.read_text(), str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None


def study_name(root: Path, block_id: str, block: Block) -> str:
    """The study's ``name`` (its folder under the runs root); UserError names the block."""
    path = root / block.study
    if not path.is_file():
        raise UserError(f"blocks.{block_id}.study: no study file {block.study!r} under {root}")
    name = (yaml.safe_load(path.read_text()) or {}).get("name")
    if not isinstance(name, str):
        raise UserError(f"blocks.{block_id}.study: {block.study} has no name")
    return name


def allowed(figure: Figure, number_format: str, default_tolerance: float) -> float:
    """How far the measured value may be from the quoted one: the quoted interval (or the relative
    tolerance) plus half the last digit the README prints."""
    digits = int(NUMBER_FORMAT.fullmatch(number_format)[1])
    if figure.ci is not None:
        spread = figure.ci
    else:
        spread = (default_tolerance if figure.tolerance is None else figure.tolerance) * abs(figure.quoted)
    return spread + 0.5 * 10.0**-digits
