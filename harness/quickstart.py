"""The embedded quickstart: train one class-conditional model on digits, sample, save PNG grids.

Superseded by the declarative quickstart study once the harness runs studies; kept as the
smallest end-to-end path through the library.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.datasets import load_dataset
from harness.sampling import build_sampler, generate, save_image_grid
from models.backbone import ModelConfig
from models.checkpoint import model_from_checkpoint
from models.diagnostics import context_check, heldout_masked_ce, unigram_entropy
from models.trainer import TrainConfig, train


def run_quickstart(out_dir: Path, *, steps: int = 1000, num_samples: int = 100, seed: int = 0) -> dict:
    data, heldout = load_dataset("digits", "train"), load_dataset("digits", "heldout")
    model_config = ModelConfig(
        vocab_size=data.vocab_size,
        grid=data.grid,
        num_classes=data.num_classes,
        timestep="implicit",
        size="tiny",
    )
    train_config = TrainConfig(
        steps=steps, batch_size=64, lr=2e-3, warmup_steps=50, seed=seed, checkpoint_every=250
    )
    checkpoint = out_dir / "checkpoint.pt"

    def log(step: int, metrics: dict) -> None:
        print(
            f"  step {step:5d}/{steps}  loss {metrics['train/loss']:.3f}  {metrics['train/seconds']:.0f}s",
            flush=True,
        )

    print(f"training {model_config.size} ITM model on digits for {steps} steps -> {checkpoint}", flush=True)
    train(
        model_config,
        train_config,
        data.tokens,
        data.labels,
        checkpoint_path=checkpoint,
        log=log,
        log_every=250,
    )
    net, state = model_from_checkpoint(checkpoint)
    scheduler = train_config.build_scheduler()
    summary = {
        "unigram_entropy": unigram_entropy(data.tokens, data.vocab_size),
        "heldout_masked_ce": heldout_masked_ce(
            net, heldout.tokens, heldout.labels, scheduler, net.config.mask_id
        ),
        **context_check(net, heldout.tokens, heldout.labels, scheduler, net.config.mask_id),
        "samples": {},
    }
    samplers = {
        "euler_16": ("euler", {"num_steps": 16}),
        "euler_16_cfg2": ("euler", {"num_steps": 16}),
        "maskgit_8": ("maskgit", {"num_steps": 8}),
    }
    for label, (name, options) in samplers.items():
        cfg_scale = 2.0 if label.endswith("cfg2") else 1.0
        sample_set = generate(
            net,
            build_sampler(name, scheduler, **options),
            num_samples=num_samples,
            cfg_scale=cfg_scale,
            seed=seed,
        )
        grid = save_image_grid(data.tokenizer.decode(sample_set.tokens), out_dir / f"samples_{label}.png")
        summary["samples"][label] = {
            "png": str(grid),
            "nfe": sample_set.nfe,
            "seconds_per_sample": sample_set.seconds_per_sample,
        }
        print(
            f"  {label}: NFE {sample_set.nfe}, {sample_set.seconds_per_sample * 1e3:.1f} ms/sample -> {grid}"
        )
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(out_dir: str = "runs/quickstart") -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    summary = run_quickstart(Path(out_dir))
    print(
        f"held-out masked CE {summary['heldout_masked_ce']:.3f} nats "
        f"(unigram entropy {summary['unigram_entropy']:.3f}); context check: one masked "
        f"{summary['ce_one_masked']:.3f} vs all masked {summary['ce_all_masked']:.3f}"
    )
    print(f"samples and summary in {out_dir}/")
