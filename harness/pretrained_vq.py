"""Pretrained VQ tokenizers from local files, through diffusers' ``VQModel``.

The LDM / Stable Diffusion VQ-f8 (16,384 codes, 32 x 32 tokens at 256 x 256) and VQGANs converted
to diffusers' format load from a folder with ``config.json`` and the weights
(``diffusion_pytorch_model.safetensors`` or ``.bin``); nothing is downloaded
(``local_files_only``). The tokenizer maps images in [0, 1] to the model's [-1, 1], takes the
codebook indices of the quantised latents as tokens (row-major), and decodes tokens through the
codebook and the decoder without re-quantising.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


class PretrainedWeightsError(FileNotFoundError):
    """A pretrained tokenizer's folder is missing or incomplete; names the path and what it needs."""


class DiffusersVQTokenizer:
    """The Tokenizer protocol over a diffusers VQModel: images (N, C, S, S) in [0, 1] <-> tokens (N, g*g)."""

    def __init__(self, model: Any, image_size: int, batch_size: int = 16) -> None:
        self.model = model.eval()
        config = model.config
        self.vocab_size = int(config.num_vq_embeddings)
        self.embed_dim = int(config.vq_embed_dim or config.latent_channels)
        side = image_size // 2 ** (len(config.block_out_channels) - 1)
        self.grid = (side, side)
        self.image_size, self.batch_size = image_size, batch_size

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            x = images[i : i + self.batch_size].float() * 2 - 1
            latents = self.model.encode(x).latents  # (b, D, g, g)
            _, _, (_, _, indices) = self.model.quantize(latents)
            out.append(indices.reshape(x.shape[0], -1))
        return torch.cat(out).long() if out else torch.zeros(0, math.prod(self.grid), dtype=torch.long)

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        """tokens (N, L) -> images (N, C, S, S) in [0, 1]; a stray [MASK] id is clamped into range."""
        tokens = tokens.long().clamp(0, self.vocab_size - 1)
        out = []
        for i in range(0, tokens.shape[0], self.batch_size):
            chunk = tokens[i : i + self.batch_size]
            shape = (chunk.shape[0], *self.grid, self.embed_dim)
            z = self.model.quantize.get_codebook_entry(chunk.reshape(-1), shape)  # (b, D, g, g)
            x = self.model.decode(z, force_not_quantize=True).sample
            out.append(((x + 1) / 2).clamp(0, 1))
        return torch.cat(out)


def load_diffusers_vq(path: str | Path, image_size: int) -> DiffusersVQTokenizer:
    """A VQModel saved in diffusers' format (``save_pretrained``) as a tokenizer."""
    from diffusers import VQModel

    path = Path(path)
    if not (path / "config.json").is_file():
        raise PretrainedWeightsError(
            f"no diffusers VQModel at {str(path)!r}: expected config.json and diffusion_pytorch_model"
            ".safetensors (or .bin) there, as written by VQModel.save_pretrained"
        )
    model = VQModel.from_pretrained(path, local_files_only=True)
    return DiffusersVQTokenizer(model, image_size)
