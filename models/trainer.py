"""One training loop for every recipe: AdamW, warm-up, grad clip, EMA, bf16, accumulation.

All randomness (batches, t, masks, condition dropout) comes from one ``torch.Generator``
whose state is checkpointed, so a resumed run continues bit for bit on CPU. Data-parallel
training (``DataParallel``) draws the same global micro-batch on every rank and trains each
rank on its rows, so N workers take the same optimizer steps as one process on the whole batch.

A training set too large to hold is a ``TokenStream`` instead of a tensor: its micro-batches
come in a fixed order (micro-batch k a function of the seed and k), each rank reading only its
rows of each; t, the masks and the dropped conditions still come from the generator.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from models.backbone import DiscreteDiT, ModelConfig
from models.checkpoint import FORMAT_VERSION, atomic_save, load_checkpoint
from models.data_parallel import DataParallel, MicroBatch, corrupt, draw_micro_batch, segments, training_loss
from models.divergence import DivergenceGuard
from models.divergence import TrainingDivergedError as TrainingDivergedError  # raised by train / train_step
from models.losses import masked_positions
from models.schedulers import KappaScheduler
from models.train_config import TrainConfig as TrainConfig  # the recipe, defined beside the loop


class TokenStream(Protocol):
    """A training set read from disk a micro-batch at a time, never held whole (N samples).

    ``micro_batches(start, ...)`` yields rank r of W's (index (b,) long, x_1 (b, L) long) of the
    global micro-batches start, start + 1, ... of B = ``batch_size`` rows: b = B / W, row j of
    rank r being row W j + r of the global micro-batch, and ``index`` the samples (the rows of
    ``labels``). Micro-batch k depends on ``seed`` and k alone, never on W, so a training
    resumed at step s (k = s * grad_accum) reads what an uninterrupted one reads.
    """

    def __len__(self) -> int: ...

    def micro_batches(
        self, start: int, *, batch_size: int, seed: int, rank: int, world_size: int
    ) -> Generator[tuple[Tensor, Tensor], None, None]: ...


def read_micro_batch(
    index: Tensor,
    x_1: Tensor,
    labels: Tensor | None,
    config: TrainConfig,
    scheduler: KappaScheduler,
    model_config: ModelConfig,
    generator: torch.Generator,
    shard: tuple[int, int] = (0, 1),
) -> MicroBatch:
    """``draw_micro_batch`` for rows read from a ``TokenStream``: x_1 (b, L) are rows r, r + W, ...
    of a micro-batch of B = ``config.batch_size`` rows, ``index`` (b,) their samples. t, the
    masks and the dropped conditions are drawn for all B rows on every rank (the generator
    advances alike everywhere) and each rank keeps its rows'; the draws depend on the rows'
    shape only, so zeros stand in for the other ranks' tokens, which are never read here."""
    rank, world_size = shard
    B = config.batch_size
    mine = slice(rank, B, world_size)  # this rank's rows of the micro-batch
    full = x_1.new_zeros((B, x_1.shape[1]))  # (B, L)
    full[mine] = x_1
    x_t, t = corrupt(full, config, scheduler, model_config, generator)  # (B, L), (B,) or (B, M)
    y = None
    if labels is not None:
        y = labels[index]  # (b,) or (b, S)
        drop = (torch.rand(B, generator=generator) < config.class_dropout)[mine]  # (b,)
        drop = drop.view(-1, *[1] * (y.dim() - 1))  # (b,) or (b, 1) for caption ids (b, S)
        y = torch.where(drop, torch.full_like(y, model_config.null_class), y)
    weights = tuple(1.0 for _ in segments(model_config))
    if world_size > 1 and config.loss == "masked_ce":  # w_r as in draw_micro_batch
        masked = masked_positions(x_t, model_config.mask_id)  # (B, L)
        weights = tuple(
            world_size * masked[mine, s].sum().item() / max(1, masked[:, s].sum().item())
            for s in segments(model_config)
        )
    return MicroBatch(x_1, x_t[mine], t[mine], y, weights)


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
    forward: Callable | None = None  # the compiled and/or DDP-wrapped model, else the model
    parallel: DataParallel | None = None
    wrapped: nn.Module | None = None  # the DDP module (for no_sync during accumulation)

    def __post_init__(self) -> None:
        if self.forward is None:
            self.forward = self.model


def set_tf32(enabled: bool, device: str | torch.device) -> None:
    """TF32 for float32 matmuls (cuBLAS) and convolutions (cuDNN) on CUDA, on or off as asked, so
    that a reused worker does not keep a previous training's choice; CPU is left alone. Uses
    torch's fp32_precision settings: mixing them with the legacy ``allow_tf32`` flags raises."""
    if torch.device(device).type != "cuda":
        return
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.conv.fp32_precision = "tf32" if enabled else "ieee"


def use_fused_adamw(config: TrainConfig, device: str | torch.device) -> bool:
    """ "auto": fused on CUDA only; True where torch has no fused kernel for the device is an error."""
    kind = torch.device(device).type
    if config.fused_adamw == "auto":
        return kind == "cuda"
    supported = _get_fused_kernels_supported_devices()
    if config.fused_adamw and kind not in supported:
        raise ValueError(
            f"train.fused_adamw = True but torch has no fused AdamW for device {kind!r} "
            f"(it has for {supported}); use 'auto' or false"
        )
    return config.fused_adamw


def init_state(
    model_config: ModelConfig, config: TrainConfig, device: str | torch.device = "cpu"
) -> TrainState:
    fused = use_fused_adamw(config, device)  # a bad choice fails before anything is built
    torch.manual_seed(config.seed)  # parameter init only; training draws from the generator
    model = DiscreteDiT(model_config).to(device)
    model.activation_checkpointing = config.activation_checkpointing
    ema = copy.deepcopy(model).requires_grad_(False)
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


def parallelize(state: TrainState, parallel: DataParallel, config: TrainConfig) -> None:
    """Makes ``state`` train as one rank of ``parallel`` (the DDP wrap, compiled if asked)."""
    state.parallel = parallel
    state.wrapped = parallel.wrap(state.model)
    state.forward = torch.compile(state.wrapped) if config.compile else state.wrapped


def optimizer_step(
    state: TrainState,
    tokens: Tensor | Iterator[tuple[Tensor, Tensor]],
    labels: Tensor | None,
    config: TrainConfig,
    scheduler: KappaScheduler,
    device: str | torch.device,
) -> tuple[Tensor, Tensor]:
    """One optimizer step over ``grad_accum`` micro-batches: (this rank's mean loss, the gradient
    norm before clipping), 0-d tensors left on the device (no synchronisation). ``tokens``: the
    training set (N, L), or the (index, x_1) of a ``TokenStream``'s micro-batches from this step's."""
    model, parallel = state.model, state.parallel
    shard = (parallel.rank, parallel.world_size) if parallel else (0, 1)
    for group in state.optimizer.param_groups:
        group["lr"] = lr_at(state.step, config)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for k in range(config.grad_accum):
        if isinstance(tokens, Tensor):
            batch = draw_micro_batch(tokens, labels, config, scheduler, model.config, state.generator, shard)
        else:
            index, x_1 = next(tokens)
            batch = read_micro_batch(
                index, x_1, labels, config, scheduler, model.config, state.generator, shard
            )
        x_1, x_t, t = batch.x_1.to(device), batch.x_t.to(device), batch.t.to(device)
        y = None if batch.y is None else batch.y.to(device)
        last = k == config.grad_accum - 1  # DDP averages gradients once, after the last micro-batch
        no_sync = getattr(state.wrapped, "no_sync", None)
        with contextlib.nullcontext() if last or no_sync is None else no_sync():
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=config.bf16):
                logits = state.forward(x_t, t, y)  # (b, L, V)
            loss = training_loss(logits, x_1, x_t, t, config, scheduler, model.config, batch.weights)
            (loss / config.grad_accum).backward()
        total += loss.detach().double()
    if config.grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    else:  # computed anyway: a non-finite gradient must stop the training at its own step
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    # EMA with the usual warm-up, so that a short run's EMA is not mostly the initialisation.
    decay = min(config.ema_decay, (1 + state.step) / (10 + state.step))
    with torch.no_grad():
        for p_ema, p in zip(state.ema.parameters(), model.parameters(), strict=True):
            p_ema.lerp_(p, 1.0 - decay)
    state.step += 1
    return total / config.grad_accum, grad_norm


def train_step(
    state: TrainState,
    tokens: Tensor,
    labels: Tensor | None,
    config: TrainConfig,
    scheduler: KappaScheduler,
    device: str | torch.device,
) -> float:
    """One optimizer step; returns the mean loss (over all ranks). Raises TrainingDivergedError when
    the loss or the gradient norm is not finite. Synchronises once per call (``train`` checks
    only at its logging and saving steps)."""
    guard = DivergenceGuard(state.parallel)
    loss, grad_norm = optimizer_step(state, tokens, labels, config, scheduler, device)
    guard.record(state.step, loss, grad_norm)
    return guard.check()[0]


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


def _read(
    tokens: Tensor | TokenStream, state: TrainState, config: TrainConfig
) -> contextlib.AbstractContextManager:
    """The tensor itself, or this rank's micro-batches of the stream from the state's step on
    (closed on leaving: a loader's worker processes end)."""
    if isinstance(tokens, Tensor):
        return contextlib.nullcontext(tokens)
    rank, world_size = (state.parallel.rank, state.parallel.world_size) if state.parallel else (0, 1)
    start, B = state.step * config.grad_accum, config.batch_size
    return contextlib.closing(
        tokens.micro_batches(start, batch_size=B, seed=config.seed, rank=rank, world_size=world_size)
    )


def train(
    model_config: ModelConfig,
    config: TrainConfig,
    tokens: Tensor | TokenStream,
    labels: Tensor | None = None,
    *,
    checkpoint_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    log: Callable[[int, dict], None] | None = None,
    log_every: int = 50,
    parallel: DataParallel | None = None,
) -> TrainState:
    """Trains to ``config.steps``, resuming from ``checkpoint_path`` if it exists.

    tokens: (N, L) long training set, or a ``TokenStream`` of one too large to hold; labels: the
    conditions, class ids (N,) or caption ids (N, S) (``model_config.text``), or None. Saves the
    final state (and every ``checkpoint_every`` steps) to ``checkpoint_path``. With ``parallel``
    every rank calls this with the same arguments: each trains on B / N rows of every
    micro-batch, ``log`` gets the mean loss over ranks on every rank, and only rank 0 writes the
    checkpoint.

    Raises TrainingDivergedError (on every rank) when a step's loss or gradient norm is not finite;
    checked every ``log_every`` steps and before each save, whose weights and EMA must be finite
    too, so a checkpoint never holds weights from a non-finite step.
    """
    if labels is not None and not model_config.conditional:
        labels = None
    if parallel is not None and config.batch_size % parallel.world_size:
        raise ValueError(
            f"train.batch_size {config.batch_size} is not divisible by {parallel.world_size} workers"
        )
    set_tf32(config.tf32, device)  # here, at the entry of training, never at import
    resume = checkpoint_path is not None and Path(checkpoint_path).is_file()
    state = (
        restore_state(checkpoint_path, config, device) if resume else init_state(model_config, config, device)
    )
    if parallel is not None:
        parallelize(state, parallel, config)
    writes = checkpoint_path is not None and (parallel is None or parallel.rank == 0)
    scheduler = config.build_scheduler()
    state.model.train()
    guard = DivergenceGuard(parallel)
    started, window = time.perf_counter(), []
    with _read(tokens, state, config) as source:
        while state.step < config.steps:
            loss, grad_norm = optimizer_step(state, source, labels, config, scheduler, device)
            guard.record(state.step, loss, grad_norm)  # state.step: the step just taken, counted from 1
            done = state.step == config.steps
            periodic = bool(config.checkpoint_every) and state.step % config.checkpoint_every == 0
            if state.step % log_every == 0 or periodic or done:  # the same steps on every rank
                window += guard.check((state.model, state.ema) if periodic or done else ())
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
            if writes and (periodic or done):
                save_state(checkpoint_path, state, config)
    state.model.eval()
    state.ema.eval()
    return state
