"""Samples go to disk before they are scored, in a folder named after every sampling setting.

A sample file ``<folder>/samples.npz`` holds ``tokens`` (N, L) int, ``images`` (N, C, H, W)
float in [0, 1] or uint8 in [0, 255] (videos (N, C, T, H, W)), optional ``labels`` (N,), optional
``captions`` (N,) strings (a text model's conditions; labels are then their classes), and
``meta_json``: the sampling settings and the sample seed as JSON. It is written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from harness.cache import atomic_write
from harness.errors import UserError

SAMPLES_FILE = "samples.npz"
MAX_NAME = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9_.=,+-]")  # anything else becomes "-"
_TOKEN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


@dataclass(frozen=True)
class SampleSet:
    """tokens (N, L) long; images (N, C, ...) float in [0, 1]; labels (N,) long or None; meta dict."""

    tokens: Tensor
    images: Tensor
    labels: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    captions: tuple[str, ...] | None = None


def _samples_file(path: str | Path) -> Path:
    path = Path(path)
    return path if path.suffix == ".npz" else path / SAMPLES_FILE


def save_samples(
    path: str | Path,
    tokens: Tensor,
    images: Tensor,
    labels: Tensor | None = None,
    meta: dict[str, Any] | None = None,
    captions: tuple[str, ...] | None = None,
) -> Path:
    """Write ``path/samples.npz`` (or ``path`` if it ends in .npz) atomically; returns the file."""
    n = tokens.shape[0]
    if images.shape[0] != n or any(x is not None and len(x) != n for x in (labels, captions)):
        raise ValueError("tokens, images, labels and captions must have the same N")
    arrays: dict[str, np.ndarray] = {
        "tokens": tokens.detach().cpu().numpy(),
        "images": images.detach().cpu().numpy(),
        "meta_json": np.array(json.dumps(meta or {}, sort_keys=True)),
    }
    if labels is not None:
        arrays["labels"] = labels.detach().cpu().numpy()
    if captions is not None:
        arrays["captions"] = np.array(captions, dtype=str)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write(_samples_file(path), lambda f: f.write(buffer.getvalue()))


def load_samples(path: str | Path) -> SampleSet:
    """Read a file written by :func:`save_samples`; uint8 images are scaled to [0, 1]."""
    file = _samples_file(path)
    if not file.is_file():
        raise UserError(
            f"{str(path)!r}: no {file.name} (expected a samples folder or file written by a trial)"
        )
    with np.load(file, allow_pickle=False) as data:
        images = torch.from_numpy(data["images"])
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        labels = torch.from_numpy(data["labels"]).long() if "labels" in data else None
        meta = json.loads(str(data["meta_json"])) if "meta_json" in data else {}
        captions = tuple(str(c) for c in data["captions"]) if "captions" in data else None
        return SampleSet(torch.from_numpy(data["tokens"]).long(), images, labels, meta, captions)


def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float | str):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _is_number_like(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text in ("true", "false", "null")
    return True


def _unambiguous(key: str, value: Any) -> bool:
    """True when ``key=value`` reads back as exactly this key and value (a str never looks like a number)."""
    if not _TOKEN.fullmatch(key):
        return False
    if isinstance(value, str):
        return bool(_TOKEN.fullmatch(value)) and not _is_number_like(value)
    return (
        value is None or isinstance(value, bool | int) or (isinstance(value, float) and math.isfinite(value))
    )


def sample_dir_name(settings: dict[str, Any]) -> str:
    """``k1=v1,k2=v2,...`` over sorted keys, filesystem-safe, distinct for distinct settings.

    Characters outside [A-Za-z0-9_.=,+-] become ``-``. When a key or value is not a plain token
    (or a string value looks like a number), or the name exceeds MAX_NAME characters, ``_sha``
    and a 10-hex sha256 of the exact settings are appended (the readable part truncated).
    """
    if not settings:
        raise ValueError("sample_dir_name needs at least one setting")
    raw = ",".join(f"{key}={_format(settings[key])}" for key in sorted(settings))
    if len(raw) <= MAX_NAME and all(_unambiguous(str(k), v) for k, v in settings.items()):
        return raw
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    safe = _UNSAFE.sub("-", raw).lstrip(".")
    return f"{safe[: MAX_NAME - len(digest) - 4]}_sha{digest}"
