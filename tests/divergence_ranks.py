"""The tiny training of tests/test_no_silent_garbage.py, and its two-rank gloo worker.

A module of its own (models only, no harness) so that each spawned rank imports little.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from models.backbone import ModelConfig
from models.data_parallel import DataParallel
from models.divergence import DivergenceGuard, TrainingDivergedError
from models.trainer import TrainConfig, train

MODEL = ModelConfig(vocab_size=17, grid=(4, 4), num_classes=3, size="tiny", depth=1, width=32, heads=2)


def tiny_data(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens (N, L) and classes (N,)."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, MODEL.vocab_size, (n, MODEL.seq_len), generator=generator)  # (N, L)
    return tokens, torch.randint(0, MODEL.num_classes, (n,), generator=generator)  # (N,)


def tiny_config(**changes) -> TrainConfig:
    return TrainConfig(**{"steps": 5, "batch_size": 8, "warmup_steps": 0, **changes})


def run_rank(rank: int, port: int, folder: str) -> None:
    """One of two gloo ranks: a NaN loss on rank 1 alone stops both ranks' guard at the same step,
    and a data-parallel training with lr = inf stops both ranks at the same step. Writes the
    messages it caught to ``<folder>/rank<r>.json``."""
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    parallel = DataParallel(rank, 2, wrap=DistributedDataParallel)
    messages = []
    try:
        guard = DivergenceGuard(parallel)
        for step in (1, 2, 3):
            loss = math.nan if (rank, step) == (1, 2) else 1.0 + step
            guard.record(step, torch.tensor(loss), torch.tensor(0.5))
        try:
            guard.check()
        except TrainingDivergedError as err:
            messages.append(str(err))
        tokens, labels = tiny_data()
        try:
            train(MODEL, tiny_config(lr=math.inf), tokens, labels, parallel=parallel)
        except TrainingDivergedError as err:
            messages.append(str(err))
        # Neither rank tears the group down while the other may still talk to it (gloo aborts
        # the process when its peer's connection closes mid-operation).
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()
    Path(folder, f"rank{rank}.json").write_text(json.dumps(messages))
    # The result is on disk: skip the interpreter's teardown, where a gloo thread still joinable
    # at exit sometimes aborts the process ("terminate called without an active exception",
    # SIGABRT in about 1 run in 8), which spawn reports as the rank's failure.
    os._exit(0)
