"""What every section of the trial config shares: no unknown key, frozen, finite floats, numbers
that are numbers and switches that are switches, and registry names refused with the known
alternatives."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from harness.errors import did_you_mean, short


def known(name: str, registry, field: str) -> str:
    """``name`` if the registry (or list) holds it; else a ValueError naming the field, the value
    and the choices."""
    if name not in registry:
        choices = sorted(registry)
        hint = did_you_mean(name, choices) if isinstance(name, str) and len(name) <= 200 else ""
        raise ValueError(f"unknown {field} {short(name)}; expected one of {choices}{hint}")
    return name


def _kinds(annotation: Any) -> set[type]:
    """The scalar types a field (or its items) may take: ``int | None`` -> {int, None}, ``list[int]``
    -> {int}; a field of other kinds (strings, sections, mappings) gives what it names."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return {k for arg in typing.get_args(annotation) for k in _kinds(arg)}
    if origin is typing.Annotated:
        return _kinds(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return {type(choice) for choice in typing.get_args(annotation)}
    if origin in (list, tuple, set, frozenset):
        return {k for arg in typing.get_args(annotation) if arg is not Ellipsis for k in _kinds(arg)}
    return {annotation} if isinstance(annotation, type) else set()


def _refuse_mixed(value: Any, kinds: set[type]) -> None:
    """YAML reads yes / no / true / false as booleans and pydantic would take them as 1 / 0 (and
    "yes" / "false" as switches): a number field holding a boolean, or a switch a string, is a
    mistake, refused."""
    items = value if isinstance(value, list | tuple) else [value]
    numbers = kinds & {int, float}
    for item in items:
        if isinstance(item, bool) and numbers and bool not in kinds:
            yaml_words = "YAML reads yes / no / true / false as one"
            raise ValueError(f"{item!r} is a boolean ({yaml_words}); expected a number")
        if isinstance(item, str) and kinds == {bool} | (kinds & {type(None)}):
            raise ValueError(f"{item!r} is text; expected true or false")


class StrictModel(BaseModel):
    """A config section: no unknown key, frozen, every float finite (lr: .inf or cfg_scale: .nan
    refused), no boolean where a number belongs and no text where a switch does."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _typed(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None:
            _refuse_mixed(value, _kinds(field.annotation))
        return value


class Section(StrictModel):
    """A section of the trial config."""
