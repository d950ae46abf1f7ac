"""The tokenizer of a shard folder: the grid and vocabulary its manifest states, decoding (and
encoding) through the tokenizer the manifest names, built on first use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from harness.data.sources.shard_files import MANIFEST, ShardError


class ShardTokenizer:
    """Grid and vocabulary of pre-tokenized data; decodes through the tokenizer the manifest names
    (``harness.data.tokenizers.pretrained_vq.build_tokenizer``:
    ``{"kind": "diffusers-vq" | "original-vq" | "pixel",
    "path": ..., "image_size": ...}``, a relative path relative to the folder). Clips: shards on a
    (T, h, w) grid of a tokenizer with an (h, w) grid go through it frame by frame, as clips
    (N, C, T, H, W) in [0, 1] (the layout of ``PixelTokenizer`` with a 3-d grid)."""

    def __init__(self, options: Any, manifest: dict[str, Any]) -> None:
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
