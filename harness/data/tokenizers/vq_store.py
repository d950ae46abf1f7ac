"""Trained VQ tokenizers on disk, and the figures that describe one.

``cached_tokenizer`` trains a tokenizer once per (config, training images) and caches it under
``<cache>/tokenizers/vq-<key>.pt``, key = hash(format, config, sha256 of the training images);
the file carries its config, the weights, their sha256 and a report (held-out reconstruction
MSE, codes used, perplexity, context entropy) and is read back with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.cache import cache_dir, quarantine_cache_entry, sha256_tensors, stable_hash
from harness.data.tokenizers.vq import VQVAE, VQConfig, VQTokenizer, train_vqvae, training_threads
from models.checkpoint import atomic_save

CACHE_FORMAT = 1


class TokenizerCacheError(RuntimeError):
    """A cached tokenizer file that cannot be used; the message names the file."""


@torch.no_grad()
def reconstruction_report(tokenizer: VQTokenizer, images: Tensor) -> dict[str, float]:
    """mse = mean (x - decode(encode(x)))^2 over images (N, C, S, S) in [0, 1]; codes_used = #{k : c_k > 0};
    perplexity = exp(-sum_k p_k log p_k) with p_k the fraction of tokens equal to k."""
    tokens = tokenizer.encode(images)  # (N, L)
    mse = F.mse_loss(tokenizer.decode(tokens), images.float()).item()
    p = torch.bincount(tokens.flatten(), minlength=tokenizer.vocab_size).double() / tokens.numel()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {"mse": mse, "codes_used": int((p > 0).sum()), "perplexity": math.exp(entropy)}


def _entropy_bits(counts: Tensor) -> float:
    """Plug-in entropy -sum p log2 p of a count vector."""
    p = counts[counts > 0].double() / counts.sum()
    return float(-(p * p.log2()).sum())


# Neighbour sets a token is conditioned on, as (row, column) offsets; "conditional" is left + top.
NEIGHBOURS: dict[str, tuple[tuple[int, int], ...]] = {
    "left": ((0, -1),),
    "top": ((-1, 0),),
    "conditional": ((0, -1), (-1, 0)),
}


def context_entropy(
    train: Tensor, heldout: Tensor, vocab_size: int, concentration: float = 4.0
) -> dict[str, float]:
    """How much a token's neighbours say about it, in bits per token.

    train, heldout: tokens (N, H, W). Averaged over the positions i with a left and a top
    neighbour (r, c >= 1), for each context u of NEIGHBOURS (left, top, left + top):
    ``marginal`` / ``<u>``: plug-in H(X_i) and H(X_i | u) on train (biased low where contexts
    are sparse: left + top has K^2 of them); ``heldout_marginal`` / ``heldout_<u>``: held-out
    cross-entropy of p_i(x) = (n_i(x) + 1/K) / (N + 1) and of the Dirichlet-smoothed
    p_i(x | u) = (n_i(u, x) + a p_i(x)) / (n_i(u) + a), a = concentration (an upper bound on
    the true conditional entropy). mode_fraction: share of train tokens equal to the commonest code.
    """
    K, (N, H, W) = vocab_size, train.shape
    sums: dict[str, float] = {}

    def add(key: str, value: float) -> None:
        sums[key] = sums.get(key, 0.0) + value

    for r in range(1, H):
        for c in range(1, W):
            x, hx = train[:, r, c], heldout[:, r, c]  # (N,), (N_heldout,)
            n_x = torch.bincount(x, minlength=K)
            p_x = (n_x.double() + 1 / K) / (N + 1)  # (K,)
            add("marginal_bits", _entropy_bits(n_x))
            add("heldout_marginal_bits", -float(p_x[hx].log2().mean()))
            for name, offsets in NEIGHBOURS.items():
                ctx, hctx = torch.zeros_like(x), torch.zeros_like(hx)
                for dr, dc in offsets:
                    ctx, hctx = ctx * K + train[:, r + dr, c + dc], hctx * K + heldout[:, r + dr, c + dc]
                num_ctx = K ** len(offsets)
                n_ctx = torch.bincount(ctx, minlength=num_ctx)
                n_joint = torch.bincount(ctx * K + x, minlength=num_ctx * K)
                add(f"{name}_bits", _entropy_bits(n_joint) - _entropy_bits(n_ctx))
                p = (n_joint[hctx * K + hx] + concentration * p_x[hx]) / (n_ctx[hctx] + concentration)
                add(f"heldout_{name}_bits", -float(p.log2().mean()))
    out = {key: total / ((H - 1) * (W - 1)) for key, total in sums.items()}
    out["mode_fraction"] = float(torch.bincount(train.flatten(), minlength=K).max()) / train.numel()
    return out


def tokenizer_path(config: VQConfig, data_sha256: str, cache: str | os.PathLike | None = None) -> Path:
    """<cache>/tokenizers/vq-<key>.pt, key = hash of (format, config, training-data sha256)."""
    key = stable_hash({"format": CACHE_FORMAT, "config": asdict(config), "data": data_sha256})
    return cache_dir(cache) / "tokenizers" / f"vq-{key}.pt"


def load_tokenizer(path: str | os.PathLike, expected: VQConfig | None = None) -> VQTokenizer:
    """Rebuild a VQTokenizer from its checkpoint alone; unreadable or inconsistent files raise
    TokenizerCacheError naming the file."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        config = VQConfig.from_dict(state["config"])
        model = VQVAE(config)
        model.load_state_dict(state["state_dict"])
        metadata = state["meta"]
    except Exception as err:  # truncated zip, foreign pickle, missing keys, shape mismatch
        raise TokenizerCacheError(f"cached tokenizer {str(path)!r} is corrupt or unreadable ({err})") from err
    tokenizer = VQTokenizer(model, metadata)
    if expected is not None and config != expected:
        raise TokenizerCacheError(f"cached tokenizer {str(path)!r} has config {config}, expected {expected}")
    if tokenizer.weights_sha256 != metadata.get("weights_sha256"):
        raise TokenizerCacheError(f"cached tokenizer {str(path)!r}: weights do not match their sha256")
    return tokenizer


def cached_tokenizer(
    config: VQConfig,
    train_images: Tensor,
    heldout_images: Tensor,
    cache: str | os.PathLike | None = None,
    num_threads: int | None = None,
) -> VQTokenizer:
    """The tokenizer of ``config`` trained on train_images (N, C, S, S), from the cache or trained
    now and cached with its config, weights sha256 and report (held-out reconstruction, train
    seconds, context entropy of the train tokens scored on the held-out ones). A cached file that
    cannot be used is quarantined under ``<cache>/quarantine/tokenizers/`` and trained again."""
    data_sha256 = sha256_tensors({"images": train_images.float()})
    path = tokenizer_path(config, data_sha256, cache)
    if path.exists():
        try:
            return load_tokenizer(path, expected=config)
        except TokenizerCacheError as err:
            quarantine_cache_entry(path, cache_dir(cache), str(err))
    with training_threads(num_threads) as threads:
        start = time.perf_counter()
        model = train_vqvae(train_images, config)
        seconds = time.perf_counter() - start
        tokenizer = VQTokenizer(model, {})
        report = reconstruction_report(tokenizer, heldout_images)
        shape = (-1, config.grid, config.grid)
        train_tokens = tokenizer.encode(train_images).reshape(shape)
        heldout_tokens = tokenizer.encode(heldout_images).reshape(shape)
    meta = {
        "weights_sha256": tokenizer.weights_sha256,
        "data_sha256": data_sha256,
        "train_seconds": seconds,
        "threads": threads,
        "num_train": int(train_images.shape[0]),
        "num_heldout": int(heldout_images.shape[0]),
        **{f"heldout_{k}": v for k, v in report.items()},
        **context_entropy(train_tokens, heldout_tokens, config.codebook_size),
    }
    atomic_save(
        {"format": CACHE_FORMAT, "config": asdict(config), "state_dict": model.state_dict(), "meta": meta},
        path,
    )
    return VQTokenizer(model, meta)
