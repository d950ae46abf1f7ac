"""``run_study.py tokenize SOURCE OUT``: an image folder into a shard folder of tokens.

The parser needs no heavy imports (``run_study.py`` builds it for every command); the work is
``harness.ingest.tokenize_images.tokenize``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from harness.errors import UserError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("tokenize", help="tokenize an image folder into a shard folder (resumable)")
    p.add_argument("source", type=Path, help="class folders, a COCO root, images/ + labels/, or clip folders")
    p.add_argument("out", type=Path, help="the shard folder (a study's data.options.path)")
    p.add_argument(
        "--source-kind",
        default=None,
        help="class-folders | coco | label-maps | clip-folders (default: detected)",
    )
    p.add_argument(
        "--captions", type=Path, default=None, help="COCO: the captions JSON (default: the one there)"
    )
    p.add_argument("--split", default="train", help="train | heldout (each split its own run, one folder)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--tokenizer", type=Path, help="a diffusers VQModel folder, or an original .ckpt/.pt/.safetensors"
    )
    which.add_argument(
        "--pixel-levels", type=int, help="tests: the project's grey-level tokenizer with this many levels"
    )
    p.add_argument("--tokenizer-preset", default=None, help="architecture of an original checkpoint")
    p.add_argument("--tokenizer-config", type=Path, default=None, help="...or its YAML/JSON config")
    p.add_argument("--image-size", type=int, default=256, help="ADM centre crop to this side")
    p.add_argument("--shard-size", type=int, default=4096, help="samples per shard")
    p.add_argument("--batch-size", type=int, default=32, help="images per tokenizer call")
    p.add_argument("--workers", type=int, default=4, help="image-decoding threads")
    p.add_argument("--device", default="cpu", help="the tokenizer's device (cpu, cuda, cuda:1)")
    p.add_argument("--flip", action="store_true", help="add a horizontally flipped copy of every image")
    p.add_argument("--reference", type=int, default=0, help="keep this many real crops for FID")
    p.add_argument("--frames", type=int, default=0, help="clip folders: the first T frames of each clip")
    p.add_argument("--max-shards", type=int, default=None, help="stop after this many new shards")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def tokenizer_from_args(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """(tokenizer, its manifest description) from --tokenizer / --pixel-levels."""
    from harness.data.tokenizers.pretrained_vq import (
        PretrainedWeightsError,
        build_tokenizer,
        resolve_vq_config,
    )

    size = args.image_size
    if args.pixel_levels is not None:
        if not 2 <= args.pixel_levels <= 256:  # grey levels of 8-bit images
            raise UserError(f"--pixel-levels: {args.pixel_levels}; expected 2 to 256 (levels of 8-bit grey)")
        spec: dict[str, Any] = {"kind": "pixel", "levels": args.pixel_levels, "image_size": size}
    else:
        path = args.tokenizer.resolve()
        if not path.exists():
            raise PretrainedWeightsError(f"--tokenizer {str(args.tokenizer)!r}: no such file or folder")
        if path.is_dir():
            if args.tokenizer_preset or args.tokenizer_config:
                raise UserError(f"--tokenizer {str(path)!r} is a diffusers folder: it carries its own config")
            spec = {"kind": "diffusers-vq", "path": str(path), "image_size": size}
        else:
            arch = resolve_vq_config(args.tokenizer_preset, args.tokenizer_config)
            spec = {"kind": "original-vq", "path": str(path), "image_size": size, "arch": arch.to_dict(),
                    "preset": args.tokenizer_preset}  # fmt: skip
    tokenizer = build_tokenizer(spec)
    grid = "x".join(map(str, tokenizer.grid))
    where = f" {spec['path']}" if "path" in spec else ""
    spec["description"] = f"{spec['kind']}{where}: {tokenizer.vocab_size} codes, {grid} tokens at {size} px"
    return tokenizer, spec


def check_tokens(grid: tuple[int, ...], frames: int | None, image_size: int) -> None:
    """A sample's tokens within what a study reads (``data.options.grid``), refused before any is made."""
    from harness.data.sources.shard_files import MAX_TOKENS

    tokens = math.prod(grid) * (frames or 1)
    if tokens > MAX_TOKENS:
        raise UserError(
            f"--image-size: {image_size}; {tokens:,} tokens a sample ({'x'.join(map(str, grid))}"
            f"{f' x {frames} frames' if frames else ''}), more than a study reads ({MAX_TOKENS:,})"
        )


def main(args: argparse.Namespace) -> int:
    from harness.ingest.image_sources import open_source
    from harness.ingest.tokenize_images import TokenizeOptions, tokenize

    options = TokenizeOptions(
        split=args.split, image_size=args.image_size, shard_size=args.shard_size, batch_size=args.batch_size,
        flip=args.flip, channels=1 if args.pixel_levels is not None else 3, device=args.device,
        workers=args.workers, reference=args.reference, max_shards=args.max_shards, frames=args.frames,
    )  # fmt: skip
    if args.max_shards is not None and args.max_shards < 1:
        raise UserError(f"--max-shards: {args.max_shards}; expected >= 1")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"OUT {str(args.out)!r} is a file; expected a shard folder (new or to resume)")
    source = open_source(args.source, args.source_kind, args.captions)
    tokenizer, spec = tokenizer_from_args(args)
    check_tokens(tokenizer.grid, args.frames, args.image_size)
    what = f"clips of {args.frames} frames" if args.frames else "images"
    print(f"{source.kind} {source.root}: {len(source.items)} {what}; {spec['description']}", flush=True)
    report = tokenize(source, tokenizer, spec, args.out, options, progress=not args.no_progress)
    done = f"split {args.split!r} complete" if report.complete else "stopped; run again to continue"
    print(
        f"{report.out}: {report.shards_done}/{report.shards_total} shards ({report.samples} samples), {done}"
    )
    return 0
