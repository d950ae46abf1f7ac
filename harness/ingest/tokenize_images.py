"""Tokenize an image source into a shard folder (``harness.data.sources.shards``), resumably.

Sample ``s`` is source item ``s // 2`` (flipped horizontally when ``s`` is odd) with ``flip``,
else item ``s``; each image gets ADM's centre crop to ``image_size`` and goes through the
tokenizer in batches that start at its shard's first sample, so a shard's bytes do not depend on
where a run started. Shard ``k`` holds samples ``[k * shard_size, (k + 1) * shard_size)``:
``<split>-<k>.npy`` tokens (n, L), with ``-labels.npy`` (n,) class ids, ``-segments.npy`` (n, L)
label maps on the token grid, ``-captions.json`` per-sample captions, as the source has them.

Clips (``frames`` T > 0, a ``clip-folders`` source): a sample is a clip's first T frames, each
given the same crop (and flip), encoded frame by frame into tokens (T, h, w) flattened to
(T * h * w,); the manifest's grid is [T, h, w] and reference clips are (N, T, S, S, C).

Every file is written atomically; finished shards are listed with their checksums in
``.tokenize-<split>.json``. A rerun with the same arguments verifies them and restarts at the
first missing or corrupt shard; the manifest is written (atomically) when the split is complete.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.cache import atomic_write, sha256_file
from harness.data.sources.shards import FORMAT, MANIFEST, ShardError, token_dtype, verify_entry
from harness.data.types import SPLITS
from harness.errors import UserError
from harness.ingest.image_sources import (
    ImageSource,
    center_crop,
    center_crop_labels,
    check_frames,
    check_same_size,
    read_clip,
    read_image,
    segment_tokens,
)

# Each option's range: what one machine holds while a batch or a shard is made (a 2,048 px
# side is 4 M pixels an image; a shard of 65,536 samples of 1,024 tokens, 128 MB as int16).
LIMITS = {
    "image_size": (1, 2048),
    "shard_size": (1, 65_536),
    "batch_size": (1, 4096),
    "workers": (1, 256),
    "frames": (0, 1024),
    "reference": (0, 1_000_000),
}


@dataclass(frozen=True)
class TokenizeOptions:
    split: str = "train"
    image_size: int = 256
    shard_size: int = 4096
    batch_size: int = 32
    flip: bool = False
    channels: int = 3  # 3: RGB, 1: grey (the pixel tokenizer)
    device: str = "cpu"
    workers: int = 4  # image-decoding threads
    reference: int = 0  # real images (first items, unflipped) kept for FID
    frames: int = 0  # > 0: clips of this many frames (a clip-folders source); 0: images
    max_shards: int | None = None  # stop after this many new shards (the rest on a later run)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise UserError(f"--split: unknown {self.split!r}; expected one of {SPLITS}")
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if not low <= value <= high:
                what = {"frames": " (0: images)", "reference": " (0: no reference images)"}.get(name, "")
                flag = f"--{name.replace('_', '-')}"
                raise UserError(f"{flag}: {value!r}; expected an integer in [{low}, {high:,}]{what}")
        try:
            torch.device(self.device)
        except RuntimeError:
            raise UserError(f"--device: {self.device!r}; expected cpu, cuda or cuda:<index>") from None
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device: {self.device!r}, but torch sees no CUDA device here")
        if self.channels not in (1, 3):
            raise ValueError(f"channels: {self.channels!r}; expected 1 or 3")

    def identity(self) -> dict[str, Any]:
        """What changes the shards' bytes (not batch size, device, workers or where a run stops);
        ``frames`` only when set, so that image jobs keep the identity they had before clips."""
        keys = ("split", "image_size", "shard_size", "flip", "channels", "reference") + (
            ("frames",) if self.frames else ()
        )
        return {k: v for k, v in asdict(self).items() if k in keys}


def _real(item, options: TokenizeOptions) -> np.ndarray:
    """An item's crop (S, S, C), or a clip's first T frames' crops (T, S, S, C); uint8."""
    S, C, mode = options.image_size, options.channels, "RGB" if options.channels == 3 else "L"
    if options.frames:
        return read_clip(item, options.frames, S, mode).reshape(options.frames, S, S, C)
    return center_crop(read_image(item.image, mode), S).reshape(S, S, C)


def _load(source: ImageSource, sample: int, options: TokenizeOptions, grid: tuple[int, ...]) -> tuple:
    """(image (S, S, C) or clip (T, S, S, C) uint8, segments (L,) or None) of one sample."""
    item, flipped = (
        (source.items[sample // 2], sample % 2 == 1) if options.flip else (source.items[sample], False)
    )
    image = _real(item, options)
    segments = None
    if item.segments is not None:
        label_map = read_image(item.segments, "labels")
        check_same_size(item.image, item.segments, label_map.size)  # else cropped elsewhere: misaligned
        labels = center_crop_labels(label_map, options.image_size)
        segments = segment_tokens(labels[:, ::-1] if flipped else labels, grid)
    return (np.ascontiguousarray(np.flip(image, axis=-2)) if flipped else image), segments  # W is -2


def _item(source: ImageSource, sample: int, options: TokenizeOptions):
    return source.items[sample // 2] if options.flip else source.items[sample]


def encode_shard(source, tokenizer, options, start: int, stop: int, pool) -> dict[str, Any]:
    """Tokens (n, L) and the labels / segments / captions of samples [start, stop)."""
    grid = tuple(tokenizer.grid)
    tokens, segments = [], []
    for lo in range(start, stop, options.batch_size):
        loaded = list(
            pool.map(lambda s: _load(source, s, options, grid), range(lo, min(stop, lo + options.batch_size)))
        )
        images = torch.from_numpy(np.stack([image for image, _ in loaded]))  # (B, [T,] S, S, C) uint8
        images = images.flatten(0, images.dim() - 4)  # (B T, S, S, C): clips frame by frame
        x = images.permute(0, 3, 1, 2).float().div(255).to(options.device)  # (B T, C, S, S) in [0, 1]
        codes = tokenizer.encode(x).cpu().numpy()  # (B T, h w)
        if codes.shape[1:] != (int(np.prod(grid)),):
            raise ShardError(f"the tokenizer made {codes.shape[1:]} tokens per image; its grid is {grid}")
        tokens.append(codes.reshape(len(loaded), -1))  # (B, [T] h w)
        segments += [seg for _, seg in loaded]
    items = [_item(source, s, options) for s in range(start, stop)]
    return {
        "tokens": np.concatenate(tokens),
        "labels": np.array([i.label for i in items], dtype=np.int64) if items[0].label is not None else None,
        "segments": np.stack(segments) if segments[0] is not None else None,
        "captions": [list(i.captions) for i in items] if items[0].captions is not None else None,
    }


def _save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def write_shard(out: Path, stem: str, arrays: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """A shard's files, each written atomically, and its manifest entry with their checksums."""
    entry: dict[str, Any] = {"tokens": f"{stem}.npy", "count": len(arrays["tokens"]), "files": {}}
    _save_npy(out / entry["tokens"], arrays["tokens"].astype(token_dtype(vocab_size)))
    entry["sha256"] = sha256_file(out / entry["tokens"])
    for key, suffix in (
        ("labels", "-labels.npy"),
        ("segments", "-segments.npy"),
        ("captions", "-captions.json"),
    ):
        if arrays[key] is None:
            continue
        entry[key] = f"{stem}{suffix}"
        if key == "captions":
            text = json.dumps(arrays[key]).encode()
            atomic_write(out / entry[key], lambda f, text=text: f.write(text))
        else:
            dtype = np.int64 if key == "labels" else token_dtype(int(arrays[key].max()) + 1)
            _save_npy(out / entry[key], arrays[key].astype(dtype))
        entry["files"][entry[key]] = sha256_file(out / entry[key])
    return entry


def _verified(out: Path, entries: list[dict]) -> list[dict]:
    """The longest prefix of ``entries`` whose files are all present and match their checksums."""
    for k, entry in enumerate(entries):
        try:
            verify_entry(out, entry)
        except ShardError:
            return entries[:k]
    return entries


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2).encode()))


def _header(source: ImageSource, tokenizer, spec: dict, frames: int) -> dict[str, Any]:
    grid = [frames, *tokenizer.grid] if frames else list(tokenizer.grid)  # clips: [T, h, w]
    return {"format": FORMAT, "grid": grid, "vocab_size": int(tokenizer.vocab_size),
            "num_classes": len(source.class_names), "class_names": list(source.class_names),
            "tokenizer": spec}  # fmt: skip


def _check_manifest(out: Path, header: dict, split: str, job: dict) -> dict | None:
    """The existing manifest if it agrees with this job's header; None if there is none."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    for key, value in header.items():
        if manifest.get(key) != value:
            raise ShardError(
                f"{path}: {key} is {manifest.get(key)!r}, this job makes {value!r} (use another folder)"
            )
    done = (manifest.get("sources") or {}).get(split)
    if done is not None and done != job:
        raise ShardError(f"{path}: split {split!r} was tokenized by another job {done}; use another folder")
    return manifest


def _write_reference(out: Path, source: ImageSource, options: TokenizeOptions, pool) -> str:
    count = min(options.reference, len(source.items))
    name, S, C = f"reference-{options.split}.npy", options.image_size, options.channels
    shape = (count, *([options.frames] if options.frames else []), S, S, C)  # (N, [T,] S, S, C)

    def write(f) -> None:
        images = pool.map(lambda i: _real(source.items[i], options), range(count))
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
        for image in images:  # streamed: 50,000 images at 256 x 256 are 9.8 GB
            f.write(np.ascontiguousarray(image, dtype=np.uint8).tobytes())

    atomic_write(out / name, write)
    return name


@dataclass(frozen=True)
class TokenizeReport:
    complete: bool
    shards_done: int
    shards_total: int
    samples: int
    out: Path


def _resume_state(out: Path, job: dict, split: str) -> tuple[Path, list[dict]]:
    """The progress file and the verified prefix of the shards it lists (a fresh start: none)."""
    path = out / f".tokenize-{split}.json"
    state = json.loads(path.read_text()) if path.is_file() else {"job": job, "shards": []}
    if state["job"] != job:
        changed = sorted(k for k in job if state["job"].get(k) != job[k])
        raise ShardError(
            f"{path}: an unfinished run with other {changed}; rerun it as it was, or delete the file"
        )
    return path, _verified(out, state["shards"])


def tokenize(source: ImageSource, tokenizer: Any, spec: dict, out: str | Path, options: TokenizeOptions,
             progress: bool = True) -> TokenizeReport:  # fmt: skip
    """Tokenize ``source`` into the shard folder ``out`` (resuming a run of the same job there).

    ``tokenizer``: any ``harness.data.types.Tokenizer`` (images (B, C, S, S) in [0, 1] -> tokens
    (B, L)); ``spec``: its description for the manifest
    (``harness.data.tokenizers.pretrained_vq.build_tokenizer``).
    """
    from tqdm import tqdm

    out = Path(out)
    check_frames(source, options.frames)  # before anything is written
    out.mkdir(parents=True, exist_ok=True)
    header = _header(source, tokenizer, spec, options.frames)
    job = {**options.identity(), "source": source.describe()}
    manifest = _check_manifest(out, header, options.split, job)
    n, S = len(source.items) * (2 if options.flip else 1), options.shard_size
    total = -(-n // S)
    if manifest is not None and options.split in manifest.get("sources", {}):
        return TokenizeReport(True, total, total, n, out)  # already complete: nothing to do
    progress_path, entries = _resume_state(out, job, options.split)
    end = total if options.max_shards is None else min(total, len(entries) + options.max_shards)
    if getattr(tokenizer, "to", None) is not None:
        tokenizer.to(options.device)
    done = sum(e["count"] for e in entries)
    with (
        ThreadPoolExecutor(options.workers) as pool,
        tqdm(total=n, initial=done, unit="img", disable=not progress) as bar,
    ):
        for k in range(len(entries), end):
            arrays = encode_shard(source, tokenizer, options, k * S, min(n, (k + 1) * S), pool)
            entries.append(write_shard(out, f"{options.split}-{k:05d}", arrays, header["vocab_size"]))
            _write_json(progress_path, {"job": job, "shards": entries})
            bar.update(len(arrays["tokens"]))
        if end < total:
            return TokenizeReport(False, end, total, n, out)
        manifest = manifest or {**header, "splits": {}}
        if options.reference:
            manifest.setdefault("reference", {})[options.split] = _write_reference(out, source, options, pool)
    manifest["splits"][options.split] = entries
    manifest.setdefault("counts", {})[options.split] = n
    manifest.setdefault("sources", {})[options.split] = job
    _write_json(out / MANIFEST, manifest)
    progress_path.unlink()
    return TokenizeReport(True, total, total, n, out)
