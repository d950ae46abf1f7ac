"""Named recipes: published methods as first-class configurations, with provenance.

A recipe is a set of dotted config overrides that reproduces a method as its authors published
it, translated into unmask's canonical parameters, plus where it comes from and how each of
its parameters maps onto ours. A study names one in a variant (``{recipe: maskgit}``): the
recipe's overrides apply under the study's overrides and space (so a sweep over NFE still
sweeps the recipe), the variant's own keys above them, and every trial records the recipe's name.
Standard library only: the reports read provenance from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recipe:
    overrides: dict[str, Any]
    provenance: str
    translation: dict[str, str] = field(default_factory=dict)  # their parameter -> ours


RECIPES: dict[str, Recipe] = {
    "maskgit": Recipe(
        overrides={
            "model.timestep": "implicit",
            "train.corruption": "maskgit",
            "train.scheduler": "cosine",
            "train.loss": "masked_ce",
            "sampler.name": "maskgit",
            "sampler.num_steps": 8,
            "sampler.temperature": 1.0,
            "sampler.maskgit.schedule": "cosine",
            "sampler.maskgit.counts": "maskgit",
            "sampler.maskgit.randomization": "linear",
            "sampler.maskgit.gumbel_scale": 4.5,
        },
        provenance=(
            "MaskGIT (Chang et al., CVPR 2022): masked visual token modelling with a bidirectional"
            " transformer; ImageNet 256, 8 steps: FID 6.18, IS 182.1 (paper), FID 6.80 (open PyTorch"
            " reproduction). Training masks ceil(cos(pi/2 r) L) tokens, r ~ U(0, 1); sampling commits"
            " the most confident tokens with Gumbel noise annealed linearly from choice temperature 4.5."
        ),
        translation={
            "mask ratio cos(pi/2 r), exact count": "train.corruption = maskgit, train.scheduler = cosine",
            "no timestep input": "model.timestep = implicit",
            "T = 8 iterations": "sampler.num_steps = 8",
            "mask schedule cosine": "sampler.maskgit.schedule = cosine",
            "mask_len = floor(N cos(pi/2 (k+1)/T)), clamped": "sampler.maskgit.counts = maskgit",
            "choice_temperature = 4.5, annealed by (1 - k/T)": (
                "sampler.maskgit.gumbel_scale = 4.5, sampler.maskgit.randomization = linear"
            ),
            "guidance c + w (c - u)": "sampler.cfg_scale = w + 1",
            "softmax temperature (logits multiplied by beta)": "sampler.temperature = 1 / beta",
        },
    ),
    "discrete_interpolant": Recipe(
        overrides={
            "model.timestep": "implicit",
            "train.corruption": "interpolant",
            "train.scheduler": "linear",
            "train.loss": "masked_ce",
            "sampler.name": "maskgit",
            "sampler.num_steps": 20,
            "sampler.temperature": 1.3,
            "sampler.cfg_scale": 2.0,
            "sampler.maskgit.counts": "reference",
            "sampler.maskgit.randomization": "linear",
            "sampler.maskgit.gumbel_scale": 4.5,
        },
        provenance=(
            "Discrete Interpolants ('[MASK] is All You Need', Hu & Ommer, arXiv 2412.06787): the"
            " ImageNet 256 main result, DiT-XL/2 ITM, MGM sampler 20 steps, T = 1.3, CFG s = 2,"
            " linear Gumbel randomisation: FID-50k 8.26."
        ),
        translation={
            "CFG u + s (c - u)": "sampler.cfg_scale = s (our convention)",
            "temperature: logits / T": "sampler.temperature = T",
            "adap_sche: shares rounded, zeros set to 1, the last step the rest": (
                "sampler.maskgit.counts = reference"
            ),
        },
    ),
    "halton": Recipe(
        overrides={
            "model.timestep": "implicit",
            "sampler.name": "halton",
            "sampler.num_steps": 32,
            "sampler.temperature": 1.0,
            "sampler.halton.schedule": "arccos",
            "sampler.halton.counts": "maskgit",
        },
        provenance=(
            "Halton scheduler for MaskGIT (Besnier et al., ICLR 2025; valeoai/Halton-MaskGIT): tokens"
            " committed in the order the 2D Halton sequence (bases 2, 3) first visits the grid's cells,"
            " spreading each step's tokens over the image, with no confidence scoring; the step counts"
            " follow an arccos schedule; 32 steps in its quick start."
        ),
        translation={
            "Halton order, bases 2 and 3, deduplicated": "sampler.name = halton (per frame for video)",
            "step = 32": "sampler.num_steps = 32",
            "revealed r = int(N (1 - arccos((k+1)/T) / (pi/2)))": (
                "sampler.halton.schedule = arccos, sampler.halton.counts = maskgit (floor of the"
                " masked count, not of the revealed one: counts can differ by one)"
            ),
            "guidance (1 + w) c - w u": "sampler.cfg_scale = w + 1",
            "softmax temperature (logits multiplied by beta, annealed 1 -> 1.2)": (
                "sampler.temperature = 1 / beta (one constant temperature)"
            ),
        },
    ),
}
