"""The training recipe: every training default, checked when built (``models.trainer`` runs it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

from models.losses import LOSSES
from models.registry import check_keys
from models.schedulers import KappaScheduler, build_scheduler

Corruption = Literal["interpolant", "maskgit"]
LrDecay = Literal["constant", "cosine"]
CORRUPTIONS = get_args(Corruption)
LR_DECAYS = get_args(LrDecay)
FUSED_ADAMW = ("auto", True, False)


@dataclass(frozen=True)
class TrainConfig:
    """Training recipe. ``corruption="maskgit"`` is the MaskGIT baseline's exact-count masking.

    The one definition of the training defaults: a trial's ``train`` section
    (``harness.config.trial.TrainSection``) is built from these fields, and
    ``search_spaces/base.yaml`` is checked against it.

    checkpoint_every: also save every this many steps (0: the final state only). tf32: float32
    matmuls and convolutions in TF32 on CUDA (set when training starts; no effect on CPU).
    fused_adamw: "auto" (fused on CUDA), True (fused; an error where torch has no fused kernel
    for the device) or False. activation_checkpointing: recompute each block's activations in
    the backward pass (less memory, about a third more compute; same gradients).
    """

    steps: int = 1500
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 100
    lr_decay: LrDecay = "constant"
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    class_dropout: float = 0.1
    scheduler: str = "linear"
    scheduler_params: dict[str, float] = field(default_factory=dict)
    loss: str = "masked_ce"
    corruption: Corruption = "interpolant"
    t_eps: float = 1e-3
    bf16: bool = False
    compile: bool = False
    seed: int = 0
    checkpoint_every: int = 500
    tf32: bool = False
    fused_adamw: Literal["auto"] | bool = "auto"
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        if not (self.fused_adamw == "auto" or isinstance(self.fused_adamw, bool)):
            raise ValueError(f"train.fused_adamw: {self.fused_adamw!r}; expected one of {FUSED_ADAMW}")
        LOSSES[self.loss]
        build_scheduler(self.scheduler, **self.scheduler_params)
        if self.corruption not in CORRUPTIONS:
            raise ValueError(f"train.corruption: unknown {self.corruption!r}; expected one of {CORRUPTIONS}")
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"train.lr_decay: unknown {self.lr_decay!r}; expected one of {LR_DECAYS}")
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
