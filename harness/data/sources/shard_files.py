"""The files of a shard folder (``harness.data.sources.shards``): the format, the manifest's
shard entries, checksums verified always or once per machine (with every id scanned against its
range), .npy files of integers read row by row, label files checked whole, and the writer the
tests use."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.cache import atomic_write_text, cache_dir, sha256_file, stable_hash
from harness.errors import UserError, short

MANIFEST = "manifest.json"
FORMAT = 1
CHUNK_BYTES = 1 << 24  # what a scan of a file's ids holds at a time (16 MB, in the stored dtype)


class ShardError(UserError):
    """A shard folder that is missing, or does not match its manifest or the study's config;
    names the file."""


def token_dtype(vocab_size: int) -> type:
    """The smallest signed integer type that holds ids 0..vocab_size-1 (int16 up to 2**15 codes)."""
    return np.int16 if vocab_size <= 2**15 else np.int32


# the fields every shard entry has: name -> (type, what it holds)
ENTRY_FIELDS = {
    "tokens": (str, "the name of its tokens file"),
    "count": (int, "its number of rows (an integer >= 0)"),
    "sha256": (str, "the sha256 of its tokens file"),
}


def check_entry(manifest: Path, where: str, entry: Any) -> None:
    """A shard entry of ``manifest`` (at ``where``, e.g. ``splits.train[3]``) has the fields of
    ``ENTRY_FIELDS``, each of its type."""
    if not isinstance(entry, dict):
        raise ShardError(f"{manifest}: {where} is {short(entry)}; expected a mapping of {list(ENTRY_FIELDS)}")
    for key, (kind, what) in ENTRY_FIELDS.items():
        if key not in entry:
            raise ShardError(f"{manifest}: {where} has no {key!r}; expected {what}")
        value = entry[key]
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise ShardError(f"{manifest}: {where}.{key} is {short(value)}; expected {what}")


def verify_entry(root: Path, entry: dict[str, Any]) -> None:
    """A shard's files against the manifest's checksums (tokens: ``sha256``; the others: ``files``)."""
    check_entry(Path(root) / MANIFEST, f"the entry of {entry.get('tokens')!r}", entry)
    for name, digest in _checksums(entry).items():
        file = Path(root) / name
        if not file.is_file() or sha256_file(file) != digest:
            raise ShardError(f"{file}: checksum does not match the manifest (a partial or corrupt shard)")


def verify_once(
    root: Path, entries: list[dict[str, Any]], scan: Callable[[], None] = lambda: None, key: Any = None
) -> None:
    """``verify_entry`` for every shard, then ``scan`` (the checks of the files' contents, which
    depend on ``key``: the ids' ranges), once per machine while the files stay as they are: a
    stamp in the cache folder, named by each file's path, size, mtime and expected digest and by
    ``key``, and written under a lock, so that data-parallel ranks starting together read the
    folder once (about 2 s per GB) and the others wait for the stamp. A refusal writes none."""
    checksums = sorted({name: digest for e in entries for name, digest in _checksums(e).items()}.items())
    stats = [(str((root / name).resolve()), *_stat(root / name), digest) for name, digest in checksums]
    stamp = cache_dir() / "verified-shards" / stable_hash([stats, key], length=32)
    if stamp.is_file():
        return
    stamp.parent.mkdir(parents=True, exist_ok=True)
    with open(stamp.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not stamp.is_file():
            for entry in entries:
                verify_entry(root, entry)
            scan()
            atomic_write_text(stamp, json.dumps(stats))


def _checksums(entry: dict[str, Any]) -> dict[str, str]:
    """File name -> sha256; label files count from the folders whose writer recorded them."""
    return {entry["tokens"]: entry["sha256"], **entry.get("files", {})}


def _stat(file: Path) -> tuple[int, int]:
    stat = file.stat() if file.is_file() else None
    return (stat.st_size, stat.st_mtime_ns) if stat else (-1, -1)


@dataclass(frozen=True)
class NpyFile:
    """A C-order .npy file of integers: (N, L) rows, or (N,) values read as rows of one; where its
    data starts and in which dtype. Read by positional reads on a file opened per call, so that a
    folder of any number of shards holds no file open between reads (kept open, 400 shards ran
    out of descriptors under ``ulimit -n 256``); an open costs ~2 us per shard a batch touches."""

    path: Path
    dtype: np.dtype
    offset: int  # of the data, after the header
    num_rows: int  # N
    row_length: int  # L (1 for (N,) values)

    @classmethod
    def open(cls, path: Path, shape: tuple[int, ...], what: str) -> NpyFile:
        if not path.is_file():
            raise ShardError(f"{path}: no such file; the manifest lists it")
        with open(path, "rb") as f:
            try:
                major, _ = np.lib.format.read_magic(f)
                header = (
                    np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                )
                found, fortran_order, dtype = header(f)
            except ValueError as err:
                raise ShardError(f"{path}: not a .npy file ({err})") from None
            if found != shape or fortran_order:
                order = " (Fortran order)" if fortran_order else ""
                raise ShardError(f"{path}: shape {found}{order}, {what} {shape}")
            if dtype.kind not in "iu":  # a float 45.5 would read as 45, a bool as 0 / 1
                raise ShardError(
                    f"{path}: dtype {dtype}; expected integer ids (written as int16 / int32, labels int64)"
                )
            return cls(path, dtype, f.tell(), shape[0], math.prod(shape[1:]))

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows (n,) in the file's dtype (n, L), one read per run of consecutive rows: nothing
        mapped into the process (see ``ShardRows``)."""
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        out = np.empty((len(rows), self.row_length), dtype=self.dtype)  # rows in ``ordered`` order
        cuts = (np.flatnonzero(np.diff(ordered) != 1) + 1).tolist()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for a, b in zip([0, *cuts], [*cuts, len(rows)], strict=True):
                self._read(fd, out[a:b], int(ordered[a]))
        finally:
            os.close(fd)
        block = np.empty_like(out)
        block[order] = out
        return block

    def first_outside(self, limit: int) -> tuple[int, int] | None:
        """(row, id) of the first id outside [0, limit), or None: every row read in order,
        ``CHUNK_BYTES`` at a time, compared in the stored dtype (nothing widened but per-row
        extremes)."""
        step = max(1, CHUNK_BYTES // max(1, self.row_length * self.dtype.itemsize))
        buffer = np.empty((min(step, self.num_rows), self.row_length), dtype=self.dtype)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for start in range(0, self.num_rows, step):
                block = buffer[: min(step, self.num_rows - start)]  # (n, L)
                self._read(fd, block, start)
                low, high = block.min(axis=1).astype(np.int64), block.max(axis=1).astype(np.int64)  # (n,)
                bad = np.flatnonzero((low < 0) | (high >= limit))
                if bad.size:
                    r = int(bad[0])
                    return start + r, int(low[r] if low[r] < 0 else high[r])
        finally:
            os.close(fd)
        return None

    def _read(self, fd: int, out: np.ndarray, row: int) -> None:
        """Rows row, row + 1, ... of ``fd`` into ``out`` (n, L)."""
        size = self.row_length * self.dtype.itemsize
        if os.preadv(fd, [out], self.offset + row * size) != len(out) * size:
            raise ShardError(f"{self.path}: shorter than its header says (a truncated shard)")


def read_labels(
    root: Path, split: str, entries: list[dict[str, Any]], num_classes: int, required: bool
) -> np.ndarray | None:
    """The class of every sample of a split (N,) int64 in shard order, or None when no shard has
    labels. Every shard has a label file or none does (all of them when ``required``: a class-
    conditional model trains on the split); each holds ``count`` integers, in [0, num_classes)
    when num_classes > 0 (num_classes itself is the null class, never a sample's)."""
    missing = [root / e["tokens"] for e in entries if not e.get("labels")]
    if missing and (required or len(missing) < len(entries)):
        have = f"{len(entries) - len(missing)} of the split's {len(entries)} shards have them"
        why = have if len(missing) < len(entries) else f"num_classes is {num_classes} (a conditional model)"
        raise ShardError(
            f"{missing[0]}: no labels (-labels.npy) beside it, but {why}; expected labels for every"
            f" shard of split {split!r}"
        )
    if missing:
        return None
    labels = []
    for entry in entries:
        file = NpyFile.open(root / entry["labels"], (entry["count"],), "its shard has")
        found = file.first_outside(num_classes) if num_classes else None
        if found:
            raise ShardError(
                f"{file.path}: labels outside [0, {num_classes}): {found[1]} at row {found[0]}"
                f" (num_classes {num_classes}; {num_classes} itself is the null class)"
            )
        labels.append(np.load(file.path, allow_pickle=False).astype(np.int64))
    return np.concatenate(labels)


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
                entry["files"] = {entry["labels"]: sha256_file(path / entry["labels"])}
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


def rewrite_file(path: Path, name: str, array: np.ndarray) -> None:
    """Replace one file of a shard folder and record its new checksum wherever the manifest
    lists it (tests: a damaged file whose checksum still matches)."""
    path = Path(path)
    np.save(path / name, array)
    digest, manifest = sha256_file(path / name), json.loads((path / MANIFEST).read_text())
    for entry in (e for entries in manifest["splits"].values() for e in entries):
        if entry.get("tokens") == name:
            entry["sha256"] = digest
        if name in entry.get("files", {}):
            entry["files"][name] = digest
    atomic_write_text(path / MANIFEST, json.dumps(manifest, indent=2))


# What one model can embed and attend over on one machine (a VQ-f8 grid of 256 x 256 images is
# 32 x 32 = 1,024 tokens, ImageNet-21k has 21,841 classes, the largest VQ codebooks 2**14 codes).
MAX_TOKENS = 2**16
MAX_VOCAB = 2**20
MAX_CLASSES = 100_000


def check_sizes(options: dict[str, Any]) -> None:
    """grid, vocab_size, num_classes and segment_classes within what a model can hold (their types
    are checked already)."""
    grid = tuple(options["grid"])
    if not 1 <= len(grid) <= 3 or min(grid) < 1 or math.prod(grid) > MAX_TOKENS:
        raise UserError(
            f"data.options.grid: {short(list(grid))}; expected 1 to 3 sizes >= 1,"
            f" at most {MAX_TOKENS:,} tokens in all"
        )
    for key, low, high in (("vocab_size", 2, MAX_VOCAB), ("num_classes", 0, MAX_CLASSES),
                           ("segment_classes", 0, MAX_VOCAB)):  # fmt: skip
        value = options.get(key, 0)
        if not low <= value <= high:
            raise UserError(f"data.options.{key}: {value}; expected an integer in [{low}, {high:,}]")


def folder_stamp(root: Path) -> tuple:
    """Inode, size and modification time of a folder's manifest and each reference file it names: a
    folder tokenized again in place (or a reference file replaced) gets another stamp."""
    files = [root / MANIFEST]
    with contextlib.suppress(OSError, ValueError, AttributeError):
        files += [root / name for name in (json.loads(files[0].read_text()).get("reference") or {}).values()]
    stamps = []
    for path in files:
        with contextlib.suppress(OSError, ValueError):
            stat = path.stat()
            stamps.append((str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)
