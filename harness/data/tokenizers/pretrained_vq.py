"""Pretrained VQ tokenizers from local files, through diffusers' ``VQModel``.

Two ways in, nothing downloaded:

- diffusers' format: a folder with ``config.json`` and ``diffusion_pytorch_model.safetensors``
  (or ``.bin``), read with ``local_files_only`` (:func:`load_diffusers_vq`);
- the original checkpoints (:func:`load_original_vq`): the CompVis latent-diffusion VQ-f8
  (16,384 codes, 32 x 32 tokens at 256 x 256) and taming-transformers VQGANs, a ``.ckpt`` /
  ``.pt`` (``torch.load(weights_only=True)``, a bare state dict or ``{"state_dict": ...}``) or a
  ``.safetensors``, with the architecture from a preset or a config file
  (``harness.data.tokenizers.original_vq``); ``loss.*`` (discriminator, LPIPS) is dropped, a
  ``first_stage_model.`` prefix (a whole LDM) is stripped, and every other key must map.

:func:`build_tokenizer` makes a tokenizer from the description a shard manifest stores.
The tokenizer maps images in [0, 1] to the model's [-1, 1], takes the codebook indices of the
quantised latents as tokens (row-major), and decodes tokens through the codebook and the decoder
without re-quantising.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from harness.data.tokenizers.original_vq import ldm_name
from harness.data.tokenizers.pixel import PixelTokenizer
from harness.errors import UserError, did_you_mean


class PretrainedWeightsError(UserError, FileNotFoundError):
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
        self.device = next(model.parameters()).device

    def to(self, device: str | torch.device) -> DiffusersVQTokenizer:
        """Run the model on ``device``; inputs may live anywhere, outputs come back on the CPU."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            x = images[i : i + self.batch_size].to(self.device).float() * 2 - 1  # (b, C, S, S) in [-1, 1]
            latents = self.model.encode(x).latents  # (b, D, g, g)
            _, _, (_, _, indices) = self.model.quantize(latents)
            out.append(indices.reshape(x.shape[0], -1).cpu())
        return torch.cat(out).long() if out else torch.zeros(0, math.prod(self.grid), dtype=torch.long)

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        """tokens (N, L) -> images (N, C, S, S) in [0, 1]; a stray [MASK] id is clamped into range."""
        tokens = tokens.long().clamp(0, self.vocab_size - 1)
        out = []
        for i in range(0, tokens.shape[0], self.batch_size):
            chunk = tokens[i : i + self.batch_size].to(self.device)
            shape = (chunk.shape[0], *self.grid, self.embed_dim)
            z = self.model.quantize.get_codebook_entry(chunk.reshape(-1), shape)  # (b, D, g, g)
            x = self.model.decode(z, force_not_quantize=True).sample
            out.append(((x + 1) / 2).clamp(0, 1).cpu())
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


def _show(keys: list[str], limit: int = 8) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{keys[:limit]}{more}"


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` or a ``.ckpt`` / ``.pt`` / ``.pth`` (never unpickles code)."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"--tokenizer {str(path)!r}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle refuses anything but tensors and plain values
        raise PretrainedWeightsError(
            f"{path}: not loadable with torch.load(weights_only=True) ({type(err).__name__}: "
            f"{str(err)[:200]}); save its state_dict alone (or as .safetensors) where you trust the file"
        ) from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path}: expected a state dict of tensors (or {{'state_dict': ...}})")
    return state


def convert_original_state(state: dict[str, Tensor], target: dict[str, Tensor], num_levels: int,
                           file: str | Path) -> dict[str, Tensor]:  # fmt: skip
    """Original-format tensors renamed to diffusers' keys (``target``: a VQModel's state dict).

    Raises PretrainedWeightsError naming ``file`` and the keys that are missing, unexpected or of
    the wrong shape; the 1 x 1 attention convolutions (C, C, 1, 1) become linear weights (C, C).
    """
    if any(k.startswith("first_stage_model.") for k in state):
        state = {k.removeprefix("first_stage_model."): v for k, v in state.items()
                 if k.startswith("first_stage_model.")}  # fmt: skip
    state = {k: v for k, v in state.items() if not k.startswith("loss.")}
    names = {key: ldm_name(key, num_levels) for key in target}
    missing = sorted(o for o in names.values() if o not in state)
    unexpected = sorted(set(state) - set(names.values()))
    if missing or unexpected:
        raise PretrainedWeightsError(
            f"{file}: does not match the architecture: missing keys {_show(missing)}, unexpected keys "
            f"{_show(unexpected)} (check --tokenizer-preset / --tokenizer-config)"
        )
    out, wrong = {}, []
    for key, original in names.items():
        value, shape = state[original], target[key].shape
        if (
            value.shape != shape
            and value.dim() == 4
            and value.shape[2:] == (1, 1)
            and value.shape[:2] == shape
        ):
            value = value[:, :, 0, 0]  # attention: 1 x 1 conv -> linear
        if value.shape != shape:
            wrong.append(f"{original} {tuple(value.shape)} (expected {tuple(shape)})")
        out[key] = value
    if wrong:
        raise PretrainedWeightsError(f"{file}: shape mismatch for {_show(wrong)}")
    return out


def load_original_vq(path: str | Path, image_size: int, *, preset: str | None = None,
                     config: str | Path | dict | None = None) -> DiffusersVQTokenizer:  # fmt: skip
    """An LDM / taming VQ checkpoint as a tokenizer; the architecture from exactly one of
    ``preset`` (``harness.data.tokenizers.original_vq.VQ_PRESETS``) or ``config`` (a YAML / JSON file
    or its dict)."""
    from diffusers import VQModel

    arch = resolve_vq_config(preset, config)
    state = read_state_dict(path)
    model = VQModel(**arch.diffusers_kwargs())
    converted = convert_original_state(state, model.state_dict(), len(arch.ch_mult), path)
    model.load_state_dict(converted, strict=True)
    return DiffusersVQTokenizer(model, image_size)


def resolve_vq_config(preset: str | None, config: str | Path | dict | None) -> Any:
    from harness.data.tokenizers.original_vq import VQ_PRESETS, OriginalVQConfig, read_vq_config

    if (preset is None) == (config is None):
        raise UserError(
            "an original-format checkpoint needs its architecture: give exactly one of --tokenizer-preset"
            f" {VQ_PRESETS.names()} or --tokenizer-config FILE"
        )
    if preset is not None:
        if preset not in VQ_PRESETS:
            known = VQ_PRESETS.names()
            raise UserError(
                f"--tokenizer-preset: unknown tokenizer preset {preset!r}; expected one of {known}"
                f"{did_you_mean(preset, known)}"
            )
        return VQ_PRESETS[preset]()
    return OriginalVQConfig.from_dict(config) if isinstance(config, dict) else read_vq_config(config)


TOKENIZER_KINDS = ("diffusers-vq", "original-vq", "pixel")


def build_tokenizer(spec: dict[str, Any], root: str | Path = ".") -> Any:
    """The tokenizer a shard manifest names; a relative ``path`` is relative to ``root``.

    ``{"kind": "diffusers-vq", "path", "image_size"}``, ``{"kind": "original-vq", "path",
    "image_size", "arch": OriginalVQConfig fields}``, or ``{"kind": "pixel", "levels",
    "image_size"}`` (the project's grey-level tokenizer: the tests' stand-in).
    """
    kind = spec.get("kind")
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer kind {kind!r}: expected one of {TOKENIZER_KINDS}")
    size = int(spec["image_size"])
    if kind == "pixel":
        return PixelTokenizer(levels=int(spec["levels"]), grid=(size, size))
    path = Path(root) / spec["path"]
    if kind == "diffusers-vq":
        return load_diffusers_vq(path, size)
    return load_original_vq(path, size, config=dict(spec["arch"]))
