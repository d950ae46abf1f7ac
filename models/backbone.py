"""A DiT-style transformer over a token grid: logits for every position.

Input x_t (B, L) with ids in [0, K] (K = [MASK]); output logits (B, L, V), V = K + 1.
Conditioning enters by adaLN-Zero from c = class embedding (+ timestep embedding for ETM).
With ``text`` (``models.text``) y is caption ids (B, S): c = the caption's pooled features
(+ time), and its token features (B, S, D) are prepended to the sequence as an in-context
prefix (so word order can matter); logits are returned for the image positions only.

Several modalities (``models.modalities``): the sequence is their segments in order, ids
global (V = K + M, a [MASK] per modality), each position's logits restricted to its own
modality's codes, and an ETM embeds one time per modality. Patching: ``patch`` groups
p_1 x ... x p_n tokens into one transformer position (embeddings summed over a table per
offset in the patch, i.e. concatenation followed by a linear map; the head predicts all P
tokens of a patch), so long grids (video) fit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.modalities import Layout
from models.patching import patchify, unpatchify
from models.registry import check_keys
from models.text import PAD, TextConfig, build_text_encoder

TIMESTEP_MODES = ("explicit", "implicit")

# (depth, width, heads): DiT's presets; "tiny"/"small" are for CPU tests and embedded data.
SIZE_PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 64, 4),
    "small": (4, 128, 4),
    "medium": (6, 256, 8),
    "DiT-S": (12, 384, 6),
    "DiT-B": (12, 768, 12),
    "DiT-L": (24, 1024, 16),
    "DiT-XL": (28, 1152, 16),
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build the network; checkpoints carry it.

    vocab_size: K data codes ([MASK] is id K). grid: token grid shape, (L,), (H, W) or (T, H, W).
    num_classes: 0 for unconditional; id num_classes is the null class (CFG).
    text: a TextConfig (captions as the condition; exclusive with num_classes): the null
        condition is the empty caption, all PAD.
    timestep: "explicit" (ETM, t embedded) or "implicit" (ITM, no t).
    time_scale: t is embedded as t * time_scale; 1000 matches the sinusoidal frequencies
        (the reference feeds raw t, i.e. time_scale = 1, which leaves little time signal).
    """

    vocab_size: int
    grid: tuple[int, ...]
    num_classes: int = 0
    timestep: str = "implicit"
    size: str = "tiny"
    depth: int | None = None
    width: int | None = None
    heads: int | None = None
    mlp_ratio: float = 4.0
    time_scale: float = 1000.0
    modalities: tuple = ()  # Modality entries; empty: one modality (vocab_size, grid)
    patch: tuple[int, ...] | None = None
    text: TextConfig | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        if isinstance(self.text, dict):
            object.__setattr__(self, "text", TextConfig.from_dict(self.text))
        if self.text is not None and self.num_classes:
            raise ValueError(f"model: text conditioning excludes num_classes, got {self.num_classes}")
        if self.modalities:
            layout = Layout.from_list(self.modalities)
            object.__setattr__(self, "modalities", layout.modalities)
            if (self.vocab_size, self.grid) != (layout.vocab_size, (layout.seq_len,)):
                raise ValueError(
                    f"model: a joint layout needs vocab_size {layout.vocab_size} and grid "
                    f"({layout.seq_len},), got {self.vocab_size}, {self.grid} (use ModelConfig.joint)"
                )
        if self.patch is not None:
            object.__setattr__(self, "patch", tuple(int(p) for p in self.patch))
            for grid, _ in self.segments:
                if len(self.patch) != len(grid) or any(g % p for g, p in zip(grid, self.patch, strict=True)):
                    raise ValueError(f"model.patch: {list(self.patch)} does not tile the grid {list(grid)}")
        if self.timestep not in TIMESTEP_MODES:
            raise ValueError(f"model.timestep: unknown {self.timestep!r}; expected one of {TIMESTEP_MODES}")
        if self.size not in SIZE_PRESETS:
            raise ValueError(f"model.size: unknown {self.size!r}; expected one of {sorted(SIZE_PRESETS)}")
        if self.vocab_size < 2 or not self.grid or min(self.grid) < 1:
            raise ValueError(
                f"model: need vocab_size >= 2 and a non-empty grid, got {self.vocab_size}, {self.grid}"
            )
        if self.dims[1] % self.dims[2]:
            raise ValueError(f"model: width {self.dims[1]} is not divisible by heads {self.dims[2]}")

    @property
    def dims(self) -> tuple[int, int, int]:
        depth, width, heads = SIZE_PRESETS[self.size]
        return (self.depth or depth, self.width or width, self.heads or heads)

    @property
    def seq_len(self) -> int:
        return math.prod(self.grid)

    @property
    def layout(self) -> Layout | None:
        return Layout(self.modalities) if self.modalities else None

    @property
    def segments(self) -> list[tuple[tuple[int, ...], int]]:
        """(grid, length) of every modality's segment, in sequence order."""
        if not self.modalities:
            return [(self.grid, self.seq_len)]
        return [(m.grid, m.seq_len) for m in self.modalities]

    @property
    def patch_size(self) -> int:
        return math.prod(self.patch) if self.patch else 1

    @property
    def num_ids(self) -> int:
        """V: the logits per position (data codes and the [MASK] ids)."""
        return self.layout.num_ids if self.modalities else self.vocab_size + 1

    @property
    def mask_id(self) -> int | Tensor:
        """K for one modality; (L,) ids (one [MASK] per modality) for several."""
        return self.layout.mask_ids() if self.modalities else self.vocab_size

    @property
    def null_class(self) -> int:
        """The null condition's id: ``torch.full_like(y, null_class)`` for class ids and captions."""
        return PAD if self.text is not None else self.num_classes

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0 or self.text is not None

    def to_dict(self) -> dict:
        """JSON-able; modalities, patch and text only when used (older checkpoints lack them)."""
        d = asdict(self)
        d["grid"] = list(self.grid)
        d["modalities"] = self.layout.to_list() if self.modalities else None
        d["patch"] = list(self.patch) if self.patch else None
        d["text"] = self.text.to_dict() if self.text else None
        return {k: v for k, v in d.items() if k not in ("modalities", "patch", "text") or v}

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        check_keys("model", d, cls)
        return cls(**d)

    @classmethod
    def joint(cls, layout: Layout, **kwargs) -> ModelConfig:
        """A model over several modalities' segments (see ``models.modalities``)."""
        return cls(layout.vocab_size, (layout.seq_len,), modalities=layout.modalities, **kwargs)

    def with_(self, **changes) -> ModelConfig:
        return replace(self, **changes)


def sincos_grid(grid: tuple[int, ...], dim: int) -> Tensor:
    """Fixed positional features for a grid of any rank: (prod(grid), dim), unit variance per channel.

    Each axis gets an equal even share of the channels (leftover channels are zero), with
    wavelengths spaced geometrically from 2 to 4 g for an axis of length g. Fitting the
    wavelengths to the grid matters on small grids: with the usual 10000 base most channels
    are constant over 8 positions, attention cannot find neighbours, and the model learns only
    per-position marginals (measured on digits: context gap 0.004 vs 0.17 nats).
    """
    per_axis = 2 * (dim // (2 * len(grid)))
    coords = torch.stack(torch.meshgrid(*[torch.arange(g) for g in grid], indexing="ij"), dim=-1)
    coords = coords.reshape(-1, len(grid)).double()  # (L, A)
    out = torch.zeros(coords.shape[0], dim, dtype=torch.float64)
    half = per_axis // 2
    for a, g in enumerate(grid):
        wavelengths = 2.0 * (2.0 * g) ** (torch.arange(half, dtype=torch.float64) / max(half - 1, 1))
        angles = 2 * math.pi * coords[:, a : a + 1] / wavelengths[None]  # (L, half)
        out[:, a * per_axis : (a + 1) * per_axis] = torch.cat([angles.sin(), angles.cos()], dim=1)
    return (out * math.sqrt(2.0)).float()


class TimestepEmbedder(nn.Module):
    """t (B,) -> sinusoidal features of t * scale -> MLP -> (B, D)."""

    def __init__(self, width: int, scale: float, freq_dim: int = 256) -> None:
        super().__init__()
        self.scale, self.freq_dim = scale, freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(
            -math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half
        )
        angles = (t.float() * self.scale)[:, None] * freqs[None]  # (B, half)
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=1))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Block(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation from c."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width)
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        B, L, D = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)  # (B, D) each
        h = modulate(self.norm1(x), shift1, scale1)
        q, k, v = (
            self.qkv(h).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        )  # (B, nh, L, hs)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, D)
        x = x + gate1[:, None] * self.proj(attn)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiscreteDiT(nn.Module):
    """net(x_t (B, L), t (B,) / (B, M) or None, y (B,) or None) -> logits (B, L, V)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        depth, width, heads = config.dims
        V, P, M = config.num_ids, config.patch_size, max(1, len(config.modalities))
        # N(0, 1) token embeddings are on the scale of the sin/cos positions: with the usual
        # 0.02 init the positions drown the tokens and the model learns only marginals. With
        # patches, P embeddings are summed: std 1 / sqrt(P) keeps the sum at unit variance.
        self.token_embed = nn.Embedding(P * V, width)
        if P > 1:
            nn.init.normal_(self.token_embed.weight, std=P**-0.5)
        patch = config.patch or None
        pos = [sincos_grid(_coarse(grid, patch), width) for grid, _ in config.segments]
        self.register_buffer("pos_embed", torch.cat(pos), persistent=False)  # (L', D)
        if M > 1:
            self.modality_embed = nn.Parameter(torch.randn(M, width) * 0.02)
            ids = [m for m, (_, length) in enumerate(config.segments) for _ in range(length // P)]
            self.register_buffer("segment_ids", torch.tensor(ids), persistent=False)  # (L',)
            self.register_buffer("disallowed", ~config.layout.allowed(), persistent=False)  # (L, V)
        self.text = build_text_encoder(config.text, width) if config.text else None
        if config.text is None:
            self.class_embed = nn.Embedding(config.num_classes + 1, width)
            nn.init.normal_(self.class_embed.weight, std=0.02)
        self.time_embed = None
        if config.timestep == "explicit":
            embed = [TimestepEmbedder(width, config.time_scale) for _ in range(M)]
            self.time_embed = embed[0] if M == 1 else nn.ModuleList(embed)
        self.blocks = nn.ModuleList(Block(width, heads, config.mlp_ratio) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.head = nn.Linear(width, P * V)
        for layer in (self.ada_out[1], self.head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _time(self, t: Tensor | None) -> Tensor:
        """c's time part: one embedding, or the sum of one per modality (t (B,) means all equal)."""
        if t is None:
            raise ValueError("an explicit-timestep model needs t")
        if isinstance(self.time_embed, TimestepEmbedder):
            return self.time_embed(t)
        if t.dim() == 1:
            t = t[:, None].expand(-1, len(self.time_embed))
        return sum(embed(t[:, m]) for m, embed in enumerate(self.time_embed))

    def _segments(self, x: Tensor) -> list[Tensor]:
        """(B, L, ...) -> per modality (B, L'_m, P, ...) patches (P = 1 without patching)."""
        out, start = [], 0
        for grid, length in self.config.segments:
            seg = x[:, start : start + length]
            out.append(patchify(seg, grid, self.config.patch) if self.config.patch else seg[:, :, None])
            start += length
        return out

    def _embed(self, x_t: Tensor) -> Tensor:
        V = self.config.num_ids
        patches = torch.cat(self._segments(x_t), dim=1)  # (B, L', P)
        offsets = torch.arange(patches.shape[2], device=x_t.device) * V
        h = self.token_embed(patches + offsets).sum(dim=2) + self.pos_embed[None]  # (B, L', D)
        if hasattr(self, "modality_embed"):
            h = h + self.modality_embed[self.segment_ids][None]
        return h

    def _logits(self, out: Tensor) -> Tensor:
        """Head output (B, L', P V) -> (B, L, V), each modality's own codes only."""
        B, V = out.shape[0], self.config.num_ids
        out = out.reshape(B, out.shape[1], -1, V)  # (B, L', P, V)
        if self.config.patch:
            parts, start = [], 0
            for grid, length in self.config.segments:
                n = length // self.config.patch_size
                parts.append(unpatchify(out[:, start : start + n], grid, self.config.patch))
                start += n
            logits = torch.cat(parts, dim=1)
        else:
            logits = out[:, :, 0]
        if hasattr(self, "disallowed"):
            # A large finite value, not -inf: CFG's u + s (c - u) of two -inf is NaN.
            logits = logits.masked_fill(self.disallowed, -1e9)
        return logits  # (B, L, V)

    def _condition(self, y: Tensor | None, B: int, device: torch.device) -> tuple[Tensor, Tensor | None]:
        """c (B, D) from y (class ids (B,) or caption ids (B, S); None: the null condition), and
        the caption's token features (B, S, D) as the sequence prefix (None without one)."""
        text = self.config.text
        if y is None:
            shape = (B,) if text is None else (B, text.max_length)
            y = torch.full(shape, self.config.null_class, dtype=torch.long, device=device)
        if self.text is None:
            return self.class_embed(y), None  # (B, D)
        tokens, pooled = self.text(y)  # (B, S, D), (B, D)
        return pooled, tokens if text.prefix else None

    def forward(self, x_t: Tensor, t: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        B, L = x_t.shape
        if L != self.config.seq_len:
            raise ValueError(
                f"got {L} tokens per sample; the model's grid {self.config.grid} has {self.config.seq_len}"
            )
        c, prefix = self._condition(y, B, x_t.device)  # (B, D), (B, S, D) | None
        if self.time_embed is not None:
            c = c + self._time(t)
        h = self._embed(x_t)  # (B, L', D)
        if prefix is not None:
            h = torch.cat([prefix, h], dim=1)  # (B, S + L', D)
        # activation_checkpointing (set by the trainer): keep only each block's input and
        # recompute the block in backward, so a long sequence at a large batch fits in memory.
        recompute = getattr(self, "activation_checkpointing", False) and self.training
        for block in self.blocks:
            if recompute and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(block, h, c, use_reentrant=False)
            else:
                h = block(h, c)
        if prefix is not None:
            h = h[:, prefix.shape[1] :]  # (B, L', D): logits for the image positions only
        shift, scale = self.ada_out(c).chunk(2, dim=1)
        return self._logits(self.head(modulate(self.norm_out(h), shift, scale)))  # (B, L, V)


def _coarse(grid: tuple[int, ...], patch: tuple[int, ...] | None) -> tuple[int, ...]:
    return grid if patch is None else tuple(g // p for g, p in zip(grid, patch, strict=True))


def build_model(config: ModelConfig) -> DiscreteDiT:
    return DiscreteDiT(config)


__all__ = ["SIZE_PRESETS", "TIMESTEP_MODES", "DiscreteDiT", "ModelConfig", "build_model"]
