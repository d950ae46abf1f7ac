"""The trial config's sampler section: the common sampling options, and each sampler family's own
(``sampler.<name>``), validated against the samplers' registries."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator

from harness.config.section import Section, known
from harness.generation.baselines import BASELINES
from models.samplers import COUNT_RULES, RANDOMIZATIONS, SAMPLERS, UNMASK_SCHEDULES


class EulerOptions(Section):
    argmax_fill: bool = False
    remask_scale: float = Field(default=0.0, ge=0, le=1e6)
    reference_grid: bool = False


class MaskGITOptions(Section):
    schedule: str = "cosine"
    counts: str = "floor"
    randomization: str = "linear"
    gumbel_scale: float = Field(default=4.5, ge=0, le=1e6)  # beyond, float32 noise overflows
    reference_time: bool = False

    _schedule = field_validator("schedule")(lambda v: known(v, UNMASK_SCHEDULES, "MaskGIT schedule"))
    _counts = field_validator("counts")(lambda v: known(v, COUNT_RULES, "count rule"))
    _random = field_validator("randomization")(lambda v: known(v, RANDOMIZATIONS, "MaskGIT randomization"))


class HaltonOptions(Section):
    schedule: str = "arccos"
    counts: str = "maskgit"

    _schedule = field_validator("schedule")(lambda v: known(v, UNMASK_SCHEDULES, "Halton schedule"))
    _counts = field_validator("counts")(lambda v: known(v, COUNT_RULES, "count rule"))


class SamplerSection(Section):
    name: str = "euler"
    num_steps: int = Field(default=16, ge=1, le=100_000)
    temperature: float = Field(default=1.0, ge=1e-30, le=1e6)  # below, logits / T overflow float32
    top_k: int | None = Field(default=None, ge=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    cfg_scale: float = Field(default=1.0, ge=-1e6, le=1e6)
    exclude_mask: bool = True
    euler: EulerOptions = Field(default_factory=EulerOptions)
    maskgit: MaskGITOptions = Field(default_factory=MaskGITOptions)
    halton: HaltonOptions = Field(default_factory=HaltonOptions)
    # A joint dataset's modality given from held-out data (clamped) while the others are generated:
    # "image" segments (scored by mIoU), "labels" draws images for label maps. None: joint generation.
    condition_on: str | None = None

    _name = field_validator("name")(lambda v: known(v, [*SAMPLERS, *BASELINES], "sampler"))

    @property
    def is_baseline(self) -> bool:
        """A data baseline (no network): see harness.generation.baselines."""
        return self.name in BASELINES

    def options(self) -> dict[str, Any]:
        """Keyword arguments of the chosen sampler class (none for a data baseline)."""
        if self.is_baseline:
            return {}
        common = {
            "num_steps": self.num_steps,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "exclude_mask": self.exclude_mask,
        }
        family = getattr(self, self.name, None)  # the family's own options section, if it has one
        return {**common, **(family.model_dump() if isinstance(family, BaseModel) else {})}

    def settings(self) -> dict[str, Any]:
        """``options()`` less the options added after samples were cached, while at their default
        (``SAMPLER_OMITTED_AT_DEFAULT``): what names a sample folder, which a new option must not move."""
        omitted = {
            dotted.rsplit(".", 1)[1]: default
            for dotted, default in SAMPLER_OMITTED_AT_DEFAULT.items()
            if dotted.rsplit(".", 1)[0] == f"sampler.{self.name}"
        }
        return {k: v for k, v in self.options().items() if k not in omitted or v != omitted[k]}


# "sampler.<family>.<field>" (or a whole "sampler.<family>") -> default, for options added after
# samples and results were cached: omitted from the trial hash and the sample folder's name
# while at their default (harness.config.trial.OMITTED_AT_DEFAULT holds them with the others).
SAMPLER_OMITTED_AT_DEFAULT: dict[str, Any] = {
    "sampler.maskgit.counts": MaskGITOptions().counts,
    "sampler.halton": HaltonOptions().model_dump(mode="json"),
}
