"""What every section of the trial config shares: no unknown key, frozen, finite floats, and
registry names refused with the known alternatives."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from harness.errors import did_you_mean


def known(name: str, registry, field: str) -> str:
    """``name`` if the registry (or list) holds it; else a ValueError naming the field, the value
    and the choices."""
    if name not in registry:
        choices = sorted(registry)
        raise ValueError(f"unknown {field} {name!r}; expected one of {choices}{did_you_mean(name, choices)}")
    return name


class Section(BaseModel):
    # allow_inf_nan=False: every float of a trial is finite (lr: .inf or cfg_scale: .nan is refused).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
