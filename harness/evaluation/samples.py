"""Samples go to disk before they are scored, in a folder named after every sampling setting.

A sample file ``<folder>/samples.npz`` holds ``tokens`` (N, L) int, ``images`` (N, C, H, W)
float in [0, 1] or uint8 in [0, 255] (videos (N, C, T, H, W)), optional ``labels`` (N,), optional
``captions`` (N,) strings (a text model's conditions; labels are then their classes), and
``meta_json``: the sampling settings and the sample seed as JSON. It is written atomically, then
its size and sha256 beside it in ``samples.npz.sha256`` (JSON), which :func:`verify_samples` checks.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from harness.cache import atomic_write, atomic_write_text, sha256_file
from harness.errors import UserError

SAMPLES_FILE = "samples.npz"
CHECKSUM_SUFFIX = ".sha256"  # samples.npz.sha256: {"size": bytes, "sha256": hex} of samples.npz
_MEMBERS = ("tokens.npy", "images.npy")
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


def samples_file(path: str | Path) -> Path:
    path = Path(path)
    return path if path.suffix == ".npz" else path / SAMPLES_FILE


def checksum_file(path: str | Path) -> Path:
    """The checksum written beside a sample file (``path`` a samples folder or file)."""
    file = samples_file(path)
    return file.with_name(file.name + CHECKSUM_SUFFIX)


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
    data = buffer.getvalue()
    checksum = checksum_file(path)
    checksum.unlink(missing_ok=True)  # a stale checksum must never describe the new file
    file = atomic_write(samples_file(path), lambda f: f.write(data))
    atomic_write_text(checksum, json.dumps({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}))
    return file


def verify_samples(path: str | Path) -> str | None:
    """None when the sample file is intact, else what is wrong: it is missing, or its size or
    sha256 differ from its checksum file; a file without one (written before checksums, or
    the checksum not written yet) must open as a zip whose members pass their CRC-32."""
    file, checksum = samples_file(path), checksum_file(path)
    try:
        size = file.stat().st_size
        if checksum.is_file():
            expected = json.loads(checksum.read_text())
            if (size, sha256_file(file)) != (expected["size"], expected["sha256"]):
                return f"{file.name} ({size} bytes) does not match the size and sha256 in {checksum.name}"
            return None
        with zipfile.ZipFile(file) as archive:
            missing = [m for m in _MEMBERS if m not in archive.namelist()]
            bad = archive.testzip()
    except FileNotFoundError:
        return f"{file.name} is missing"
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
        return f"{file.name} or its checksum is unreadable ({type(err).__name__}: {err})"
    if missing or bad is not None:
        return f"{file.name}: " + (f"lacks {missing}" if missing else f"member {bad} fails its CRC")
    return None


def load_samples(path: str | Path) -> SampleSet:
    """Read a file written by :func:`save_samples`; uint8 images are scaled to [0, 1]."""
    file = samples_file(path)
    if not file.is_file():
        raise UserError(
            f"{str(path)!r}: no {file.name} (expected a samples folder or file written by a trial)"
        )
    try:
        with np.load(file, allow_pickle=False) as data:
            images = torch.from_numpy(data["images"])
            images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
            labels = torch.from_numpy(data["labels"]).long() if "labels" in data else None
            meta = json.loads(str(data["meta_json"])) if "meta_json" in data else {}
            captions = tuple(str(c) for c in data["captions"]) if "captions" in data else None
            tokens = torch.from_numpy(data["tokens"]).long()
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
        raise UserError(
            f"{file}: not a readable samples file ({type(err).__name__}: {str(err)[:200]}); expected the "
            "npz a trial writes (tokens, images, meta_json)"
        ) from None
    n = len(images)
    if images.ndim not in (4, 5) or not isinstance(meta, dict):
        raise UserError(
            f"{file}: images of shape {list(images.shape)}; expected (N, C, H, W) or (N, C, T, H, W)"
        )
    if len(tokens) != n or any(x is not None and len(x) != n for x in (labels, captions)):
        raise UserError(f"{file}: tokens, images, labels and captions hold different numbers of samples")
    return SampleSet(tokens, images, labels, meta, captions)


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
