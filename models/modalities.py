"""Several modalities in one token sequence, each with its own vocabulary, [MASK] and time.

Modality m (image codes, label maps, ...) has K_m codes on its own grid. In the joint sequence
its tokens are the global ids offset_m + k (k in [0, K_m)), offset_m = K_0 + ... + K_{m-1};
with K = sum K_m data codes in all, modality m's [MASK] is the global id K + m. So every
modality keeps a [MASK] of its own (the reference shares one across modalities, which lets a
label-map position predict an image code), and one modality gives exactly the single-grid
layout: codes [0, K), [MASK] = K.

Segments follow the modalities' order: positions [start_m, start_m + L_m) are modality m.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor


@dataclass(frozen=True)
class Modality:
    name: str
    vocab_size: int
    grid: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        if self.vocab_size < 2 or not self.grid or min(self.grid) < 1:
            raise ValueError(f"modality {self.name!r}: need vocab_size >= 2 and a grid, got {self}")

    @property
    def seq_len(self) -> int:
        return math.prod(self.grid)

    def to_dict(self) -> dict:
        return {"name": self.name, "vocab_size": self.vocab_size, "grid": list(self.grid)}


@dataclass(frozen=True)
class Layout:
    """Where each modality lives in the sequence and in the id space."""

    modalities: tuple[Modality, ...]

    def __post_init__(self) -> None:
        names = [m.name for m in self.modalities]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"modalities need distinct names, got {names}")

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.modalities]

    @property
    def vocab_size(self) -> int:
        """K: data codes of all modalities together."""
        return sum(m.vocab_size for m in self.modalities)

    @property
    def num_ids(self) -> int:
        """K + M: data codes and one [MASK] per modality."""
        return self.vocab_size + len(self.modalities)

    @property
    def lengths(self) -> list[int]:
        return [m.seq_len for m in self.modalities]

    @property
    def seq_len(self) -> int:
        return sum(self.lengths)

    @cached_property
    def offsets(self) -> list[int]:
        sizes = [m.vocab_size for m in self.modalities]
        return [sum(sizes[:i]) for i in range(len(sizes))]

    def segment(self, name: str) -> slice:
        i = self.index(name)
        start = sum(self.lengths[:i])
        return slice(start, start + self.lengths[i])

    def index(self, name: str) -> int:
        if name not in self.names:
            raise ValueError(f"unknown modality {name!r}; expected one of {self.names}")
        return self.names.index(name)

    def position_modality(self) -> Tensor:
        """(L,) long: the modality index of every position."""
        lengths = torch.tensor(self.lengths)
        return torch.repeat_interleave(torch.arange(len(self.modalities)), lengths, output_size=self.seq_len)

    def mask_ids(self) -> Tensor:
        """(L,) long: the [MASK] id of every position (K + its modality index)."""
        return self.vocab_size + self.position_modality()

    def allowed(self) -> Tensor:
        """(L, K + M) bool: position i may take exactly its own modality's data codes."""
        lo = torch.tensor(self.offsets)[self.position_modality()]  # (L,)
        hi = lo + torch.tensor([m.vocab_size for m in self.modalities])[self.position_modality()]
        ids = torch.arange(self.num_ids)
        return (ids[None] >= lo[:, None]) & (ids[None] < hi[:, None])

    def token_times(self, t: Tensor) -> Tensor:
        """Per-modality times (B, M), or one time (B,) for all, -> per-token times (B, L)."""
        if t.dim() == 1:
            t = t[:, None].expand(-1, len(self.modalities))
        if t.shape[1] != len(self.modalities):
            raise ValueError(f"{t.shape[1]} times for {len(self.modalities)} modalities")
        lengths = torch.tensor(self.lengths, device=t.device)
        return torch.repeat_interleave(t, lengths, dim=1, output_size=self.seq_len)

    def join(self, parts: dict[str, Tensor]) -> Tensor:
        """Local codes {name: (B, L_m)} (None or missing: all [MASK]) -> global ids (B, L)."""
        unknown = sorted(set(parts) - set(self.names))
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; expected some of {self.names}")
        B = next(p.shape[0] for p in parts.values() if p is not None)
        out = []
        for i, m in enumerate(self.modalities):
            local = parts.get(m.name)
            if local is None:
                out.append(torch.full((B, m.seq_len), self.vocab_size + i, dtype=torch.long))
            else:
                if local.min() < 0 or local.max() >= m.vocab_size:
                    raise ValueError(f"modality {m.name!r}: codes outside [0, {m.vocab_size})")
                out.append(local.long() + self.offsets[i])
        return torch.cat(out, dim=1)

    def split(self, x: Tensor) -> dict[str, Tensor]:
        """Global ids (B, L) -> local codes {name: (B, L_m)}; a [MASK] becomes the local id K_m."""
        out = {}
        for i, m in enumerate(self.modalities):
            seg = x[:, self.segment(m.name)]
            local = seg - self.offsets[i]
            out[m.name] = torch.where(seg == self.vocab_size + i, m.vocab_size, local)
        return out

    def to_list(self) -> list[dict]:
        return [m.to_dict() for m in self.modalities]

    @classmethod
    def from_list(cls, items: list[dict] | tuple) -> Layout:
        return cls(tuple(m if isinstance(m, Modality) else Modality(**m) for m in items))


class GivenModalities:
    """A network wrapper for sampling some modalities given the others.

    Samplers call ``net(x_t, t (B,), y)`` with the time of the modalities they generate; the
    given (clamped) modalities are fully observed, i.e. at t = 1, which an explicit-timestep
    model must see: t (B,) -> (B, M) with 1 for the given modalities.
    """

    def __init__(self, net, layout: Layout, given: list[str]) -> None:
        self.net, self.layout = net, layout
        self.given = [layout.index(name) for name in given]
        self.config = getattr(net, "config", None)

    def __call__(self, x_t: Tensor, t: Tensor | None, y: Tensor | None) -> Tensor:
        if t is not None and t.dim() == 1:
            t = t[:, None].repeat(1, len(self.layout.modalities))  # (B, M)
            t[:, self.given] = 1.0
        return self.net(x_t, t, y)


__all__ = ["GivenModalities", "Layout", "Modality"]
