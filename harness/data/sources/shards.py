"""Pre-tokenized data on disk: a folder of token shards described by ``manifest.json``.

Layout (written by the tokenize step for real data, by the tests for stand-ins)::

    <path>/manifest.json
        {"format": 1, "grid": [32, 32], "vocab_size": 16384, "num_classes": 1000,
         "splits": {"train": [{"tokens": "train-00000.npy", "labels": "train-00000-labels.npy",
                               "count": 5000, "sha256": "<of the tokens file>"}, ...],
                    "heldout": [...]},
         "reference": {"train": "reference-train.npy"},     # optional: real images, uint8 NHWC
                                                            # (clips: uint8 (N, T, H, W, C))
         "tokenizer": {"kind": "diffusers-vq", "path": "vq", "image_size": 256}}  # to decode

Study configs name the folder and the shape they expect (``data.options: {path, grid,
vocab_size, num_classes, segment_classes}``), so that plans and dry runs need no data; loading
checks the manifest against them, and every shard against its count, range and checksum, before
any work. Token files are read through memory maps into int64 tensors.

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
from typing import Any

import numpy as np
import torch
from torch import Tensor

from harness.cache import sha256_file
from harness.data.tokenizers.pixel import JointTokenizer
from harness.data.types import SPLITS, Dataset, DatasetShape, TokenDataset
from harness.errors import UserError
from models.modalities import Layout, Modality

MANIFEST = "manifest.json"
FORMAT = 1


class ShardError(UserError):
    """A shard folder that is missing, or does not match its manifest or the study's config;
    names the file."""


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
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ShardError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT}")
    for key, want in (("grid", list(options.grid)), ("vocab_size", options.vocab_size),
                      ("num_classes", options.num_classes)):  # fmt: skip
        if manifest.get(key) != want:
            raise ShardError(f"{path}: {key} is {manifest.get(key)!r} but data.options.{key} is {want!r}")
    return manifest


def token_dtype(vocab_size: int) -> type:
    """The smallest signed integer type that holds ids 0..vocab_size-1 (int16 up to 2**15 codes)."""
    return np.int16 if vocab_size <= 2**15 else np.int32


def verify_entry(root: Path, entry: dict[str, Any]) -> None:
    """A shard's files against the manifest's checksums (tokens: ``sha256``; the others: ``files``)."""
    checksums = {entry["tokens"]: entry["sha256"], **entry.get("files", {})}
    for name, digest in checksums.items():
        file = Path(root) / name
        if not file.is_file() or sha256_file(file) != digest:
            raise ShardError(f"{file}: checksum does not match the manifest (a partial or corrupt shard)")


def load_split(options: ShardOptions, split: str, verify: bool = True) -> tuple[Tensor, Tensor | None]:
    """(tokens (N, L) long, labels (N,) long or None) of a split, each shard checked; with
    ``segment_classes`` the tokens are the joint image + label-map sequences (N, 2 L)."""
    if split not in SPLITS:
        raise ValueError(f"data.split: unknown {split!r}; expected one of {SPLITS}")
    manifest = read_manifest(options)
    entries = manifest["splits"].get(split) or []
    if not entries:
        raise ShardError(f"{options.path}/{MANIFEST}: no shards for split {split!r}")
    L = int(np.prod(options.grid))
    tokens, labels = [], []
    for entry in entries:
        file = Path(options.path) / entry["tokens"]
        if verify:
            verify_entry(Path(options.path), entry)
        array = np.load(file, mmap_mode="r", allow_pickle=False)
        if array.shape != (entry["count"], L):
            raise ShardError(f"{file}: shape {array.shape}, manifest says ({entry['count']}, {L})")
        if array.size and (int(array.max()) >= options.vocab_size or int(array.min()) < 0):
            raise ShardError(f"{file}: token ids outside [0, {options.vocab_size})")
        part = torch.from_numpy(np.asarray(array, dtype=np.int64))
        tokens.append(part if options.layout is None else join_segments(options, entry, part))
        if entry.get("labels"):
            labels.append(torch.from_numpy(np.load(Path(options.path) / entry["labels"]).astype(np.int64)))
    label_tensor = torch.cat(labels) if labels and len(labels) == len(entries) else None
    return torch.cat(tokens), label_tensor


def join_segments(options: ShardOptions, entry: dict[str, Any], image: Tensor) -> Tensor:
    """A shard's image tokens (n, L) joined with its label maps (n, L) into (n, 2 L), checked."""
    name = entry.get("segments")
    if not name:
        raise ShardError(
            f"{Path(options.path) / entry['tokens']}: no label maps (-segments.npy) beside it, but"
            f" data.options.segment_classes is {options.segment_classes} (tokenize image + label-map pairs)"
        )
    file = Path(options.path) / name
    segments = np.load(file, mmap_mode="r", allow_pickle=False)
    if segments.shape != tuple(image.shape):
        raise ShardError(f"{file}: shape {segments.shape}, the tokens are {tuple(image.shape)}")
    if segments.size and (int(segments.min()) < 0 or int(segments.max()) >= options.segment_classes):
        raise ShardError(
            f"{file}: label ids {int(segments.min())}..{int(segments.max())} outside [0,"
            f" {options.segment_classes}) (data.options.segment_classes; a void id such as 255 needs"
            " segment_classes 256 or a remap before tokenizing)"
        )
    labels = torch.from_numpy(np.asarray(segments, dtype=np.int64))
    return options.layout.join({"image": image, "labels": labels})


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


class ShardTokenizer:
    """Grid and vocabulary of pre-tokenized data; decodes through the tokenizer the manifest names
    (``harness.data.tokenizers.pretrained_vq.build_tokenizer``:
    ``{"kind": "diffusers-vq" | "original-vq" | "pixel",
    "path": ..., "image_size": ...}``, a relative path relative to the folder). Clips: shards on a
    (T, h, w) grid of a tokenizer with an (h, w) grid go through it frame by frame, as clips
    (N, C, T, H, W) in [0, 1] (the layout of ``PixelTokenizer`` with a 3-d grid)."""

    def __init__(self, options: ShardOptions, manifest: dict[str, Any]) -> None:
        self.grid, self.vocab_size, self.manifest = options.grid, options.vocab_size, manifest
        self.root = Path(options.path)
        self._decoder: Any = None

    def _tokenizer(self) -> Any:
        if self._decoder is None:
            from harness.data.tokenizers.pretrained_vq import TOKENIZER_KINDS, build_tokenizer

            spec = self.manifest.get("tokenizer") or {}
            if spec.get("kind") not in TOKENIZER_KINDS:
                raise ShardError(
                    f"{self.root / MANIFEST}: tokenizer {spec or 'none'}; decoding needs one of kind"
                    f" {TOKENIZER_KINDS} with its path and image_size"
                )
            self._decoder = build_tokenizer(spec, self.root)
            grids = [tuple(self.grid)] + ([tuple(self.grid[1:])] if len(self.grid) == 3 else [])
            if tuple(self._decoder.grid) not in grids or self._decoder.vocab_size != self.vocab_size:
                raise ShardError(
                    f"{self.root / MANIFEST}: its tokenizer makes {self._decoder.grid} grids of"
                    f" {self._decoder.vocab_size} codes, the shards hold {self.grid} / {self.vocab_size}"
                )
        return self._decoder

    @property
    def frames(self) -> int:
        """T when the shards hold clips (T, h, w) of a per-frame tokenizer (h, w); 0 otherwise."""
        per_frame = tuple(self._tokenizer().grid) != tuple(self.grid)
        return int(self.grid[0]) if per_frame else 0

    def encode(self, images: Tensor) -> Tensor:
        """images (N, C, H, W), or clips (N, C, T, H, W) -> tokens (N, [T] h w)."""
        T = self.frames
        if not T:
            return self._tokenizer().encode(images)
        frames = images.transpose(1, 2).flatten(0, 1)  # (N T, C, H, W)
        return self._tokenizer().encode(frames).reshape(images.shape[0], -1)  # (N, T h w)

    def decode(self, tokens: Tensor) -> Tensor:
        """tokens (N, [T] h w) -> images (N, C, H, W), or clips (N, C, T, H, W), in [0, 1]."""
        T = self.frames
        if not T:
            return self._tokenizer().decode(tokens)
        x = self._tokenizer().decode(tokens.reshape(tokens.shape[0] * T, -1))  # (N T, C, H, W)
        return x.reshape(tokens.shape[0], T, *x.shape[1:]).transpose(1, 2).contiguous()  # (N, C, T, H, W)


def shards(split: str = "train", **options: Any) -> TokenDataset:
    parsed = ShardOptions.parse(options)
    tokens, labels = load_split(parsed, split)
    manifest = read_manifest(parsed)
    tokenizer: Any = ShardTokenizer(parsed, manifest)
    if parsed.layout is not None:
        tokenizer = JointTokenizer(parsed.layout, tokenizer)
    captions = split_captions(parsed, split) if parsed.captions else None
    return TokenDataset("shards", split, tokens, labels, parsed.num_classes, tokenizer, captions)


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


def shards_shape(**options: Any) -> DatasetShape:
    return ShardOptions.parse(options).shape


DATASET = Dataset(
    "shards",
    load=shards,
    shape=shards_shape,
    real_images=shard_images,
    default_extractor=None,
    options=ShardOptions,
    summary="pre-tokenized data in a shard folder (run_study.py tokenize)",
)
