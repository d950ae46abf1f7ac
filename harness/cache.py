"""On-disk cache: where it lives, atomic writes, and the hashes that name cached things.

Everything cached is a dict of tensors and plain Python values, saved with ``torch.save`` and
read back with ``torch.load(weights_only=True)``, so loading a cache file never runs code.

A damaged file (a cache entry, a ledger record, a checkpoint, a sample file) is never deleted
and never fatal: it is moved aside to a ``quarantine`` folder of its root, named
``<name>.<UTC timestamp>``, with a one-line warning on stderr, and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
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


def probe_writable(folder: Path, size: int = 1 << 16) -> None:
    """Writes, syncs and removes ``size`` bytes in ``folder``; raises the OSError (with the
    folder as its filename) when that fails. Tells a full disk or a read-only folder apart from
    the error a library raised on top of it (Ray Tune's, when its experiment state is cut short)."""
    folder, tmp = Path(folder), None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".probe.", dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * size)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(folder)) from err
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def save_torch(obj: Mapping[str, Any], path: Path) -> Path:
    """Atomically ``torch.save`` a dict of tensors and plain values."""
    return atomic_write(path, lambda f: torch.save(dict(obj), f))


def load_torch(path: Path) -> dict[str, Any]:
    """Load a file written by :func:`save_torch`; ``weights_only=True`` refuses arbitrary objects."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_cached(
    path: Path,
    root: Path,
    required: tuple[str, ...] = (),
    check: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any] | None:
    """A cache entry written by :func:`save_torch`, or None when it is absent or damaged.

    A file that does not load, lacks a ``required`` key, or fails ``check`` (which raises when the
    entry is not what the caller asked for: another key's, a wrong shape) is quarantined under
    ``<root>/quarantine/`` (see :func:`quarantine_cache_entry`) and the caller recomputes it.
    """
    if not path.is_file():
        return None
    try:
        entry = load_torch(path)
        if not isinstance(entry, dict):
            raise TypeError(f"holds a {type(entry).__name__}, not a dict")
        if missing := [key for key in required if key not in entry]:
            raise KeyError(f"lacks {missing}")
        if check is not None:
            check(entry)
    except FileNotFoundError:  # another process moved it aside first
        return None
    except Exception as err:  # torch raises several types for truncated or foreign files
        quarantine_cache_entry(path, root, f"damaged cache entry ({type(err).__name__}: {err})")
        return None
    return entry


def quarantine_cache_entry(path: Path, root: Path, reason: str) -> Path | None:
    """Moves a damaged cache file to ``<root>/quarantine/<its folder under root>/``."""
    path, root = Path(path), Path(root)
    below = path.parent.relative_to(root) if path.parent.is_relative_to(root) else Path()
    return quarantine(path, root / QUARANTINE / below, reason)


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


def atomic_copy(source: Path, target: Path) -> None:
    """Copies a file so that a reader of ``target`` sees nothing or the whole copy."""
    with open(source, "rb") as src:
        atomic_write(target, lambda f: shutil.copyfileobj(src, f, 1 << 20))


QUARANTINE = "quarantine"  # the folder, under a root, where damaged files are moved aside


def stamped(folder: Path, name: str) -> Path:
    """``folder/<name>.<UTC timestamp>``, to microseconds so that two moves do not collide."""
    return Path(folder) / f"{name}.{datetime.now(UTC).strftime('%Y%m%dT%H%M%S.%fZ')}"


def quarantine(path: Path, folder: Path, reason: str) -> Path | None:
    """Moves a damaged file or folder to ``folder/<name>.<UTC timestamp>`` and warns on stderr.

    Returns where it went, or None when it was gone already (another process moved it first).
    """
    target = stamped(folder, Path(path).name)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return None
    warn_quarantined(path, target, reason)
    return target


def warn_quarantined(path: Path, target: Path, reason: str) -> None:
    """One line on stderr: what was damaged, why, and where it went."""
    why = " ".join(reason.split())  # one line, whatever the error message held
    print(f"warning: {path}: {why}; moved to {target} (it is recomputed)", file=sys.stderr, flush=True)
