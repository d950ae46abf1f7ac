#!/usr/bin/env python
"""The prepared GPU check: training and sampling speed of a DiT-B on 32 x 32 tokens, DiT-XL memory.

On a lent GPU machine (one run, a few minutes):

    .venv/bin/python benchmarks/gpu_check.py --json $OUT/gpu_check.json

1. Training: DiT-B (12 layers, width 768) over a 32 x 32 grid of 16,384 codes and 1,000 classes,
   bf16 autocast + TF32 + fused AdamW (``--compile``: torch.compile; ``--checkpointing``:
   activation checkpointing), ``--warmup`` steps then ``--steps`` timed steps of the project's
   own ``train_step`` at ``--batch`` (halved until it fits). Prints step time, samples/s,
   tokens/s and peak memory (``torch.cuda.max_memory_allocated``).
2. Sampling: Euler, ``--nfe`` steps, CFG ``--cfg`` (the conditional and unconditional halves as one
   batched forward), bf16, ``--sample-batch`` samples: samples/s, tokens/s, peak memory.
3. DiT-XL probe: one training step of DiT-XL (28 layers, width 1152) at the paper's batch per
   GPU (``--xl-batch``, 256 on one GPU), without and with activation checkpointing, halving the
   batch until a step fits: the largest batch per GPU and its peak memory and step time.

Random tokens and random weights: speed and memory do not depend on the data or on training.
``--device cpu --tiny`` runs the same code paths on CPU in seconds (the tests call it).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from models.backbone import DiscreteDiT, ModelConfig
from models.samplers import Denoiser, EulerSampler
from models.trainer import TrainConfig, init_state, set_tf32, train_step


@dataclass(frozen=True)
class Setup:
    size: str
    grid: int
    vocab_size: int
    num_classes: int
    batch: int
    steps: int
    warmup: int
    sample_batch: int
    nfe: int
    cfg: float
    xl_size: str
    xl_batch: int


FULL = Setup("DiT-B", 32, 16384, 1000, 256, 10, 3, 256, 16, 4.0, "DiT-XL", 256)
TINY = Setup("tiny", 8, 64, 10, 8, 2, 1, 4, 2, 4.0, "small", 8)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    """Peak tensor memory on the GPU since the last reset; on CPU the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err)


def largest_fitting(run: Callable[[int], dict], batch: int, device: torch.device) -> dict:
    """run(batch) at ``batch``, halved after each out-of-memory error; {"fits": False} if none fits."""
    while batch >= 1:
        _reset_peak(device)
        try:
            return {"batch": batch, "fits": True, **run(batch)}
        except (torch.cuda.OutOfMemoryError, RuntimeError) as err:
            if not _oom(err):
                raise
            print(f"    batch {batch}: out of memory", flush=True)
        batch //= 2
    return {"fits": False}


def model_config(setup: Setup, size: str) -> ModelConfig:
    return ModelConfig(
        vocab_size=setup.vocab_size, grid=(setup.grid, setup.grid), num_classes=setup.num_classes, size=size
    )


def time_training(
    config: ModelConfig, train: TrainConfig, steps: int, warmup: int, device: torch.device
) -> dict:
    """``warmup`` untimed steps (compilation, allocator), then ``steps`` timed optimizer steps."""
    tokens = torch.randint(0, config.vocab_size, (4 * train.batch_size, config.seq_len))  # (N, L)
    labels = torch.randint(0, config.num_classes, (4 * train.batch_size,))  # (N,)
    state = init_state(config, train, device)
    state.model.train()
    scheduler = train.build_scheduler()
    for _ in range(warmup):
        train_step(state, tokens, labels, train, scheduler, device)
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        loss = train_step(state, tokens, labels, train, scheduler, device)
    _sync(device)
    seconds = (time.perf_counter() - started) / max(1, steps)
    rows = train.batch_size * train.grad_accum
    return {
        "step_s": seconds,
        "samples_per_s": rows / seconds,
        "tokens_per_s": rows * config.seq_len / seconds,
        "peak_gib": peak_gib(device),
        "loss": loss if steps else None,
        "parameters": sum(p.numel() for p in state.model.parameters()),
    }


def time_sampling(config: ModelConfig, setup: Setup, compile_net: bool, device: torch.device) -> dict:
    """Euler sampling of ``sample_batch`` samples with batched CFG under bf16 autocast (one
    untimed warm-up run of one step, then the timed run)."""
    torch.manual_seed(0)
    net = DiscreteDiT(config).to(device).eval()
    forward = torch.compile(net) if compile_net else net
    denoiser = Denoiser(forward, cfg_scale=setup.cfg, null_class=config.null_class)
    y = torch.arange(setup.sample_batch, device=device) % config.num_classes  # (B,)

    def run(num_steps: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            EulerSampler(num_steps=num_steps).sample(
                denoiser,
                batch_size=setup.sample_batch,
                seq_len=config.seq_len,
                mask_id=config.mask_id,
                y=y,
                generator=torch.Generator(device=device).manual_seed(0),
                device=device,
            )

    run(1)
    _reset_peak(device)
    _sync(device)
    started = time.perf_counter()
    run(setup.nfe)
    _sync(device)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "samples_per_s": setup.sample_batch / seconds,
        "tokens_per_s": setup.sample_batch * config.seq_len / seconds,
        "nfe": setup.nfe,
        "cfg": setup.cfg,
        "peak_gib": peak_gib(device),
    }


def probe_xl(setup: Setup, base: TrainConfig, device: torch.device) -> dict:
    """One DiT-XL training step (after one untimed) at the paper's batch per GPU, halved until it
    fits, without and with activation checkpointing."""
    config = model_config(setup, setup.xl_size)
    out = {}
    for checkpointing in (False, True):
        label = "checkpointing" if checkpointing else "plain"
        print(f"  {setup.xl_size} one-step probe ({label}), batch {setup.xl_batch} per GPU", flush=True)

        def run(batch: int, checkpointing: bool = checkpointing) -> dict:
            train = replace(base, batch_size=batch, activation_checkpointing=checkpointing)
            return time_training(config, train, steps=1, warmup=1, device=device)

        out[label] = largest_fitting(run, setup.xl_batch, device)
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (a CPU smoke run of every path)")
    parser.add_argument("--compile", action="store_true", help="torch.compile training and sampling")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing (DiT-B)")
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--skip-xl", action="store_true", help="no DiT-XL probe")
    for name in ("size", "grid", "batch", "steps", "warmup", "sample_batch", "nfe", "xl_batch"):
        kind = str if name == "size" else int
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None)
    parser.add_argument("--cfg", type=float, default=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    return parser.parse_args()


def setup_from(args: argparse.Namespace) -> Setup:
    setup = TINY if args.tiny else FULL
    changes = {
        k: getattr(args, k) for k in (*Setup.__dataclass_fields__,) if getattr(args, k, None) is not None
    }
    return replace(setup, **changes)


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: --device cuda but torch sees no GPU; use --device cpu --tiny")
    if args.threads:
        torch.set_num_threads(args.threads)
    setup = setup_from(args)
    set_tf32(True, device)  # the entry point sets runtime flags (here: TF32 on CUDA)
    train = TrainConfig(
        batch_size=setup.batch,
        lr=1e-4,
        warmup_steps=1,
        bf16=not args.no_bf16,
        tf32=True,
        fused_adamw="auto",
        compile=args.compile,
        activation_checkpointing=args.checkpointing,
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    report = {"device": name, "torch": torch.__version__, "setup": setup.__dict__, "compile": args.compile}
    config = model_config(setup, setup.size)
    print(f"{name}, torch {torch.__version__}: {setup.size} on {setup.grid}x{setup.grid} tokens", flush=True)

    def run_training(batch: int) -> dict:
        return time_training(config, replace(train, batch_size=batch), setup.steps, setup.warmup, device)

    report["train"] = largest_fitting(run_training, setup.batch, device)
    report["sample"] = time_sampling(config, setup, args.compile, device)
    if not args.skip_xl:
        report["xl_probe"] = probe_xl(setup, replace(train, compile=False), device)
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


def print_report(report: dict) -> None:
    t, s = report["train"], report["sample"]
    if t["fits"]:
        print(
            f"train  batch {t['batch']}: {t['step_s'] * 1e3:.1f} ms/step, "
            f"{t['samples_per_s']:.1f} samples/s, {t['tokens_per_s']:.3g} tokens/s, "
            f"peak {t['peak_gib']:.2f} GiB ({t['parameters'] / 1e6:.0f} M parameters)"
        )
    else:
        print("train  no batch fits")
    print(
        f"sample {s['nfe']} Euler steps, CFG {s['cfg']}: {s['samples_per_s']:.2f} samples/s, "
        f"{s['tokens_per_s']:.3g} tokens/s, peak {s['peak_gib']:.2f} GiB"
    )
    for label, probe in report.get("xl_probe", {}).items():
        if probe["fits"]:
            print(
                f"xl     {label}: batch {probe['batch']} per GPU fits, peak {probe['peak_gib']:.2f} GiB, "
                f"{probe['step_s']:.2f} s/step"
            )
        else:
            print(f"xl     {label}: no batch fits")


if __name__ == "__main__":
    main()
