#!/usr/bin/env python
"""Training-data memory of a shard folder: a training worker's peak RSS does not grow with the split.

Writes a synthetic shard folder of ImageNet 256 as VQ-f8 ids (1,281,167 x 32 x 32 int16 codes of
16,384, 1,000 classes; about 2.6 GB, written once to a temporary folder, in the format
``harness.data.sources.shards`` reads) and a 1,000-sample one; trains a tiny model 50 steps on
each with 2 data-parallel gloo CPU workers, each calling the harness's training path
(``harness.run.store.train_into``, as a Ray Train worker does: the split streamed through
``harness.data.shard_loader``, each rank reading its rows); and prints each worker's peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``) and the difference between the two folders; then each
worker reads as many micro-batches of a realistic size (``--read-batch``, 256) through the same
loader, without a model, and reports its peak RSS again. The checksums are verified once per
folder (``verify_once``: one rank hashes, the other waits for its stamp), in a cache folder of
its own. ``--throughput`` also times training tokens/s through the loader
against an in-memory tensor of the same rows (one process). Everything written is deleted at
the end (``--keep`` keeps it).

    .venv/bin/python benchmarks/train_memory.py [--samples 1281167] [--steps 50] [--throughput]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GRID, VOCAB, CLASSES = (32, 32), 16384, 1000  # ImageNet 256 through a VQ-f8 tokenizer


class SyntheticIds:
    """(N, L) int16 code ids, generated a slice at a time (``write_shards`` slices per shard)."""

    def __init__(self, count: int, seed: int = 0) -> None:
        self.count, self.seed = count, seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.count)
        rng = np.random.default_rng([self.seed, start])
        return rng.integers(0, VOCAB, (stop - start, GRID[0] * GRID[1]), dtype=np.int16)  # (n, L)


def write_folder(path: Path, count: int) -> dict:
    from harness.data.sources.shards import write_shards

    labels = np.arange(count) % CLASSES
    write_shards(
        path, {"train": (SyntheticIds(count), labels)}, grid=GRID, vocab_size=VOCAB, num_classes=CLASSES
    )
    return {"path": str(path), "grid": list(GRID), "vocab_size": VOCAB, "num_classes": CLASSES}


def trial_dict(options: dict, steps: int, batch_size: int) -> dict:
    return {
        "data": {"name": "shards", "options": options},
        "model": {"size": "tiny", "depth": 1, "width": 32, "heads": 2},
        "train": {"steps": steps, "batch_size": batch_size, "warmup_steps": 0, "checkpoint_every": 0},
        "eval": {"extractor": "inception"},
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(rank: int, world_size: int, port: int, trial: dict, folder: str, read_batch: int) -> None:
    """One data-parallel training worker: ``train_into`` with its rank, then its peak RSS; then
    the same number of micro-batches of ``read_batch`` rows read through the same loader (no
    model: a realistic batch size's reads, cheaply) and the peak RSS after them."""
    from torch.nn.parallel import DistributedDataParallel

    from harness.config.trial import build_trial
    from harness.data.registry import get_dataset
    from harness.data.shard_loader import RowStream
    from harness.run.store import train_into
    from models.data_parallel import DataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    started = time.perf_counter()
    try:
        parallel = DataParallel(rank, world_size, DistributedDataParallel)
        train_into(build_trial(trial), Path(folder), parallel=parallel)
    finally:
        torch.distributed.destroy_process_group()
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    result = {
        "peak_rss_mb": peak_rss_mb(),
        "vm_hwm_mb": int(status["VmHWM"].split()[0]) / 1024,
        "seconds": time.perf_counter() - started,
    }
    data = get_dataset("shards").stream("train", **trial["data"]["options"])
    batches = RowStream(data.rows).micro_batches(
        0, batch_size=read_batch, seed=0, rank=rank, world_size=world_size
    )
    for _ in range(trial["train"]["steps"]):
        next(batches)
    batches.close()
    result["peak_rss_after_reads_mb"] = peak_rss_mb()
    Path(folder, f"rank{rank}.json").write_text(json.dumps(result))


def train_workers(options: dict, args: argparse.Namespace, folder: Path) -> list[dict]:
    folder.mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    trial = trial_dict(options, args.steps, args.batch_size)
    spawn_args = (args.workers, port, trial, str(folder), args.read_batch)
    torch.multiprocessing.spawn(worker, args=spawn_args, nprocs=args.workers)
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(args.workers)]


def throughput(options: dict, args: argparse.Namespace) -> dict[str, float]:
    """One process: training tokens/s through the loader and from an in-memory int64 tensor of
    as many rows as the run reads (best of ``--repeats`` alternating runs, after one warm-up
    each), and the time to fetch one micro-batch each way (the data's share of a step)."""
    from harness.data.registry import get_dataset
    from harness.data.shard_loader import RowStream
    from models.backbone import ModelConfig
    from models.trainer import TrainConfig, train

    torch.set_num_threads(1)
    data = get_dataset("shards").stream("train", **options)
    model = ModelConfig(
        vocab_size=VOCAB, grid=GRID, num_classes=CLASSES, size="tiny", depth=1, width=32, heads=2
    )
    steps, B = args.throughput_steps, args.batch_size
    config = TrainConfig(steps=steps, batch_size=B, warmup_steps=0, checkpoint_every=0)
    in_memory = data.rows.read(np.arange(steps * B))  # (n, L) int64, as loading the split gives
    paths = {"loader": (RowStream(data.rows), data.labels), "memory": (in_memory, data.labels[: steps * B])}
    best = dict.fromkeys(paths, 0.0)
    for repeat in range(args.repeats + 1):  # the first round warms up
        for name, (tokens, conditions) in paths.items():
            seconds: list[float] = []
            log = lambda step, metrics, seconds=seconds: seconds.append(metrics["train/seconds"])  # noqa: E731
            train(model, config, tokens, conditions, log=log, log_every=steps)
            if repeat:
                best[name] = max(best[name], steps * B * model.seq_len / seconds[-1])
                best["step_ms"] = min(best.get("step_ms", math.inf), seconds[-1] / steps * 1e3)
    batches = RowStream(data.rows).micro_batches(0, batch_size=B, seed=0, rank=0, world_size=1)
    fetch = {
        "loader": lambda: next(batches),
        "memory": lambda: in_memory[torch.randint(0, len(in_memory), (B,))],
    }
    for name, get in fetch.items():
        started = time.perf_counter()
        for _ in range(200):
            get()
        best[f"{name}_fetch_ms"] = (time.perf_counter() - started) / 200 * 1e3
    batches.close()
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--samples", type=int, default=1_281_167, help="samples in the large folder")
    parser.add_argument("--small", type=int, default=1000, help="samples in the small folder")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=2, help="global micro-batch (split over workers)")
    parser.add_argument("--workers", type=int, default=2, help="data-parallel gloo workers")
    parser.add_argument("--read-batch", type=int, default=256, help="micro-batch of the reads after training")
    parser.add_argument("--throughput", action="store_true", help="also time tokens/s, loader vs in memory")
    parser.add_argument("--throughput-steps", type=int, default=10, help="steps per throughput run")
    parser.add_argument("--repeats", type=int, default=2, help="throughput runs per path (best kept)")
    parser.add_argument("--dir", default=None, help="where the temporary folder goes (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the shard folders and outputs")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="train-memory-", dir=args.dir))
    os.environ["UNMASK_CACHE"] = str(root / "cache")  # the workers' verification stamps
    try:
        peaks = {}
        for name, count in (("small", args.small), ("large", args.samples)):
            started = time.perf_counter()
            options = write_folder(root / f"{name}-shards", count)
            size = sum(f.stat().st_size for f in (root / f"{name}-shards").iterdir()) / 2**30
            print(f"{count:,}-sample folder: {size:.2f} GiB written in {time.perf_counter() - started:.0f} s")
            results = train_workers(options, args, root / f"{name}-run")
            for rank, result in enumerate(results):
                peak, hwm, seconds = result["peak_rss_mb"], result["vm_hwm_mb"], result["seconds"]
                print(
                    f"  worker {rank}: peak RSS {peak:.0f} MB (VmHWM {hwm:.0f} MB), {args.steps} steps in"
                    f" {seconds:.0f} s; after {args.steps} more micro-batches of {args.read_batch} rows read"
                    f" through the loader: {result['peak_rss_after_reads_mb']:.0f} MB"
                )
            peaks[name] = max(result["peak_rss_mb"] for result in results)
            peaks[f"{name}_reads"] = max(result["peak_rss_after_reads_mb"] for result in results)
        as_int64 = args.samples * GRID[0] * GRID[1] * 8 / 2**20
        print(f"(the split held as int64, as loading it does: {as_int64:,.0f} MB per worker)")
        difference = peaks["large"] - peaks["small"]
        print(
            f"training worker peak RSS, {args.samples / 1e6:.2f} M-sample folder minus {args.small:,}-sample "
            f"folder: {difference:.0f} MB (goal <= 200 MB)"
        )
        reads = peaks["large_reads"] - peaks["small_reads"]
        print(f"  (the same after the reads of {args.read_batch}-row micro-batches: {reads:.0f} MB)")
        if args.throughput:
            speed = throughput(options, args)
            bound = speed["step_ms"] / (
                speed["step_ms"] + speed["loader_fetch_ms"] - speed["memory_fetch_ms"]
            )
            print(
                f"training tokens/s (one process): loader {speed['loader']:,.0f}, in-memory tensor"
                f" {speed['memory']:,.0f}, ratio {speed['loader'] / speed['memory']:.3f} (goal >= 0.95);"
                f" one micro-batch fetched in {speed['loader_fetch_ms']:.2f} ms through the loader,"
                f" {speed['memory_fetch_ms']:.2f} ms from memory, a step taking {speed['step_ms']:.0f} ms"
                f" (the ratio the fetch alone allows: {bound:.4f})"
            )
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
