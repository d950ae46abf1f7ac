"""Grouping a token grid into patches and back.

A grid (g_1, ..., g_n) tiled by patches (p_1, ..., p_n) has L' = prod(g_i / p_i) patches of
P = prod(p_i) tokens. Patches are numbered row-major over the coarse grid, tokens within a
patch row-major over the patch offsets, so ``unpatchify(patchify(x)) == x``.
"""

from __future__ import annotations

import math

from torch import Tensor


def _split_shape(grid: tuple[int, ...], patch: tuple[int, ...]) -> list[int]:
    shape = []
    for g, p in zip(grid, patch, strict=True):
        shape += [g // p, p]
    return shape


def patchify(x: Tensor, grid: tuple[int, ...], patch: tuple[int, ...]) -> Tensor:
    """(B, L, *rest) -> (B, L', P, *rest)."""
    B, rest, n = x.shape[0], x.shape[2:], len(grid)
    x = x.reshape(B, *_split_shape(grid, patch), *rest)  # (B, g1/p1, p1, ..., *rest)
    coarse = [1 + 2 * i for i in range(n)]
    fine = [2 + 2 * i for i in range(n)]
    x = x.permute(0, *coarse, *fine, *range(1 + 2 * n, x.dim()))
    return x.reshape(B, math.prod(g // p for g, p in zip(grid, patch, strict=True)), math.prod(patch), *rest)


def unpatchify(x: Tensor, grid: tuple[int, ...], patch: tuple[int, ...]) -> Tensor:
    """(B, L', P, *rest) -> (B, L, *rest): the inverse of ``patchify``."""
    B, rest, n = x.shape[0], x.shape[3:], len(grid)
    coarse = [g // p for g, p in zip(grid, patch, strict=True)]
    x = x.reshape(B, *coarse, *patch, *rest)  # (B, g1/p1, ..., p1, ..., *rest)
    order = []
    for i in range(n):
        order += [1 + i, 1 + n + i]
    x = x.permute(0, *order, *range(1 + 2 * n, x.dim()))
    return x.reshape(B, math.prod(grid), *rest)


__all__ = ["patchify", "unpatchify"]
