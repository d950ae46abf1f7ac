"""One training loop for every recipe: AdamW, warm-up, grad clip, EMA, bf16, accumulation.

All randomness (batches, t, masks, condition dropout) comes from one ``torch.Generator``
whose state is checkpointed, so a resumed run continues bit for bit on CPU.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from models.backbone import DiscreteDiT, ModelConfig, check_keys
from models.checkpoint import FORMAT_VERSION, atomic_save, load_checkpoint
from models.losses import LOSSES, masked_positions
from models.path import maskgit_corrupt, sample_t, sample_x_t
from models.schedulers import KappaScheduler, build_scheduler

CORRUPTIONS = ("interpolant", "maskgit")


@dataclass(frozen=True)
class TrainConfig:
    """Training recipe. ``corruption="maskgit"`` is the MaskGIT baseline's exact-count masking."""

    steps: int = 1000
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 100
    lr_decay: str = "constant"
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    class_dropout: float = 0.1
    scheduler: str = "linear"
    scheduler_params: dict = field(default_factory=dict)
    loss: str = "masked_ce"
    corruption: str = "interpolant"
    t_eps: float = 1e-3
    bf16: bool = False
    compile: bool = False
    seed: int = 0
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        LOSSES[self.loss]
        build_scheduler(self.scheduler, **self.scheduler_params)
        if self.corruption not in CORRUPTIONS:
            raise ValueError(f"train.corruption: unknown {self.corruption!r}; expected one of {CORRUPTIONS}")
        if self.lr_decay not in ("constant", "cosine"):
            raise ValueError(f"train.lr_decay: unknown {self.lr_decay!r}; expected 'constant' or 'cosine'")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("train.steps, train.batch_size and train.grad_accum must be >= 1")

    def build_scheduler(self) -> KappaScheduler:
        return build_scheduler(self.scheduler, **self.scheduler_params)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        check_keys("train", d, cls)
        return cls(**d)


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up to lr, then constant or cosine to 0 at ``steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_decay == "cosine":
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * config.lr * (1 + math.cos(math.pi * progress))
    return config.lr


@dataclass
class TrainState:
    model: DiscreteDiT
    ema: DiscreteDiT
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0
    forward: Callable | None = None  # torch.compile'd model when config.compile, else the model

    def __post_init__(self) -> None:
        if self.forward is None:
            self.forward = self.model


def init_state(
    model_config: ModelConfig, config: TrainConfig, device: str | torch.device = "cpu"
) -> TrainState:
    torch.manual_seed(config.seed)  # parameter init only; training draws from the generator
    model = DiscreteDiT(model_config).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    fused = torch.device(device).type == "cuda"
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.lr,
        betas=config.betas,
        weight_decay=config.weight_decay,
        fused=fused or None,
    )
    generator = torch.Generator().manual_seed(config.seed)
    forward = torch.compile(model) if config.compile else model  # parameters shared with model
    return TrainState(model, ema, optimizer, generator, forward=forward)


def corrupt(
    x_1: Tensor, config: TrainConfig, scheduler: KappaScheduler, mask_id: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Returns (x_t, t) for one batch under the configured corruption."""
    t = sample_t(x_1.shape[0], eps=config.t_eps, generator=generator)
    if config.corruption == "maskgit":
        return maskgit_corrupt(x_1, mask_id, generator=generator), t
    return sample_x_t(x_1, t, scheduler, mask_id, generator=generator), t


def train_step(
    state: TrainState,
    tokens: Tensor,
    labels: Tensor | None,
    config: TrainConfig,
    scheduler: KappaScheduler,
    device: str | torch.device,
) -> float:
    """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss."""
    model, cfg, g = state.model, state.model.config, state.generator
    for group in state.optimizer.param_groups:
        group["lr"] = lr_at(state.step, config)
    total = 0.0
    for _ in range(config.grad_accum):
        idx = torch.randint(0, tokens.shape[0], (config.batch_size,), generator=g)
        x_1 = tokens[idx]  # (B, L)
        x_t, t = corrupt(x_1, config, scheduler, cfg.mask_id, g)
        y = None
        if labels is not None:
            y = labels[idx]
            drop = torch.rand(config.batch_size, generator=g) < config.class_dropout
            y = torch.where(drop, torch.full_like(y, cfg.null_class), y)
            y = y.to(device)
        x_1, x_t, t = x_1.to(device), x_t.to(device), t.to(device)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=config.bf16):
            logits = state.forward(x_t, t, y)  # (B, L, V)
        loss = LOSSES[config.loss](logits, x_1, masked_positions(x_t, cfg.mask_id), t, scheduler)
        (loss / config.grad_accum).backward()
        total += loss.item()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    # EMA with the usual warm-up, so that a short run's EMA is not mostly the initialisation.
    decay = min(config.ema_decay, (1 + state.step) / (10 + state.step))
    with torch.no_grad():
        for p_ema, p in zip(state.ema.parameters(), model.parameters(), strict=True):
            p_ema.lerp_(p, 1.0 - decay)
    state.step += 1
    return total / config.grad_accum


def save_state(path: str | Path, state: TrainState, config: TrainConfig, extra: dict | None = None) -> None:
    atomic_save(
        {
            "format_version": FORMAT_VERSION,
            "model_config": state.model.config.to_dict(),
            "train_config": config.to_dict(),
            "model": state.model.state_dict(),
            "ema": state.ema.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "generator": state.generator.get_state(),
            "step": state.step,
            "extra": extra or {},
        },
        path,
    )


def restore_state(path: str | Path, config: TrainConfig, device: str | torch.device = "cpu") -> TrainState:
    ckpt = load_checkpoint(path, map_location=device)
    state = init_state(ModelConfig.from_dict(ckpt["model_config"]), config, device)
    state.model.load_state_dict(ckpt["model"])
    state.ema.load_state_dict(ckpt["ema"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.generator.set_state(ckpt["generator"])
    state.step = ckpt["step"]
    return state


def train(
    model_config: ModelConfig,
    config: TrainConfig,
    tokens: Tensor,
    labels: Tensor | None = None,
    *,
    checkpoint_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    log: Callable[[int, dict], None] | None = None,
    log_every: int = 50,
) -> TrainState:
    """Trains to ``config.steps``, resuming from ``checkpoint_path`` if it exists.

    tokens: (N, L) long training set; labels: (N,) long or None. Saves the final state (and
    every ``checkpoint_every`` steps) to ``checkpoint_path``.
    """
    if labels is not None and model_config.num_classes == 0:
        labels = None
    resume = checkpoint_path is not None and Path(checkpoint_path).is_file()
    state = (
        restore_state(checkpoint_path, config, device) if resume else init_state(model_config, config, device)
    )
    scheduler = config.build_scheduler()
    state.model.train()
    started, window = time.perf_counter(), []
    while state.step < config.steps:
        window.append(train_step(state, tokens, labels, config, scheduler, device))
        done = state.step == config.steps
        if log is not None and (state.step % log_every == 0 or done):
            log(
                state.step,
                {
                    "train/loss": sum(window) / len(window),
                    "train/lr": lr_at(state.step - 1, config),
                    "train/seconds": time.perf_counter() - started,
                },
            )
            window = []
        periodic = config.checkpoint_every and state.step % config.checkpoint_every == 0
        if checkpoint_path is not None and (periodic or done):
            save_state(checkpoint_path, state, config)
    state.model.eval()
    state.ema.eval()
    return state
