#!/usr/bin/env python
"""The animals VQ tokenizer: reconstruction, codebook use, context entropy and speed.

Trains the default tokenizer on the animals train split (or loads it from the cache) and prints
- held-out reconstruction MSE on [0, 1], codes used and perplexity exp(H(code frequencies));
- context entropy in bits per token: H(X_i) and H(X_i | left), H(X_i | top), H(X_i | left, top)
  as held-out cross-entropies of smoothed train counts (and plug-in on train, biased low); the
  drop from H(X_i) ("gain") is what a masked model can gain from those neighbours;
- training seconds (as recorded when it was trained), encode / decode images/s now.
With --compare, the same for each candidate config (each trained once and cached), as a table.
Timings are noisy on a shared machine: the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from harness.animals import animal_split, animal_tokenizer
from harness.vq import VQTokenizer, context_entropy

# VQConfig overrides compared against the default (all share its steps and batch size).
CANDIDATES: dict[str, dict] = {
    "7x7 K=32": {"grid": 7, "codebook_size": 32},
    "7x7 K=64": {"grid": 7, "codebook_size": 64},
    "7x7 K=128": {"grid": 7, "codebook_size": 128},
    "14x14 K=64": {"grid": 14, "codebook_size": 64},
}
COLUMNS = (
    ("heldout_mse", "mse", "{:.4f}"),
    ("heldout_codes_used", "used", "{:d}"),
    ("heldout_perplexity", "ppl", "{:.1f}"),
    ("heldout_marginal_bits", "H(x)", "{:.2f}"),
    ("heldout_left_bits", "H(x|l)", "{:.2f}"),
    ("heldout_top_bits", "H(x|t)", "{:.2f}"),
    ("heldout_conditional_bits", "H(x|l,t)", "{:.2f}"),
    ("gain", "gain", "{:.0%}"),
    ("conditional_bits", "plugin", "{:.2f}"),
    ("mode_fraction", "mode", "{:.2f}"),
    ("train_seconds", "train s", "{:.0f}"),
)


def images_per_second(fn, n: int, repeats: int = 3) -> float:
    """n / the minimum wall time of ``repeats`` calls (after one warm-up call)."""
    fn()
    best = min(_timed(fn) for _ in range(repeats))
    return n / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def figures(tokenizer: VQTokenizer) -> dict[str, float]:
    """The stored report plus context entropy recomputed from the tokens of both splits."""
    grid = (-1, *tokenizer.grid)
    train = tokenizer.encode(animal_split("train")[0]).reshape(grid)  # (N, g, g)
    heldout = tokenizer.encode(animal_split("heldout")[0]).reshape(grid)
    out = {**tokenizer.metadata, **context_entropy(train, heldout, tokenizer.vocab_size)}
    out["gain"] = 1 - out["heldout_conditional_bits"] / out["heldout_marginal_bits"]
    return out


def report(name: str, tokenizer: VQTokenizer) -> None:
    meta = figures(tokenizer)
    print(f"\n{name}: {tokenizer.config}")
    print(f"weights_sha256 {tokenizer.weights_sha256}")
    print(
        f"held-out MSE {meta['heldout_mse']:.5f}, "
        f"codes used {meta['heldout_codes_used']}/{tokenizer.vocab_size}, "
        f"perplexity {meta['heldout_perplexity']:.1f}; trained in {meta['train_seconds']:.0f} s "
        f"on {meta['threads']} threads"
    )
    print(
        "bits/token, held-out cross-entropy of smoothed train counts: "
        f"H(x_i) {meta['heldout_marginal_bits']:.3f}, H(x_i | left) {meta['heldout_left_bits']:.3f}, "
        f"H(x_i | top) {meta['heldout_top_bits']:.3f}, H(x_i | left, top) "
        f"{meta['heldout_conditional_bits']:.3f} (gain {meta['gain']:.0%})"
    )
    print(
        f"bits/token, plug-in on train (biased low): H(x_i) {meta['marginal_bits']:.3f}, "
        f"H(x_i | left, top) {meta['conditional_bits']:.3f}; commonest code {meta['mode_fraction']:.0%}"
    )
    x, _ = animal_split("heldout")  # (1000, 1, 28, 28)
    tokens = tokenizer.encode(x)
    enc = images_per_second(lambda: tokenizer.encode(x), x.shape[0])
    dec = images_per_second(lambda: tokenizer.decode(tokens), x.shape[0])
    print(f"encode {enc:.0f} images/s, decode {dec:.0f} images/s ({torch.get_num_threads()} threads)")


def compare() -> None:
    print(f"\n{'candidate':<12}" + "".join(f"{label:>9}" for _, label, _ in COLUMNS))
    for name, overrides in CANDIDATES.items():
        meta = figures(animal_tokenizer(tokenizer=overrides))
        print(f"{name:<12}" + "".join(f"{fmt.format(meta[key]):>9}" for key, _, fmt in COLUMNS), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--compare", action="store_true", help="also train/load the candidate configs")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    report("default", animal_tokenizer())
    if args.compare:
        compare()
    print(f"\nload average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
