"""Classifier-free guidance, temperature, top-k / top-p, and translators between conventions.

Canonical convention (the paper's): guided logits = u + s (c - u), on raw logits, before
temperature; s = 1 is no guidance. Temperature divides logits (T < 1 sharpens).
"""

from __future__ import annotations

import torch
from torch import Tensor


def cfg_combine(cond_logits: Tensor, uncond_logits: Tensor, cfg_scale: float) -> Tensor:
    """u + s (c - u). Shapes (..., V).

    One new tensor (c - u), then s * and + u written into it: the same three roundings as the
    out-of-place expression (so the same bits), with a third of its allocations.
    """
    return (cond_logits - uncond_logits).mul_(cfg_scale).add_(uncond_logits)


def cfg_combine_(cond_logits: Tensor, uncond_logits: Tensor, cfg_scale: float) -> Tensor:
    """``cfg_combine`` written into ``cond_logits`` (the caller's own copy): the same bits."""
    return cond_logits.sub_(uncond_logits).mul_(cfg_scale).add_(uncond_logits)


def cfg_scale_from_maskgit_weight(w: float) -> float:
    """Codebases that write c + w (c - u) use w = s - 1: returns our s."""
    return w + 1.0


def maskgit_weight_from_cfg_scale(s: float) -> float:
    """Our s -> the w of the c + w (c - u) convention."""
    return s - 1.0


def temperature_from_multiplier(multiplier: float) -> float:
    """Codebases that multiply logits by beta use T = 1 / beta: returns our T."""
    if multiplier <= 0:
        raise ValueError(f"logit multiplier must be > 0, got {multiplier}")
    return 1.0 / multiplier


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """logits / T. T must be > 0 (use argmax decoding for T -> 0)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return logits / temperature


def top_k_filter(logits: Tensor, k: int | None) -> Tensor:
    """Keeps the k largest logits per position, -inf elsewhere. None or 0 keeps all."""
    if not k or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float | None) -> Tensor:
    """Nucleus filter: the smallest set of tokens whose probability reaches p. None or 1 keeps all."""
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # Drop a token when the mass strictly before it already reaches p (the top token always stays).
    drop_sorted = (probs.cumsum(dim=-1) - probs) >= p
    drop_sorted[..., 0] = False  # p <= 0 would otherwise drop every token
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def exclude_class_(logits: Tensor, class_id: int | Tensor | None) -> Tensor:
    """In place: gives one class (the [MASK] id) zero probability. class_id: an int, or ids one
    per row, broadcastable to ``logits.shape[:-1]`` ((L,) for logits (B, L, V): several modalities,
    each with its own [MASK]; (N,) for gathered rows (N, V)). An int id outside V is no class."""
    if isinstance(class_id, Tensor) and class_id.dim() >= 1:
        ids = class_id.to(logits.device).expand(logits.shape[:-1])[..., None]  # (..., 1)
        return logits.scatter_(-1, ids, float("-inf"))
    if class_id is not None and int(class_id) < logits.shape[-1]:
        logits[..., int(class_id)] = float("-inf")
    return logits


def exclude_class(logits: Tensor, class_id: int | Tensor | None) -> Tensor:
    """``exclude_class_`` on a copy; returns ``logits`` itself when there is nothing to exclude."""
    per_row = isinstance(class_id, Tensor) and class_id.dim() >= 1
    if not per_row and (class_id is None or int(class_id) >= logits.shape[-1]):
        return logits
    return exclude_class_(logits.clone(), class_id)


def process_logits(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    mask_id: int | Tensor | None = None,
    in_place: bool = False,
) -> Tensor:
    """The sampling distribution's logits: exclude [MASK], divide by T, then top-k, then top-p.

    Every step acts on each row (..., V) alone, so processing gathered rows gives the same bits
    as processing the whole grid and gathering after. in_place: ``logits`` is the caller's own
    (e.g. rows just gathered) and the exclusion and the division write into it instead of a copy.
    T = 1 costs nothing (x / 1 is x exactly).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = logits.float()
    if not in_place:
        logits = exclude_class(logits, mask_id)
        logits = apply_temperature(logits, temperature) if temperature != 1.0 else logits
    else:
        exclude_class_(logits, mask_id)
        if temperature != 1.0:
            logits.div_(temperature)
    return top_p_filter(top_k_filter(logits, top_k), top_p)
