"""The files of a shard folder (``harness.data.sources.shards``): the format, checksums verified
always or once per machine, .npy files read row by row, and the writer the tests use."""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.cache import atomic_write_text, cache_dir, sha256_file, stable_hash
from harness.errors import UserError

MANIFEST = "manifest.json"
FORMAT = 1


class ShardError(UserError):
    """A shard folder that is missing, or does not match its manifest or the study's config;
    names the file."""


def token_dtype(vocab_size: int) -> type:
    """The smallest signed integer type that holds ids 0..vocab_size-1 (int16 up to 2**15 codes)."""
    return np.int16 if vocab_size <= 2**15 else np.int32


def verify_entry(root: Path, entry: dict[str, Any]) -> None:
    """A shard's files against the manifest's checksums (tokens: ``sha256``; the others: ``files``)."""
    for name, digest in _checksums(entry).items():
        file = Path(root) / name
        if not file.is_file() or sha256_file(file) != digest:
            raise ShardError(f"{file}: checksum does not match the manifest (a partial or corrupt shard)")


def verify_once(root: Path, entries: list[dict[str, Any]]) -> None:
    """``verify_entry`` for every shard, once per machine while the files stay as they are: a
    stamp in the cache folder, named by each file's path, size, mtime and expected digest, and
    written under a lock, so that data-parallel ranks starting together hash the folder once
    (about 2 s per GB) and the others wait for the stamp."""
    checksums = sorted({name: digest for e in entries for name, digest in _checksums(e).items()}.items())
    stats = [(str((root / name).resolve()), *_stat(root / name), digest) for name, digest in checksums]
    stamp = cache_dir() / "verified-shards" / stable_hash(stats, length=32)
    if stamp.is_file():
        return
    stamp.parent.mkdir(parents=True, exist_ok=True)
    with open(stamp.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not stamp.is_file():
            for entry in entries:
                verify_entry(root, entry)
            atomic_write_text(stamp, json.dumps(stats))


def _checksums(entry: dict[str, Any]) -> dict[str, str]:
    return {entry["tokens"]: entry["sha256"], **entry.get("files", {})}


def _stat(file: Path) -> tuple[int, int]:
    stat = file.stat() if file.is_file() else None
    return (stat.st_size, stat.st_mtime_ns) if stat else (-1, -1)


@dataclass(frozen=True)
class NpyFile:
    """A C-order .npy file of (N, L) rows: where its data starts and in which dtype."""

    path: Path
    dtype: np.dtype
    offset: int  # of the data, after the header
    row_length: int  # L

    @classmethod
    def open(cls, path: Path, shape: tuple[int, int], what: str) -> NpyFile:
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            header = (
                np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            )
            found, fortran_order, dtype = header(f)
            if found != shape or fortran_order:
                order = " (Fortran order)" if fortran_order else ""
                raise ShardError(f"{path}: shape {found}{order}, {what} {shape}")
            return cls(path, dtype, f.tell(), shape[1])

    def read_rows(self, fd: int, rows: np.ndarray) -> np.ndarray:
        """Rows (n,) of the open file ``fd`` in its dtype (n, L), one read per run of consecutive
        rows: positional reads, nothing mapped into the process (see ``ShardRows``)."""
        order = np.argsort(rows, kind="stable")
        ordered, size = rows[order], self.row_length * self.dtype.itemsize
        out = np.empty((len(rows), self.row_length), dtype=self.dtype)  # rows in ``ordered`` order
        cuts = (np.flatnonzero(np.diff(ordered) != 1) + 1).tolist()
        for a, b in zip([0, *cuts], [*cuts, len(rows)], strict=True):
            if os.preadv(fd, [out[a:b]], self.offset + int(ordered[a]) * size) != (b - a) * size:
                raise ShardError(f"{self.path}: shorter than its header says (a truncated shard)")
        block = np.empty_like(out)
        block[order] = out
        return block


def write_shards(
    path: Path,
    split_tokens: dict[str, tuple[np.ndarray, np.ndarray | None]],
    *,
    grid: tuple[int, ...],
    vocab_size: int,
    num_classes: int,
    shard_size: int = 4096,
    reference: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write token arrays as checksummed shards and their manifest (the manifest last, atomically)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(vocab_size)
    manifest: dict[str, Any] = {"format": FORMAT, "grid": list(grid), "vocab_size": vocab_size,
                                "num_classes": num_classes, "splits": {}}  # fmt: skip
    for split, (tokens, labels) in split_tokens.items():
        entries = []
        for i, start in enumerate(range(0, len(tokens), shard_size)):
            stem = f"{split}-{i:05d}"
            np.save(path / f"{stem}.npy", tokens[start : start + shard_size].astype(dtype))
            entry = {"tokens": f"{stem}.npy", "count": int(min(shard_size, len(tokens) - start))}
            entry["sha256"] = sha256_file(path / entry["tokens"])
            if labels is not None:
                np.save(path / f"{stem}-labels.npy", labels[start : start + shard_size].astype(np.int64))
                entry["labels"] = f"{stem}-labels.npy"
            entries.append(entry)
        manifest["splits"][split] = entries
    if reference:
        manifest["reference"] = {}
        for split, images in reference.items():
            np.save(path / f"reference-{split}.npy", images.astype(np.uint8))
            manifest["reference"][split] = f"reference-{split}.npy"
    tmp = path / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(path / MANIFEST)
    return path
