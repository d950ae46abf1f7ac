#!/usr/bin/env python
"""Sampler speed on CPU: what a sampler and CFG cost beyond the network's forwards.

Every figure is a median over ``--repeats`` (>= 5) rounds; each round times a sampler or a
guided step and the forwards it is compared with back to back (in a rotating order), so a busy
machine slows both alike, and a ratio is the median of the rounds' ratios.
Random weights: speed does not depend on training. Prints:

1. Headline, ``small`` model on 16 x 16 tokens, 1,024 codes, batch 64, NFE 4:
   - per sampler: sampler wall / (NFE x one bare forward of the same batch) (goal <= 1.05);
     beside it the sampler's own work per step, timed with a network that replays stored
     logits (no forward to share the machine's noise with), as 1 + own work / forward;
   - CFG, per sampler: the guided sampler's wall (CFG 2, the Denoiser's default mode, whichever
     it picks) / (NFE x the cheaper of one forward of the doubled 2B batch and two forwards of
     B) (goal <= 1.02), also with each mode forced; beside it the step's own work (guidance of
     the rows it reads, sampling) timed with replayed logits.
2. The digits default (tiny, 8 x 8 tokens, batch 100) and, with ``--dit-s``, DiT-S at 16 x 16
   (batch 8; minutes on two cores): samples/s and overhead = sampler wall / (NFE x one bare
   forward) for each sampler at NFE 8, 16, 32; one batched CFG forward vs two separate ones.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from models.backbone import DiscreteDiT, ModelConfig
from models.samplers import Denoiser, EulerSampler, MaskGITSampler, Sampler

MODES = {"default": None, "batched": True, "two-pass": False}  # cfg_batched of each CFG mode


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall times of each fn, ``repeats`` rounds in turn (after one warm-up round). Each round
    starts one further along (what ran just before can slow or speed a timing on a busy box)."""
    for fn in fns.values():
        fn()
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(seconds(fns[name]))
    return times


def median_ratio(top: list[float], bottom: list[float]) -> float:
    """Median over rounds of top / bottom (each round's pair measured back to back)."""
    return statistics.median(a / b for a, b in zip(top, bottom, strict=True))


class Replay(torch.nn.Module):
    """Returns logits computed once: a network that costs nothing, to time a sampler's own work."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.logits[: x_t.shape[0]]


class Bench:
    """A model with random weights, a batch of all-[MASK] inputs with class labels, and runners."""

    def __init__(self, config: ModelConfig, batch: int) -> None:
        torch.manual_seed(0)
        self.config, self.batch = config, batch
        self.net = DiscreteDiT(config).eval()
        self.x = torch.full((batch, config.seq_len), config.mask_id)
        self.t = torch.zeros(batch)
        self.y = torch.arange(batch) % config.num_classes
        self.null = torch.full_like(self.y, config.null_class)

    @torch.no_grad()
    def forward(self) -> None:
        self.net(self.x, self.t, self.y)

    @torch.no_grad()
    def forward_doubled(self) -> None:
        self.net(torch.cat([self.x, self.x]), torch.cat([self.t, self.t]), torch.cat([self.y, self.null]))

    def forwards(self, n: int) -> Callable[[], None]:
        return lambda: [self.forward() for _ in range(n)]

    def denoiser(self, cfg_scale: float = 1.0, cfg_batched: bool | None = None) -> Denoiser:
        return Denoiser(
            self.net, cfg_scale=cfg_scale, null_class=self.config.null_class, cfg_batched=cfg_batched
        )

    def sampler(
        self,
        sampler: Sampler,
        net: torch.nn.Module | None = None,
        cfg_batched: bool | None = None,
        cfg_scale: float = 1.0,
    ) -> Callable[[], object]:
        """One run of the sampler on the batch (guided when cfg_scale != 1), a Denoiser per run."""
        net = self.net if net is None else net
        null = self.config.null_class
        return lambda: sampler.sample(
            Denoiser(net, cfg_scale=cfg_scale, null_class=null, cfg_batched=cfg_batched),
            batch_size=self.batch,
            seq_len=self.config.seq_len,
            mask_id=self.config.mask_id,
            y=self.y,
            generator=torch.Generator().manual_seed(0),
        )

    def guided_step(self, denoiser: Denoiser) -> Callable[[], object]:
        return lambda: denoiser(self.x, self.t, self.y)

    def describe(self, name: str) -> str:
        depth, width = self.config.dims[0], self.config.dims[1]
        return f"{name}: {depth} layers, width {width}, {self.config.seq_len} tokens, batch {self.batch}"


def headline(repeats: int) -> None:
    nfe = 4
    bench = Bench(ModelConfig(vocab_size=1024, grid=(16, 16), num_classes=10, size="small"), 64)
    print(f"\n{bench.describe('small')}, 1,024 codes, NFE {nfe} (medians of {repeats})")
    with torch.no_grad():  # the logits of the doubled batch, for replays of either mode
        x, t, y = (torch.cat([v, v]) for v in (bench.x, bench.t, bench.y))
        replay = Replay(bench.net(x, t, torch.cat([bench.y, bench.null])))
    headline_samplers(bench, replay, nfe, repeats)
    headline_cfg(bench, replay, nfe, repeats)


def headline_samplers(bench: Bench, replay: Replay, nfe: int, repeats: int) -> None:
    samplers = {"euler": EulerSampler(num_steps=nfe), "maskgit": MaskGITSampler(num_steps=nfe)}
    times = paired(
        {"forwards": bench.forwards(nfe)} | {k: bench.sampler(s) for k, s in samplers.items()}, repeats
    )
    own = paired({k: bench.sampler(s, replay) for k, s in samplers.items()}, repeats)
    forward = statistics.median(times["forwards"]) / nfe
    print(f"bare forward {forward * 1e3:.0f} ms")
    for name in samplers:
        ratio = median_ratio(times[name], times["forwards"])
        step = statistics.median(own[name]) / nfe
        print(
            f"sampler wall / (NFE x one bare forward), {name:<8} {ratio:.3f}  (goal <= 1.05); "
            f"its own work {step * 1e3:.0f} ms a step, 1 + that / forward = {1 + step / forward:.3f}"
        )


def headline_cfg(bench: Bench, replay: Replay, nfe: int, repeats: int) -> None:
    """A guided sampler's step (forwards, guidance of the rows it reads, its own work) against the
    cheaper of the two ways to run CFG's forwards, NFE times."""
    samplers = {"euler": EulerSampler(num_steps=nfe), "maskgit": MaskGITSampler(num_steps=nfe)}
    guided = {
        f"{k} {m}": bench.sampler(s, cfg_batched=b, cfg_scale=2.0)
        for k, s in samplers.items()
        for m, b in MODES.items()
    }
    times = paired(
        {"2B forward": bench.forward_doubled, "two B forwards": bench.forwards(2)} | guided, repeats
    )
    own = paired(
        {k: bench.sampler(s, replay, cfg_batched=True, cfg_scale=2.0) for k, s in samplers.items()}, repeats
    )
    cheaper = [nfe * min(a, b) for a, b in zip(times["2B forward"], times["two B forwards"], strict=True)]
    print(
        f"one 2B forward {statistics.median(times['2B forward']) * 1e3:.0f} ms, "
        f"two B forwards {statistics.median(times['two B forwards']) * 1e3:.0f} ms"
    )
    probe = Denoiser(bench.net, cfg_scale=2.0, null_class=bench.config.null_class)
    probe(bench.x, bench.t, bench.y)  # the default's choice for this shape (made once per process)
    for name in samplers:
        ratio = median_ratio(times[f"{name} default"], cheaper)
        step = statistics.median(own[name]) / nfe
        print(
            f"CFG: {name:<8} guided step / cheaper of (one 2B forward, two B forwards) {ratio:.3f}  "
            f"(goal <= 1.02; default chose {probe.cfg_mode}); its own work {step * 1e3:.0f} ms a step, "
            f"1 + that / cheaper = {1 + step * nfe / statistics.median(cheaper):.3f}"
        )
        forced = ", ".join(
            f"{m} {median_ratio(times[f'{name} {m}'], cheaper):.3f}" for m in ("batched", "two-pass")
        )
        print(f"  forcing: {forced}")


def earlier_rows(name: str, bench: Bench, repeats: int) -> None:
    times = paired({"forward": bench.forward}, repeats)
    forward = statistics.median(times["forward"])
    print(f"\n{bench.describe(name)}; bare forward {forward * 1e3:.1f} ms")
    print(f"{'sampler':<10}{'NFE':>5}{'samples/s':>12}{'overhead':>10}")
    for nfe in (8, 16, 32):
        samplers = {"euler": EulerSampler(num_steps=nfe), "maskgit": MaskGITSampler(num_steps=nfe)}
        times = paired(
            {"forwards": bench.forwards(nfe)} | {k: bench.sampler(s) for k, s in samplers.items()}, repeats
        )
        for label in samplers:
            wall = statistics.median(times[label])
            overhead = median_ratio(times[label], times["forwards"])
            print(f"{label:<10}{nfe:>5}{bench.batch / wall:>12.1f}{overhead:>10.2f}")
    one_call, two_calls = bench.denoiser(2.0, cfg_batched=True), bench.denoiser(2.0, cfg_batched=False)
    times = paired({"batched": bench.guided_step(one_call), "two": bench.guided_step(two_calls)}, repeats)
    one, two = statistics.median(times["batched"]), statistics.median(times["two"])
    print(
        f"CFG step: batched {one * 1e3:.1f} ms vs two forwards {two * 1e3:.1f} ms "
        f"(batched / two = {one / two:.2f}; vs unguided forward {one / forward:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="timings per figure, >= 5")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dit-s", action="store_true", help="also the DiT-S rows (slow on CPU)")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be >= 5: the figures are medians")
    torch.set_num_threads(args.threads)
    headline(args.repeats)
    digits = ModelConfig(vocab_size=17, grid=(8, 8), num_classes=10)
    earlier_rows("digits default (tiny)", Bench(digits, 100), args.repeats)
    if args.dit_s:
        dit_s = ModelConfig(vocab_size=1024, grid=(16, 16), num_classes=10, size="DiT-S")
        earlier_rows("DiT-S", Bench(dit_s, 8), args.repeats)


if __name__ == "__main__":
    main()
