#!/usr/bin/env python
"""The animals VQ tokenizer: reconstruction, codebook use, context entropy and speed.

Trains the default tokenizer on the animals train split (or loads it from the cache) and prints
- held-out reconstruction MSE on [0, 1], codes used and perplexity exp(H(code frequencies));
- context entropy in bits per token: H(X_i) and H(X_i | left), H(X_i | top), H(X_i | left, top)
  as held-out cross-entropies of smoothed train counts (and plug-in on train, biased low); the
  drop from H(X_i) ("gain") is what a masked model can gain from those neighbours;
- training seconds (as recorded when it was trained), encode / decode images/s now.
With --compare, the same for each candidate config (each trained once and cached), as a table;
with --predictor also the held-out cross-entropy of a small MLP that predicts a token from its
position and neighbours (left + top, or all four), which does not suffer from sparse counts.
Timings are noisy on a shared machine: the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.data.sources.animals import animal_split, animal_tokenizer
from harness.data.tokenizers.vq import VQTokenizer
from harness.data.tokenizers.vq_store import context_entropy

# VQConfig overrides compared against the default (all share its steps and batch size).
CANDIDATES: dict[str, dict] = {
    "7x7 K=32": {"grid": 7, "codebook_size": 32},
    "7x7 K=64": {"grid": 7, "codebook_size": 64},
    "7x7 K=128": {"grid": 7, "codebook_size": 128},
    "14x14 K=64": {"grid": 14, "codebook_size": 64},
}
# Neighbour offsets (row, column) a small predictor sees besides the position.
PREDICTOR_CONTEXTS: dict[str, tuple[tuple[int, int], ...]] = {
    "position": (),
    "left+top": ((0, -1), (-1, 0)),
    "4-neighbours": ((0, -1), (-1, 0), (0, 1), (1, 0)),
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


class NeighbourMLP(nn.Module):
    """logits(x_i | position i, neighbours) = MLP(e_pos(i) + sum_j e_j(neighbour_j)); id K = off-grid."""

    def __init__(self, vocab_size: int, num_neighbours: int, seq_len: int, width: int = 256) -> None:
        super().__init__()
        self.neighbours = nn.ModuleList(nn.Embedding(vocab_size + 1, width) for _ in range(num_neighbours))
        self.position = nn.Embedding(seq_len, width)
        self.head = nn.Sequential(nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, vocab_size))

    def forward(self, context: Tensor, position: Tensor) -> Tensor:
        """context (M, n) long, position (M,) long -> logits (M, K)."""
        h = self.position(position)  # (M, width)
        for j, embed in enumerate(self.neighbours):
            h = h + embed(context[:, j])
        return self.head(h)


def neighbour_samples(tokens: Tensor, vocab_size: int, offsets) -> tuple[Tensor, Tensor, Tensor]:
    """tokens (N, g, g) -> (context (N g g, n), position (N g g,), target (N g g,))."""
    N, g, _ = tokens.shape
    padded = F.pad(tokens, (1, 1, 1, 1), value=vocab_size)  # (N, g + 2, g + 2)
    context = [padded[:, 1 + dr : 1 + dr + g, 1 + dc : 1 + dc + g].reshape(-1) for dr, dc in offsets]
    context = torch.stack(context, 1) if context else torch.zeros(N * g * g, 0, dtype=torch.long)
    return context, torch.arange(g * g).repeat(N), tokens.reshape(-1)


def predictive_entropy(train: Tensor, heldout: Tensor, vocab_size: int, offsets, epochs: int = 3) -> float:
    """Held-out cross-entropy in bits/token of a NeighbourMLP fit to the train tokens (N, g, g):
    an upper bound on H(x_i | position, neighbours) that, unlike counting, does not degrade with K^n."""
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = NeighbourMLP(vocab_size, len(offsets), train.shape[1] * train.shape[2])
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    context, position, target = neighbour_samples(train, vocab_size, offsets)
    for _ in range(epochs):
        for idx in torch.randperm(target.numel(), generator=generator).split(2048):
            loss = F.cross_entropy(model(context[idx], position[idx]), target[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    context, position, target = neighbour_samples(heldout, vocab_size, offsets)
    with torch.no_grad():
        nats = F.cross_entropy(model(context, position), target).item()
    return nats / math.log(2)


def figures(tokenizer: VQTokenizer, predictor: bool = False) -> dict[str, float]:
    """The stored report plus context entropy recomputed from the tokens of both splits."""
    grid = (-1, *tokenizer.grid)
    train = tokenizer.encode(animal_split("train")[0]).reshape(grid)  # (N, g, g)
    heldout = tokenizer.encode(animal_split("heldout")[0]).reshape(grid)
    out = {**tokenizer.metadata, **context_entropy(train, heldout, tokenizer.vocab_size)}
    out["gain"] = 1 - out["heldout_conditional_bits"] / out["heldout_marginal_bits"]
    out["seq_len"] = math.prod(tokenizer.grid)
    if predictor:
        for name, offsets in PREDICTOR_CONTEXTS.items():
            out[f"mlp {name}"] = predictive_entropy(train, heldout, tokenizer.vocab_size, offsets)
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


def compare(predictor: bool) -> None:
    print(f"\n{'candidate':<12}" + "".join(f"{label:>9}" for _, label, _ in COLUMNS))
    rows = {}
    for name, overrides in CANDIDATES.items():
        rows[name] = meta = figures(animal_tokenizer(tokenizer=overrides), predictor)
        print(f"{name:<12}" + "".join(f"{fmt.format(meta[key]):>9}" for key, _, fmt in COLUMNS), flush=True)
    if predictor:
        print("\nheld-out bits/token of a neighbour MLP given the position and:")
        print(
            f"{'candidate':<12}{'tokens':>8}"
            + "".join(f"{c:>14}" for c in PREDICTOR_CONTEXTS)
            + f"{'gain':>8}"
        )
        for name, meta in rows.items():
            base, full = meta["mlp position"], meta["mlp 4-neighbours"]
            cells = "".join(f"{meta[f'mlp {c}']:>14.3f}" for c in PREDICTOR_CONTEXTS)
            print(f"{name:<12}{meta['seq_len']:>8}{cells}{1 - full / base:>8.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--compare", action="store_true", help="also train/load the candidate configs")
    parser.add_argument(
        "--predictor", action="store_true", help="also fit a neighbour MLP per candidate (minutes)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    report("default", animal_tokenizer())
    if args.compare:
        compare(args.predictor)
    print(f"\nload average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
