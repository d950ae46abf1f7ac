"""Samplers behind one interface; ``SAMPLERS`` maps config names to classes."""

from models.registry import Registry
from models.samplers.base import Sampler, SampleResult
from models.samplers.counts import COUNT_RULES, UNMASK_SCHEDULES, commit_counts
from models.samplers.denoiser import CFG_MODES, Denoiser, NFECount
from models.samplers.euler import EulerSampler
from models.samplers.halton import HaltonSampler, halton_order
from models.samplers.maskgit import RANDOMIZATIONS, MaskGITSampler

SAMPLERS: Registry[Sampler] = Registry("sampler")
SAMPLERS.register("euler")(EulerSampler)
SAMPLERS.register("maskgit")(MaskGITSampler)
SAMPLERS.register("halton")(HaltonSampler)

__all__ = [
    "CFG_MODES",
    "COUNT_RULES",
    "SAMPLERS",
    "RANDOMIZATIONS",
    "UNMASK_SCHEDULES",
    "Denoiser",
    "EulerSampler",
    "HaltonSampler",
    "MaskGITSampler",
    "NFECount",
    "SampleResult",
    "Sampler",
    "commit_counts",
    "halton_order",
]
