"""Samplers behind one interface; ``SAMPLERS`` maps config names to classes."""

from models.registry import Registry
from models.samplers.base import Sampler, SampleResult
from models.samplers.denoiser import CFG_MODES, Denoiser, NFECount
from models.samplers.euler import EulerSampler
from models.samplers.maskgit import RANDOMIZATIONS, UNMASK_SCHEDULES, MaskGITSampler, maskgit_counts

SAMPLERS: Registry[Sampler] = Registry("sampler")
SAMPLERS.register("euler")(EulerSampler)
SAMPLERS.register("maskgit")(MaskGITSampler)

__all__ = [
    "CFG_MODES",
    "SAMPLERS",
    "RANDOMIZATIONS",
    "UNMASK_SCHEDULES",
    "Denoiser",
    "EulerSampler",
    "MaskGITSampler",
    "NFECount",
    "SampleResult",
    "Sampler",
    "maskgit_counts",
]
