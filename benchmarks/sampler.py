#!/usr/bin/env python
"""Sampler speed on CPU: samples/s per sampler and NFE, sampler overhead, batched vs two-pass CFG.

Prints, for the default digits model (tiny, 8 x 8 tokens) and a DiT-S model at 16 x 16 tokens
(random weights: speed does not depend on training):
- samples/s for each sampler at NFE 8, 16, 32;
- overhead = sampler wall time / (NFE x one bare forward of the same batch), measured in the
  same run (1.00 means the sampler costs nothing beyond the network);
- CFG: one batched forward of the doubled batch vs two separate forwards, per step.
"""

from __future__ import annotations

import argparse
import time

import torch

from models.backbone import DiscreteDiT, ModelConfig
from models.samplers import Denoiser, EulerSampler, MaskGITSampler


def best_of(fn, repeats: int) -> float:
    """Minimum wall time of ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_model(name: str, config: ModelConfig, batch: int, repeats: int) -> None:
    torch.manual_seed(0)
    net = DiscreteDiT(config).eval()
    x = torch.full((batch, config.seq_len), config.mask_id)
    t, y = torch.zeros(batch), torch.arange(batch) % config.num_classes
    with torch.no_grad():
        forward = best_of(lambda: net(x, t, y), repeats)
    print(
        f"\n{name}: {config.dims[0]} layers, width {config.dims[1]}, {config.seq_len} tokens, batch {batch}; "
        f"bare forward {forward * 1e3:.1f} ms"
    )
    print(f"{'sampler':<10}{'NFE':>5}{'samples/s':>12}{'overhead':>10}")
    for nfe in (8, 16, 32):
        for label, sampler in (
            ("euler", EulerSampler(num_steps=nfe)),
            ("maskgit", MaskGITSampler(num_steps=nfe)),
        ):

            def run(sampler=sampler):
                sampler.sample(
                    Denoiser(net),
                    batch_size=batch,
                    seq_len=config.seq_len,
                    mask_id=config.mask_id,
                    y=y,
                    generator=torch.Generator().manual_seed(0),
                )

            seconds = best_of(run, repeats)
            print(f"{label:<10}{nfe:>5}{batch / seconds:>12.1f}{seconds / (nfe * forward):>10.2f}")
    batched = Denoiser(net, cfg_scale=2.0, null_class=config.null_class, cfg_batched=True)
    separate = Denoiser(net, cfg_scale=2.0, null_class=config.null_class, cfg_batched=False)
    one = best_of(lambda: batched(x, t, y), repeats)
    two = best_of(lambda: separate(x, t, y), repeats)
    print(
        f"CFG step: batched {one * 1e3:.1f} ms vs two forwards {two * 1e3:.1f} ms "
        f"(batched / two = {one / two:.2f}; vs unguided forward {one / forward:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench_model(
        "digits default (tiny)", ModelConfig(vocab_size=17, grid=(8, 8), num_classes=10), 100, args.repeats
    )
    bench_model(
        "DiT-S", ModelConfig(vocab_size=1024, grid=(16, 16), num_classes=10, size="DiT-S"), 8, args.repeats
    )


if __name__ == "__main__":
    main()
