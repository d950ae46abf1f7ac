"""An independent reference for the original (LDM / taming) VQ autoencoder, for the loader's tests.

``ldm_layout`` enumerates the original parameter names and shapes by walking the original
architecture level by level (no renaming rules), each paired with the name diffusers' VQModel
gives the same tensor; ``ldm_encode`` / ``ldm_decode`` run the original network functionally on
a state dict with original names. A key mapping that loads a tensor into the wrong module
(a swapped level, a reversed decoder) changes these outputs even when every shape fits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.data.tokenizers.original_vq import OriginalVQConfig

_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _resnet(o: str, d: str, c_in: int, c_out: int) -> list[tuple[str, str, tuple]]:
    rows = [(f"{o}.norm1", f"{d}.norm1", (c_in,)), (f"{o}.conv1", f"{d}.conv1", (c_out, c_in, 3, 3))]
    rows += [(f"{o}.norm2", f"{d}.norm2", (c_out,)), (f"{o}.conv2", f"{d}.conv2", (c_out, c_out, 3, 3))]
    if c_in != c_out:
        rows.append((f"{o}.nin_shortcut", f"{d}.conv_shortcut", (c_out, c_in, 1, 1)))
    return rows


def _attn(o: str, d: str, c: int) -> list[tuple[str, str, tuple]]:
    return [(f"{o}.{k}", f"{d}.{v}", (c,) if k == "norm" else (c, c, 1, 1)) for k, v in _ATTN.items()]


def _mid(part: str, c: int) -> list[tuple[str, str, tuple]]:
    m = f"{part}.mid_block"
    return [*_resnet(f"{part}.mid.block_1", f"{m}.resnets.0", c, c),
            *_attn(f"{part}.mid.attn_1", f"{m}.attentions.0", c),
            *_resnet(f"{part}.mid.block_2", f"{m}.resnets.1", c, c)]  # fmt: skip


def ldm_layout(cfg: OriginalVQConfig) -> list[tuple[str, str, tuple]]:
    """(original module, diffusers module, weight shape) of every layer; each has .weight and .bias."""
    n, ch, rows = len(cfg.ch_mult), cfg.ch, []
    rows.append(("encoder.conv_in", "encoder.conv_in", (ch, cfg.in_channels, 3, 3)))
    c = ch
    for i in range(n):
        for j in range(cfg.num_res_blocks):
            o, d = f"encoder.down.{i}", f"encoder.down_blocks.{i}"
            rows += _resnet(f"{o}.block.{j}", f"{d}.resnets.{j}", c, ch * cfg.ch_mult[i])
            c = ch * cfg.ch_mult[i]
            if cfg.has_attention(i):
                rows += _attn(f"{o}.attn.{j}", f"{d}.attentions.{j}", c)
        if i != n - 1:
            rows.append((f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv",
                         (c, c, 3, 3)))  # fmt: skip
    rows += [*_mid("encoder", c), ("encoder.norm_out", "encoder.conv_norm_out", (c,)),
             ("encoder.conv_out", "encoder.conv_out", (cfg.z_channels, c, 3, 3)),
             ("quant_conv", "quant_conv", (cfg.embed_dim, cfg.z_channels, 1, 1)),
             ("post_quant_conv", "post_quant_conv", (cfg.z_channels, cfg.embed_dim, 1, 1)),
             ("decoder.conv_in", "decoder.conv_in", (c, cfg.z_channels, 3, 3)),
             *_mid("decoder", c)]  # fmt: skip
    for i in reversed(range(n)):
        o, d = f"decoder.up.{i}", f"decoder.up_blocks.{n - 1 - i}"
        for j in range(cfg.num_res_blocks + 1):
            rows += _resnet(f"{o}.block.{j}", f"{d}.resnets.{j}", c, ch * cfg.ch_mult[i])
            c = ch * cfg.ch_mult[i]
            if cfg.has_attention(i):
                rows += _attn(f"{o}.attn.{j}", f"{d}.attentions.{j}", c)
        if i != 0:
            rows.append((f"{o}.upsample.conv", f"{d}.upsamplers.0.conv", (c, c, 3, 3)))
    rows += [("decoder.norm_out", "decoder.conv_norm_out", (c,)),
             ("decoder.conv_out", "decoder.conv_out", (cfg.out_ch, c, 3, 3))]  # fmt: skip
    return rows


def ldm_names(cfg: OriginalVQConfig) -> dict[str, tuple[str, tuple]]:
    """original parameter name -> (diffusers name, shape), embedding included."""
    out = {"quantize.embedding.weight": ("quantize.embedding.weight", (cfg.n_embed, cfg.embed_dim))}
    for o, d, shape in ldm_layout(cfg):
        out[f"{o}.weight"] = (f"{d}.weight", shape)
        out[f"{o}.bias"] = (f"{d}.bias", shape[:1])
    return out


def random_ldm_state(cfg: OriginalVQConfig, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, (_, shape) in ldm_names(cfg).items():
        fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
        state[name] = torch.randn(shape, generator=g) / fan_in**0.5
        if ".norm" in name and name.endswith("weight"):
            state[name] = 1 + 0.1 * torch.randn(shape, generator=g)
    return state


def _conv(sd: dict, p: str, x: Tensor, stride: int = 1) -> Tensor:
    w = sd[f"{p}.weight"]
    return F.conv2d(x, w, sd[f"{p}.bias"], stride=stride, padding=w.shape[-1] // 2 if stride == 1 else 0)


def _norm(sd: dict, p: str, x: Tensor, groups: int) -> Tensor:
    return F.group_norm(x, groups, sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-6)


def _resnet_fwd(sd: dict, p: str, x: Tensor, groups: int) -> Tensor:
    h = _conv(sd, f"{p}.conv1", F.silu(_norm(sd, f"{p}.norm1", x, groups)))
    h = _conv(sd, f"{p}.conv2", F.silu(_norm(sd, f"{p}.norm2", h, groups)))
    return (_conv(sd, f"{p}.nin_shortcut", x) if f"{p}.nin_shortcut.weight" in sd else x) + h


def _attn_fwd(sd: dict, p: str, x: Tensor, groups: int) -> Tensor:
    B, C, H, W = x.shape
    h = _norm(sd, f"{p}.norm", x, groups)
    q, k, v = (_conv(sd, f"{p}.{n}", h).reshape(B, C, H * W) for n in ("q", "k", "v"))  # (B, C, HW)
    weights = torch.softmax(q.transpose(1, 2) @ k * C**-0.5, dim=-1)  # (B, HW_q, HW_k)
    out = (v @ weights.transpose(1, 2)).reshape(B, C, H, W)
    return x + _conv(sd, f"{p}.proj_out", out)


def _level(sd: dict, cfg: OriginalVQConfig, p: str, i: int, blocks: int, x: Tensor) -> Tensor:
    for j in range(blocks):
        x = _resnet_fwd(sd, f"{p}.{i}.block.{j}", x, cfg.norm_num_groups)
        if cfg.has_attention(i):
            x = _attn_fwd(sd, f"{p}.{i}.attn.{j}", x, cfg.norm_num_groups)
    return x


def _middle(sd: dict, p: str, x: Tensor, groups: int) -> Tensor:
    x = _resnet_fwd(sd, f"{p}.mid.block_1", x, groups)
    return _resnet_fwd(sd, f"{p}.mid.block_2", _attn_fwd(sd, f"{p}.mid.attn_1", x, groups), groups)


def ldm_encode(sd: dict, cfg: OriginalVQConfig, x: Tensor) -> tuple[Tensor, Tensor]:
    """x (B, C, S, S) in [-1, 1] -> (latents (B, D, g, g) after quant_conv, tokens (B, g*g))."""
    h, n = _conv(sd, "encoder.conv_in", x), len(cfg.ch_mult)
    for i in range(n):
        h = _level(sd, cfg, "encoder.down", i, cfg.num_res_blocks, h)
        if i != n - 1:  # the originals pad right and bottom by one, then convolve with stride 2
            h = _conv(sd, f"encoder.down.{i}.downsample.conv", F.pad(h, (0, 1, 0, 1)), stride=2)
    h = _middle(sd, "encoder", h, cfg.norm_num_groups)
    h = _conv(sd, "encoder.conv_out", F.silu(_norm(sd, "encoder.norm_out", h, cfg.norm_num_groups)))
    z = _conv(sd, "quant_conv", h)  # (B, D, g, g)
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B*g*g, D), row-major positions
    tokens = torch.cdist(flat, sd["quantize.embedding.weight"]).argmin(dim=1)
    return z, tokens.reshape(z.shape[0], -1)


def ldm_decode(sd: dict, cfg: OriginalVQConfig, tokens: Tensor, grid: int) -> Tensor:
    """tokens (B, g*g) -> images (B, C, S, S) in the network's [-1, 1] range (not clamped)."""
    z = sd["quantize.embedding.weight"][tokens].reshape(tokens.shape[0], grid, grid, -1).permute(0, 3, 1, 2)
    h = _conv(sd, "decoder.conv_in", _conv(sd, "post_quant_conv", z))
    h = _middle(sd, "decoder", h, cfg.norm_num_groups)
    for i in reversed(range(len(cfg.ch_mult))):
        h = _level(sd, cfg, "decoder.up", i, cfg.num_res_blocks + 1, h)
        if i != 0:
            h = _conv(sd, f"decoder.up.{i}.upsample.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"))
    return _conv(sd, "decoder.conv_out", F.silu(_norm(sd, "decoder.norm_out", h, cfg.norm_num_groups)))
