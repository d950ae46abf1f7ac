"""VQ autoencoders in their original checkpoint formats (CompVis latent-diffusion, taming-transformers).

Both repositories share one Encoder / Decoder (``ddconfig``): ``conv_in``, ``len(ch_mult)`` levels of
``num_res_blocks`` ResNet blocks (``block.j``, ``nin_shortcut`` when the width changes), a
single-head attention block (``attn.j``: ``norm, q, k, v, proj_out`` as 1 x 1 convolutions) after
each ResNet block of a level whose resolution ``resolution / 2**level`` is in
``attn_resolutions``, a stride-2 ``downsample`` after every level but the last, a middle
``block_1, attn_1, block_2``, then ``norm_out, conv_out``; the decoder mirrors it with
``num_res_blocks + 1`` blocks per level and ``upsample``, its levels numbered bottom-up
(``up.{n-1}`` runs first). Between them: ``quant_conv`` (z_channels -> embed_dim),
``quantize.embedding`` (n_embed x embed_dim codes), ``post_quant_conv``.

diffusers' ``VQModel`` builds the same network with ``AttnDownEncoderBlock2D`` /
``AttnUpDecoderBlock2D`` at the levels with attention; :func:`ldm_name` maps each of its
parameter names to the original one (``up_blocks.i`` is ``up.{n-1-i}``; attention projections
are linear layers there, so the (C, C, 1, 1) convolution weights lose their 1 x 1).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from harness.errors import UserError
from models.registry import Registry


@dataclass(frozen=True)
class OriginalVQConfig:
    """The original ``ddconfig`` plus ``embed_dim`` / ``n_embed`` (field names as in the YAMLs)."""

    n_embed: int
    embed_dim: int
    z_channels: int
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    norm_num_groups: int = 32  # the originals' GroupNorm(32); smaller only for test stand-ins

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        for name in ("n_embed", "embed_dim", "z_channels", "ch", "num_res_blocks", "resolution"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"tokenizer config: {name} is {getattr(self, name)!r}; expected >= 1")
        if not self.ch_mult:
            raise UserError("tokenizer config: ch_mult is empty; expected e.g. [1, 2, 2, 4]")

    @property
    def downsampling(self) -> int:
        """Image side / token-grid side: 2 ** (levels - 1)."""
        return 2 ** (len(self.ch_mult) - 1)

    def has_attention(self, level: int) -> bool:
        return self.resolution // 2**level in self.attn_resolutions

    def diffusers_kwargs(self) -> dict[str, Any]:
        """The same network as diffusers ``VQModel(**kwargs)``."""
        levels = range(len(self.ch_mult))
        down = tuple(
            "AttnDownEncoderBlock2D" if self.has_attention(i) else "DownEncoderBlock2D" for i in levels
        )
        up = tuple("AttnUpDecoderBlock2D" if self.has_attention(i) else "UpDecoderBlock2D" for i in levels)
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_ch,
            "down_block_types": down,
            "up_block_types": up[::-1],  # diffusers' up_blocks[0] is the original up.{n-1}
            "block_out_channels": tuple(self.ch * m for m in self.ch_mult),
            "layers_per_block": self.num_res_blocks,
            "latent_channels": self.z_channels,
            "num_vq_embeddings": self.n_embed,
            "vq_embed_dim": self.embed_dim,
            "norm_num_groups": self.norm_num_groups,
            "sample_size": self.resolution,
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {**d, "ch_mult": list(self.ch_mult), "attn_resolutions": list(self.attn_resolutions)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "tokenizer config") -> OriginalVQConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"{source}: unknown keys {unknown}; expected some of {sorted(known)}")
        missing = sorted(k for k in ("n_embed", "embed_dim", "z_channels") if k not in d)
        if missing:
            raise UserError(f"{source}: missing {missing}")
        return cls(**d)


VQ_PRESETS: Registry = Registry("tokenizer preset")


@VQ_PRESETS.register("ldm-vq-f8")
def ldm_vq_f8() -> OriginalVQConfig:
    """CompVis latent-diffusion ``models/first_stage_models/vq-f8``: 16,384 codes of dim 4, 32 x 32 at 256."""
    return OriginalVQConfig(n_embed=16384, embed_dim=4, z_channels=4, ch=128, ch_mult=(1, 2, 2, 4),
                            num_res_blocks=2, attn_resolutions=(32,), resolution=256)  # fmt: skip


@VQ_PRESETS.register("taming-vqgan-f16-1024")
def taming_vqgan_f16_1024() -> OriginalVQConfig:
    """taming-transformers ImageNet VQGAN f16, 1,024 codes of dim 256, 16 x 16 at 256 (open MaskGITs)."""
    return OriginalVQConfig(n_embed=1024, embed_dim=256, z_channels=256, ch=128, ch_mult=(1, 1, 2, 2, 4),
                            num_res_blocks=2, attn_resolutions=(16,), resolution=256)  # fmt: skip


# ddconfig keys that do not change the inference network (dropout is off at inference).
_IGNORED_DDCONFIG = {"dropout", "double_z", "attn_type", "resamp_with_conv", "give_pre_end", "tanh_out"}


def read_vq_config(path: str | Path) -> OriginalVQConfig:
    """An architecture from YAML / JSON: the original training config (``model.params`` with
    ``embed_dim``, ``n_embed``, ``ddconfig``) or the flat fields of :class:`OriginalVQConfig`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--tokenizer-config {str(path)!r}: no such file")
    text = path.read_text()
    raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping, got {type(raw).__name__}")
    params = raw.get("model", {}).get("params", raw) if "model" in raw else raw
    if "ddconfig" not in params:
        return OriginalVQConfig.from_dict(params, str(path))
    dd = dict(params["ddconfig"])
    if dd.get("double_z") or dd.get("attn_type", "vanilla") != "vanilla" or dd.get("tanh_out"):
        raise UserError(
            f"{path}: ddconfig double_z / attn_type / tanh_out: only a plain VQ encoder is supported"
        )
    flat = {k: v for k, v in dd.items() if k not in _IGNORED_DDCONFIG}
    flat.update(n_embed=params.get("n_embed"), embed_dim=params.get("embed_dim"))
    return OriginalVQConfig.from_dict(flat, f"{path} (ddconfig)")


_BLOCK = re.compile(
    r"(encoder|decoder)\.(?:(down_blocks|up_blocks)\.(\d+)|mid_block)\."
    r"(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)"
)
_LEAF = (("conv_shortcut.", "nin_shortcut."), ("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."),
         ("to_v.", "v."), ("to_out.0.", "proj_out."))  # fmt: skip


def ldm_name(key: str, num_levels: int) -> str:
    """The original (LDM / taming) name of a diffusers VQModel parameter ``key``."""
    match = _BLOCK.fullmatch(key)
    if match is None:  # conv_in, conv_out, quant_conv, post_quant_conv, quantize.embedding
        return key.replace(".conv_norm_out.", ".norm_out.")
    part, blocks, index, kind, j, rest = match.groups()
    for old, new in _LEAF:
        if rest.startswith(old):
            rest = new + rest[len(old) :]
    if blocks is None:  # the middle: block_1, attn_1, block_2
        module = f"mid.block_{int(j) + 1}" if kind == "resnets" else f"mid.attn_{int(j) + 1}"
        return f"{part}.{module}.{rest}"
    level = int(index) if blocks == "down_blocks" else num_levels - 1 - int(index)
    name = {"resnets": "block", "attentions": "attn", "downsamplers": "downsample", "upsamplers": "upsample"}
    module = f"{'down' if blocks == 'down_blocks' else 'up'}.{level}.{name[kind]}"
    if kind in ("resnets", "attentions"):  # the samplers are single modules, not lists, there
        module += f".{j}"
    return f"{part}.{module}.{rest}"
