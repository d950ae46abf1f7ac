"""On-disk cache: where it lives, atomic writes, and the hashes that name cached things.

Everything cached is a dict of tensors and plain Python values, saved with ``torch.save`` and
read back with ``torch.load(weights_only=True)``, so loading a cache file never runs code.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

CACHE_ENV = "UNMASK_CACHE"
REPO_ROOT = Path(__file__).resolve().parents[1]


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``override``, else ``$UNMASK_CACHE``, else ``<repo>/.cache/unmask``."""
    if override is not None:
        return Path(override)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else REPO_ROOT / ".cache" / "unmask"


def atomic_write(path: Path, write: Any) -> Path:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it into place.

    A reader sees either the old file or the complete new one, never a partial write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; cached files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_torch(obj: Mapping[str, Any], path: Path) -> Path:
    """Atomically ``torch.save`` a dict of tensors and plain values."""
    return atomic_write(path, lambda f: torch.save(dict(obj), f))


def load_torch(path: Path) -> dict[str, Any]:
    """Load a file written by :func:`save_torch`; ``weights_only=True`` refuses arbitrary objects."""
    return torch.load(path, map_location="cpu", weights_only=True)


def sha256_tensors(tensors: Mapping[str, Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of each tensor, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sha256_tensor(t: Tensor) -> str:
    """sha256 of one tensor's dtype, shape and bytes."""
    return sha256_tensors({"": t})


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short sha256 of a JSON-able value, with sorted keys so dict order does not matter."""
    text = json.dumps(obj, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    raise TypeError(f"cannot hash a {type(obj).__name__} in a cache key")


def atomic_write_text(path: Path, text: str) -> None:
    """Writes text so that a reader sees the old file or the whole new one (tmp file + rename)."""
    atomic_write(path, lambda f: f.write(text.encode()))
