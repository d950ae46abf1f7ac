"""Schedulers kappa(t): the probability that a token is data (not [MASK]) at time t.

kappa(0) = 0 (all [MASK]), kappa(1) = 1 (all data), increasing. Each scheduler returns
``kappa_t`` and its derivative ``d_kappa_t``; the unmasking rate of the continuous-time
chain is ``d_kappa_t / (1 - kappa_t)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from models.registry import Registry

SCHEDULERS: Registry[KappaScheduler] = Registry("scheduler")


class KappaScheduler:
    """Base class: subclasses define ``kappa`` and ``d_kappa`` elementwise on t in [0, 1]."""

    name: str = "base"

    def kappa(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_kappa(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def rate(self, t: Tensor, eps: float = 1e-6) -> Tensor:
        """Unmasking rate kappa'(t) / (1 - kappa(t)): the MDLM ELBO weight."""
        return self.d_kappa(t) / (1.0 - self.kappa(t)).clamp_min(eps)

    def __call__(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return self.kappa(t), self.d_kappa(t)


@SCHEDULERS.register("linear")
@dataclass(frozen=True)
class Linear(KappaScheduler):
    """kappa(t) = t."""

    def kappa(self, t: Tensor) -> Tensor:
        return t.clone()

    def d_kappa(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)


@SCHEDULERS.register("polynomial")
@dataclass(frozen=True)
class Polynomial(KappaScheduler):
    """kappa(t) = t^n, n > 0 (n = 2 is ``quadratic``, n = 1/2 is ``root``)."""

    n: float = 2.0

    def __post_init__(self) -> None:
        if not self.n > 0:
            raise ValueError(f"polynomial scheduler: n must be > 0, got {self.n}")

    def kappa(self, t: Tensor) -> Tensor:
        return t.pow(self.n)

    def d_kappa(self, t: Tensor) -> Tensor:
        # t^(n-1) is infinite at t = 0 for n < 1; keep it finite for the ELBO weight.
        return self.n * t.clamp_min(1e-12).pow(self.n - 1)


@SCHEDULERS.register("quadratic")
def quadratic() -> Polynomial:
    """kappa(t) = t^2."""
    return Polynomial(n=2.0)


@SCHEDULERS.register("root")
def root() -> Polynomial:
    """kappa(t) = sqrt(t)."""
    return Polynomial(n=0.5)


@SCHEDULERS.register("cosine")
@dataclass(frozen=True)
class Cosine(KappaScheduler):
    """kappa(t) = 1 - cos(pi t / 2): the masked fraction cos(pi t / 2) is MaskGIT's cosine."""

    def kappa(self, t: Tensor) -> Tensor:
        return 1.0 - torch.cos(0.5 * math.pi * t)

    def d_kappa(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.sin(0.5 * math.pi * t)


@SCHEDULERS.register("sine")
@dataclass(frozen=True)
class Sine(KappaScheduler):
    """kappa(t) = sin(pi t / 2)."""

    def kappa(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t)

    def d_kappa(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)


@SCHEDULERS.register("arccos")
@dataclass(frozen=True)
class Arccos(KappaScheduler):
    """kappa(t) = 1 - (2/pi) acos(t); kappa'(t) = (2/pi) / sqrt(1 - t^2)."""

    def kappa(self, t: Tensor) -> Tensor:
        return 1.0 - (2.0 / math.pi) * torch.acos(t)

    def d_kappa(self, t: Tensor) -> Tensor:
        return (2.0 / math.pi) / torch.sqrt((1.0 - t * t).clamp_min(1e-12))


@SCHEDULERS.register("arcsin")
@dataclass(frozen=True)
class Arcsin(KappaScheduler):
    """kappa(t) = (2/pi) asin(t); the same curve as arccos, since asin = pi/2 - acos."""

    def kappa(self, t: Tensor) -> Tensor:
        return (2.0 / math.pi) * torch.asin(t)

    def d_kappa(self, t: Tensor) -> Tensor:
        return (2.0 / math.pi) / torch.sqrt((1.0 - t * t).clamp_min(1e-12))


@SCHEDULERS.register("cubic")
@dataclass(frozen=True)
class Cubic(KappaScheduler):
    """Hermite cubic with kappa(0) = 0, kappa(1) = 1, kappa'(0) = a, kappa'(1) = b.

    kappa(t) = -2t^3 + 3t^2 + a(t^3 - 2t^2 + t) + b(t^3 - t^2).
    The reference code ignores a and b (always 2.0, 0.5); here they are honoured.
    Monotone on [0, 1] whenever 0 <= a, b <= 3 (Fritsch-Carlson); other values are rejected.
    """

    a: float = 2.0
    b: float = 0.5

    def __post_init__(self) -> None:
        if not (0 <= self.a <= 3 and 0 <= self.b <= 3):
            raise ValueError(
                f"cubic scheduler: need 0 <= a <= 3 and 0 <= b <= 3 for a monotone kappa, "
                f"got a={self.a}, b={self.b}"
            )

    def kappa(self, t: Tensor) -> Tensor:
        t2, t3 = t * t, t * t * t
        return -2 * t3 + 3 * t2 + self.a * (t3 - 2 * t2 + t) + self.b * (t3 - t2)

    def d_kappa(self, t: Tensor) -> Tensor:
        t2 = t * t
        return -6 * t2 + 6 * t + self.a * (3 * t2 - 4 * t + 1) + self.b * (3 * t2 - 2 * t)


def build_scheduler(name: str, **params: float) -> KappaScheduler:
    """Builds a scheduler by registry name, e.g. ``build_scheduler("cubic", a=1.0, b=1.0)``."""
    return SCHEDULERS[name](**params)
