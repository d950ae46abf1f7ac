"""A gloo rank of tests/test_distributed.py's streamed training: ``train_into`` on a shard folder,
as a Ray Train worker calls it (a module of its own so that a spawned rank imports little)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel


def run_rank(rank: int, world_size: int, port: int, trial: dict, folder: str) -> None:
    """Rank ``rank`` of ``world_size`` trains ``trial`` into ``folder`` (rank 0 writes the checkpoint)."""
    from harness.config.trial import build_trial
    from harness.run.store import train_into
    from models.data_parallel import DataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        train_into(
            build_trial(trial), Path(folder), parallel=DataParallel(rank, world_size, DistributedDataParallel)
        )
        torch.distributed.barrier()  # no rank tears the group down while the other may still use it
    finally:
        torch.distributed.destroy_process_group()
    Path(folder, f"rank{rank}.json").write_text(json.dumps({"rank": rank}))
    # As tests/divergence_ranks.py: the result is on disk, so skip the interpreter's teardown,
    # where a gloo thread still joinable at exit sometimes aborts the rank (SIGABRT, "terminate
    # called without an active exception"), which spawn reports as the rank's failure.
    os._exit(0)
