"""Pre-tokenized data on disk: a folder of token shards described by ``manifest.json``.

Layout (written by the tokenize step for real data, by the tests for stand-ins)::

    <path>/manifest.json
        {"format": 1, "grid": [32, 32], "vocab_size": 16384, "num_classes": 1000,
         "splits": {"train": [{"tokens": "train-00000.npy", "labels": "train-00000-labels.npy",
                               "count": 5000, "sha256": "<of the tokens file>",
                               "files": {"train-00000-labels.npy": "<its sha256>"}}, ...],
                    "heldout": [...]},
         "reference": {"train": "reference-train.npy"},     # optional: real images, uint8 NHWC
                                                            # (clips: uint8 (N, T, H, W, C))
         "tokenizer": {"kind": "diffusers-vq", "path": "vq", "image_size": 256}}  # to decode

Study configs name the folder and the shape they expect (``data.options: {path, grid,
vocab_size, num_classes, segment_classes}``), so that plans and dry runs need no data; loading
checks the manifest against them, and every shard against its count, range and checksum, before
any work (streaming: every id scanned once per machine with the checksums); labels are checked
for count, dtype and range, and are present on every shard or none (every one of a
class-conditional training split). Loading reads a split into int64 tensors; training streams it
instead (``stream``, read by ``harness.data.shard_loader``): its tokens stay in their files, in
their stored dtype, and only each batch's rows are read and cast.

``segment_classes: K`` (> 0) reads each shard's label maps on the token grid (``-segments.npy``,
written by ``run_study.py tokenize`` from image + label-map pairs) as a second modality: the
dataset is then joint (``image`` codes and ``labels`` 0..K-1, each with its own [MASK]), for
segmentation as unmasking on real data. Label ids must lie in [0, K): a void id such as 255 is
a class of its own (K = 256) or is remapped before tokenizing.

``captions: true`` reads each shard's captions (``-captions.json``, from COCO-style sources):
the first caption of each image is its text condition (an image without one has the empty
caption, the CFG null), and the learned text encoder's vocabulary is the whitespace-separated
words of the training captions (read from the folder when a study is planned).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from harness.data.sources.shard_files import FORMAT as FORMAT
from harness.data.sources.shard_files import MANIFEST as MANIFEST
from harness.data.sources.shard_files import (
    NpyFile,
    ShardError,
    check_entry,
    check_sizes,
    folder_stamp,
    read_labels,
    verify_entry,
    verify_once,
)
from harness.data.sources.shard_files import token_dtype as token_dtype
from harness.data.sources.shard_files import write_shards as write_shards
from harness.data.sources.shard_tokenizer import ShardTokenizer
from harness.data.tokenizers.pixel import JointTokenizer
from harness.data.types import SPLITS, Dataset, DatasetShape, TokenDataset
from harness.errors import UserError, short
from models.modalities import Layout, Modality


@dataclass(frozen=True)
class ShardOptions:
    path: str
    grid: tuple[int, ...]
    vocab_size: int
    num_classes: int = 0
    segment_classes: int = 0  # > 0: the label maps as a second modality (a joint dataset)
    captions: bool = False  # the first caption of each image as its text condition

    @classmethod
    def parse(cls, options: dict[str, Any]) -> ShardOptions:
        missing = [k for k in ("path", "grid", "vocab_size") if k not in options]
        if missing:
            raise UserError(f"data.options for 'shards': missing {missing}; expected path, grid, vocab_size")
        known = {"path", "grid", "vocab_size", "num_classes", "segment_classes", "captions"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise UserError(f"data.options for 'shards': unknown {unknown}")
        segment_classes = options.get("segment_classes", 0)
        if not isinstance(segment_classes, int) or segment_classes < 0 or segment_classes == 1:
            raise UserError(
                f"data.options.segment_classes: {segment_classes!r}; expected 0 (no label maps) or"
                " the number of label classes (>= 2)"
            )
        captions = options.get("captions", False)
        if not isinstance(captions, bool):
            raise UserError(f"data.options.captions: {captions!r}; expected true or false")
        check_sizes(options)
        return cls(str(options["path"]), tuple(options["grid"]), int(options["vocab_size"]),
                   int(options.get("num_classes", 0)), segment_classes, captions)  # fmt: skip

    @functools.cached_property
    def layout(self) -> Layout | None:
        """image + labels for a folder read with its label maps; None for tokens alone."""
        if not self.segment_classes:
            return None
        image = Modality("image", self.vocab_size, self.grid)
        return Layout((image, Modality("labels", self.segment_classes, self.grid)))

    @property
    def shape(self) -> DatasetShape:
        layout = self.layout
        words = caption_vocabulary(self) if self.captions else ()
        if layout is None:
            return DatasetShape(self.grid, self.vocab_size, self.num_classes, caption_vocabulary=words)
        joint = (layout.seq_len,), layout.vocab_size, self.num_classes
        return DatasetShape(*joint, modalities=layout.modalities, caption_vocabulary=words)


def read_manifest(options: ShardOptions) -> dict[str, Any]:
    root = Path(options.path)
    path = root / MANIFEST
    if not path.is_file():
        raise ShardError(
            f"data.options.path {options.path!r}: no {MANIFEST} (tokenize the dataset into this folder first)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # unreadable, not UTF-8, not JSON
        raise ShardError(f"{path}: unreadable ({type(err).__name__}: {str(err)[:200]})") from None
    if not isinstance(manifest, dict):
        raise ShardError(f"{path}: {short(manifest)}; expected a JSON object")
    if manifest.get("format") != FORMAT:
        raise ShardError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT}")
    for key, want in (("grid", list(options.grid)), ("vocab_size", options.vocab_size),
                      ("num_classes", options.num_classes)):  # fmt: skip
        if manifest.get(key) != want:
            raise ShardError(f"{path}: {key} is {manifest.get(key)!r} but data.options.{key} is {want!r}")
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
        raise ShardError(f"{path}: splits is {short(splits)}; expected a mapping of split: [shard entries]")
    for split, entries in splits.items():
        for k, entry in enumerate(entries):
            check_entry(path, f"splits.{split}[{k}]", entry)
    return manifest


Verify = Literal["always", "once", "never"]


class ShardRows:
    """A split's token rows, left in their shard files and read a batch at a time:
    ``read(index (b,)) -> (b, L) long``, with ``segment_classes`` the joint image + label-map
    sequences (b, 2 L). Rows are read in their stored dtype (int16 / int32) by positional reads
    and cast to int64 per batch. Not memory maps: a mapped page counts in the reading process's
    RSS, and with large page-cache folios each random row maps ~1.5 MB (6,400 rows of a 2.4 GB
    folder: 2.3 GB of RSS); reads leave RSS flat while the page cache still serves repeated rows.

    Construction checks each shard's shape and dtype, and its checksum (``verify``: "always",
    "once" per machine through ``verify_once``, which also scans every id against its range
    first, or "never"); every read checks its ids against the vocabulary too. No file stays open
    between reads (``NpyFile``)."""

    def __init__(self, options: ShardOptions, split: str, verify: Verify = "always") -> None:
        if split not in SPLITS:
            raise ValueError(f"data.split: unknown {split!r}; expected one of {SPLITS}")
        entries = read_manifest(options)["splits"].get(split) or []
        if not entries:
            raise ShardError(f"{options.path}/{MANIFEST}: no shards for split {split!r}")
        self.options, self.root, self.seq_len = options, Path(options.path), int(np.prod(options.grid))
        # shard k, in the manifest's order: rows [offsets[k], offsets[k + 1]) of the split
        self.offsets = np.cumsum([0] + [int(e["count"]) for e in entries])
        self.files = [self._files(entry) for entry in entries]
        if verify == "once":  # "always" is loading, whose reads check every row
            verify_once(self.root, entries, self._scan, key=[options.vocab_size, options.segment_classes])
        for entry in entries if verify == "always" else ():
            verify_entry(self.root, entry)

    def _files(self, entry: dict[str, Any]) -> list[NpyFile]:
        """A shard's token file (and label-map file), their shapes checked against the manifest and
        their dtypes integer."""
        shape, tokens = (entry["count"], self.seq_len), self.root / entry["tokens"]
        files = [NpyFile.open(tokens, shape, "manifest says")]
        if self.options.layout is None:
            return files
        if not entry.get("segments"):
            raise ShardError(
                f"{tokens}: no label maps (-segments.npy) beside it, but data.options.segment_classes"
                f" is {self.options.segment_classes} (tokenize image + label-map pairs)"
            )
        return [*files, NpyFile.open(self.root / entry["segments"], shape, "the tokens are")]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def read(self, index: np.ndarray) -> Tensor:
        """Rows ``index`` (b,) of the split: (b, L) long, gathered shard by shard."""
        index = np.asarray(index, dtype=np.int64)  # (b,)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"row index out of range [0, {len(self)})")
        shard = np.searchsorted(self.offsets, index, side="right") - 1  # (b,)
        parts = [np.empty((len(index), self.seq_len), dtype=np.int64) for _ in self.files[0]]  # (b, L)
        for k in np.unique(shard):
            at = np.flatnonzero(shard == k)
            for m, file in enumerate(self.files[k]):
                block = file.read_rows(index[at] - self.offsets[k])  # (n_k, L) in the stored dtype
                if block.size and (block.min() < 0 or block.max() >= self._limit(m)):
                    self._refuse(file.path, m, f"{block.min()}..{block.max()}")
                parts[m][at] = block  # cast to int64 here, a batch at a time
        tokens = torch.from_numpy(parts[0])
        if self.options.layout is None:
            return tokens
        return self.options.layout.join({"image": tokens, "labels": torch.from_numpy(parts[1])})

    def _scan(self) -> None:
        """Every id of every shard within its range, a chunk of rows at a time."""
        for files in self.files:
            for m, file in enumerate(files):
                if found := file.first_outside(self._limit(m)):
                    self._refuse(file.path, m, f"{found[1]} at row {found[0]}")

    def _limit(self, m: int) -> int:
        """The ids of modality m (0: the tokens, 1: the label maps) lie in [0, limit)."""
        return (self.options.vocab_size, self.options.segment_classes)[m]

    def _refuse(self, file: Path, m: int, found: str) -> None:
        limit = self._limit(m)
        if m == 0:
            raise ShardError(f"{file}: token ids outside [0, {limit}): {found} (the manifest's vocab_size)")
        raise ShardError(
            f"{file}: label ids {found} outside [0, {limit}) (data.options.segment_classes;"
            " a void id such as 255 needs segment_classes 256 or a remap before tokenizing)"
        )


def split_labels(options: ShardOptions, split: str) -> Tensor | None:
    """The class of every sample of a split (N,) long, in shard order; None when no shard has
    them (refused for a class-conditional model's train split; see ``read_labels``)."""
    entries = read_manifest(options)["splits"].get(split) or []
    conditional = options.num_classes > 0 and split == "train"  # what a conditional model trains on
    labels = read_labels(Path(options.path), split, entries, options.num_classes, required=conditional)
    return None if labels is None else torch.from_numpy(labels)


def load_split(options: ShardOptions, split: str, verify: bool = True) -> tuple[Tensor, Tensor | None]:
    """(tokens (N, L) long, labels (N,) long or None) of a split, each shard checked; with
    ``segment_classes`` the tokens are the joint image + label-map sequences (N, 2 L)."""
    rows = ShardRows(options, split, "always" if verify else "never")
    return rows.read(np.arange(len(rows))), split_labels(options, split)


def split_captions(options: ShardOptions, split: str) -> tuple[str, ...]:
    """The first caption of every sample of a split ("" where an image has none), in shard order."""
    out: list[str] = []
    for entry in read_manifest(options)["splits"].get(split) or []:
        name = entry.get("captions")
        if not name:
            raise ShardError(
                f"{Path(options.path) / entry['tokens']}: no captions (-captions.json) beside it, but"
                " data.options.captions is true (tokenize a COCO-style source)"
            )
        per_image = json.loads((Path(options.path) / name).read_text())
        if len(per_image) != entry["count"]:
            count = entry["count"]
            raise ShardError(f"{Path(options.path) / name}: {len(per_image)} entries, the shard has {count}")
        out += [texts[0] if texts else "" for texts in per_image]
    return tuple(out)


def caption_vocabulary(options: ShardOptions) -> tuple[str, ...]:
    """The words of the training captions, sorted: what a learned text encoder reads. Read once
    per manifest version: validating a study asks for the shape several times per trial."""
    manifest = Path(options.path) / MANIFEST
    stamp = manifest.stat().st_mtime_ns if manifest.is_file() else None
    return _caption_vocabulary(options, stamp)


@functools.lru_cache(maxsize=8)
def _caption_vocabulary(options: ShardOptions, stamp: int | None) -> tuple[str, ...]:
    return tuple(sorted({word for text in split_captions(options, "train") for word in text.split()}))


def shards(split: str = "train", **options: Any) -> TokenDataset:
    parsed = ShardOptions.parse(options)
    return _dataset(parsed, split, *load_split(parsed, split))


def stream(split: str = "train", **options: Any) -> TokenDataset:
    """``shards`` with the tokens left in their files (``rows`` reads them a batch at a time), the
    checksums verified once per machine (``verify_once``); labels and captions load as there."""
    parsed = ShardOptions.parse(options)
    rows = ShardRows(parsed, split, verify="once")
    return _dataset(parsed, split, None, split_labels(parsed, split), rows)


def _dataset(
    options: ShardOptions,
    split: str,
    tokens: Tensor | None,
    labels: Tensor | None,
    rows: ShardRows | None = None,
) -> TokenDataset:
    tokenizer: Any = ShardTokenizer(options, read_manifest(options))
    if options.layout is not None:
        tokenizer = JointTokenizer(options.layout, tokenizer)
    captions = split_captions(options, split) if options.captions else None
    return TokenDataset("shards", split, tokens, labels, options.num_classes, tokenizer, captions, rows)


def shard_images(split: str = "train", **options: Any) -> tuple[Tensor, Tensor | None]:
    """The real images the manifest lists for a split (uint8 NHWC) as (N, C, H, W) floats in [0, 1];
    reference clips (uint8 (N, T, H, W, C)) as (N, C, T, H, W)."""
    parsed = ShardOptions.parse(options)
    manifest = read_manifest(parsed)
    name = (manifest.get("reference") or {}).get(split)
    if not name:
        raise ShardError(
            f"{parsed.path}/{MANIFEST}: no reference images for split {split!r} (needed for FID)"
        )
    images = np.load(Path(parsed.path) / name, mmap_mode="r", allow_pickle=False)
    x = torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0)  # (N, [T,] H, W, C)
    x = x.permute(0, 4, 1, 2, 3) if x.dim() == 5 else x.permute(0, 3, 1, 2)  # (N, C, [T,] H, W)
    return x, None


def shards_check(needs_reference: bool = False, **options: Any) -> None:
    """Before a study starts on this machine: the folder's manifest matches the options and lists
    training shards, and, for a trial scored by feature metrics, the training split's reference
    images (what FID and the others score against)."""
    parsed = ShardOptions.parse(options)
    manifest, where = read_manifest(parsed), Path(parsed.path) / MANIFEST
    if not manifest["splits"].get("train"):
        raise ShardError(f"{where}: no shards of split 'train' (tokenize --split train into this folder)")
    if needs_reference and not (manifest.get("reference") or {}).get("train"):
        raise ShardError(
            f"{where}: no reference images of split 'train' (tokenize --reference N); the trial's"
            " metrics score against them"
        )


def shards_stamp(**options: Any) -> tuple:
    return folder_stamp(Path(ShardOptions.parse(options).path))


def shards_shape(**options: Any) -> DatasetShape:
    return ShardOptions.parse(options).shape


DATASET = Dataset(
    "shards",
    load=shards,
    stream=stream,
    shape=shards_shape,
    real_images=shard_images,
    stamp=shards_stamp,
    check_files=shards_check,
    default_extractor=None,
    options=ShardOptions,
    summary="pre-tokenized data in a shard folder (run_study.py tokenize)",
)
