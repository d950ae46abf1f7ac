"""The trial: a plain function of its config (Ray Tune calls it; tests call it directly).

checkpoint (trained once per training config) -> samples on disk (one folder per sampling
setting, one file per sample seed) -> evaluation -> a ledger record.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import socket
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from harness.cache import atomic_write_text
from harness.cache import cache_dir as default_cache_dir
from harness.config.trial import TrialConfig
from harness.data.registry import data_stamp, load_dataset, open_split
from harness.errors import unwritable
from harness.evaluation import METRICS, Evaluator, load_samples, sample_dir_name, save_samples
from harness.evaluation.samples import SAMPLES_FILE, verify_samples
from harness.generation.baselines import BASELINES
from harness.generation.sampling import Generated, build_sampler, generate, save_image_grid
from harness.run.ledger import PER_SEED, Ledger, TrialRecord
from harness.run.store import CheckpointStore, train_config_for
from models.checkpoint import model_from_checkpoint
from models.diagnostics import heldout_masked_ce


def sampling_settings(trial: TrialConfig) -> dict:
    """Every setting that changes the samples (besides the checkpoint and the seed)."""
    s = trial.sampler
    settings = {
        "sampler": s.name,
        "cfg_scale": s.cfg_scale,
        "n": trial.eval.num_samples,
        "given": s.condition_on,
        **s.settings(),
    }
    return {k: v for k, v in settings.items() if v is not None}


def trained_model(path: Path, device: str):
    """The network of a finished checkpoint, kept loaded in this process for the trials after
    it that share it (a long-lived Ray worker serves many); a file rewritten since (a training
    redone) is loaded afresh. The network is in eval mode and is only read."""
    stat = Path(path).stat()
    return _trained_model(str(path), stat.st_size, stat.st_mtime_ns, device)


@functools.lru_cache(maxsize=2)
def _trained_model(path: str, size: int, mtime_ns: int, device: str):
    return model_from_checkpoint(path, map_location=device)[0]


def _generate(trial: TrialConfig, store: CheckpointStore, seed: int, device: str) -> Generated:
    net = trained_model(store.checkpoint(trial.training_hash()), device)
    scheduler = train_config_for(trial).build_scheduler()
    sampler = build_sampler(trial.sampler.name, scheduler, **trial.sampler.options())
    given = trial.task().generation_inputs(trial, net, trial.eval.num_samples)
    result = generate(
        given.net,
        sampler,
        num_samples=trial.eval.num_samples,
        batch_size=trial.eval.batch_size,
        cfg_scale=trial.sampler.cfg_scale,
        seed=seed,
        device=device,
        x_init=given.x_init,
        conditions=given.conditions,
    )
    if given.captions is None:
        return result
    return dataclasses.replace(result, labels=given.labels, captions=given.captions)


def sample_folder(trial: TrialConfig, store: CheckpointStore, seed: int) -> Path:
    """``<store>/<training_hash>/samples/<settings>/seed_<seed>``: where one seed's samples live."""
    settings = sample_dir_name(sampling_settings(trial))
    return store.folder(trial.training_hash()) / "samples" / settings / f"seed_{seed}"


def check_samples(folder: Path, store: CheckpointStore) -> str | None:
    """None when the folder holds intact samples, else what is wrong; a damaged sample file is
    moved (with its folder) to the store's quarantine, so that it is drawn again."""
    problem = verify_samples(folder)
    if problem is not None and (folder / SAMPLES_FILE).exists():
        store.quarantine_samples(folder, problem)
    return problem


def damaged_samples(trial: TrialConfig, store: CheckpointStore) -> str | None:
    """What is wrong with the samples a finished trial scored (None: every seed is intact)."""
    found = (check_samples(sample_folder(trial, store, seed), store) for seed in trial.eval.sample_seeds)
    problems = [f"seed {seed}: {p}" for seed, p in zip(trial.eval.sample_seeds, found, strict=True) if p]
    return "; ".join(problems) or None


def sample_to_disk(trial: TrialConfig, store: CheckpointStore, seed: int, device: str = "cpu") -> Path:
    """Samples for one seed, written before they are scored; reused when already on disk and
    intact (a damaged file is quarantined and drawn again)."""
    h = trial.training_hash()
    folder = sample_folder(trial, store, seed)
    if check_samples(folder, store) is None:
        return folder
    # A baseline draws from the training tokens; a model's samples need only the tokenizer.
    data = (load_dataset if trial.sampler.is_baseline else open_split)(
        trial.data.name, "train", **trial.data.options
    )
    if trial.sampler.is_baseline:
        task = trial.task()
        heldout = load_dataset(trial.data.name, "heldout", **trial.data.options)
        allowed = task.allowed_tokens(trial.shape())
        result = BASELINES[trial.sampler.name](data, heldout, trial.eval.num_samples, seed, allowed=allowed)
        result = dataclasses.replace(result, tokens=task.baseline_tokens(trial, result.tokens))
    else:
        result = _generate(trial, store, seed, device)
    meta = {
        "sample_seed": seed,
        "nfe": result.nfe,
        "nfe_unbatched": result.nfe_unbatched,
        "cfg_mode": result.cfg_mode,
        "seconds_per_sample": result.seconds_per_sample,
        "training_hash": h,
        **sampling_settings(trial),
    }
    images = data.tokenizer.decode(result.tokens)
    save_samples(folder, result.tokens, images, result.labels, meta, captions=result.captions)
    return folder


def trial_evaluators(trial: TrialConfig, cache_dir: Path | None) -> list[tuple[str, int | None, Evaluator]]:
    """(metric-name prefix, samples scored per seed or None for all, Evaluator) for the trial's
    main protocol and each of ``eval.extra_protocols``; a metric the extractor cannot produce
    raises ValueError here, before anything is sampled."""

    data = (trial.data.name, json.dumps(trial.data.options, sort_keys=True))
    stamp = data_stamp(trial.data.name, **trial.data.options)  # a folder rewritten in place: read again

    def build(extractor: str | None, metrics: list[str], num_reference: int | None = None) -> Evaluator:
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()  # $UNMASK_CACHE now
        return _evaluator(*data, extractor, tuple(metrics), num_reference, folder, stamp)

    image_metrics = trial.task().feature_metrics(trial)
    out = [("", None, build(trial.eval.extractor, image_metrics))] if image_metrics else []
    for e in trial.eval.extra_protocols:
        out.append((f"{e.extractor}/", e.num_samples, build(e.extractor, e.metrics, e.num_reference)))
    return out


@functools.lru_cache(maxsize=8)
def _evaluator(
    dataset: str,
    options: str,
    extractor: str | None,
    metrics: tuple[str, ...],
    num_reference: int | None,
    cache_dir: Path,
    stamp: Any = None,
) -> Evaluator:
    """One Evaluator per protocol in this process: its extractor and reference statistics stay
    loaded for the trials after it (a long-lived Ray worker serves many)."""
    return Evaluator(
        dataset,
        extractor=extractor,
        metrics=list(metrics),
        cache_dir=cache_dir,
        num_reference=num_reference,
        data_options=json.loads(options),
    )


def evaluate_trial(
    trial: TrialConfig, folders: list[Path], cache_dir: Path | None
) -> tuple[dict, dict, dict]:
    """(metrics, intervals, protocols) over the trial's sample seeds, for every protocol."""
    sets = [load_samples(f) for f in folders]
    seeds = [int(s.meta["sample_seed"]) for s in sets]
    metrics, intervals, protocols = trial.task().score(trial, sets)
    for prefix, num, evaluator in trial_evaluators(trial, cache_dir):
        images = [s.images[:num] for s in sets]
        labels = [None if s.labels is None else s.labels[:num] for s in sets]  # caption agreement
        if len(sets) == 1:
            results = evaluator.evaluate(images[0], seeds[0], labels=labels[0])
        else:
            results = evaluator.evaluate_seeds(images, seeds, labels)
        for r in results:
            name = prefix + r.name
            metrics[name] = float(r.value)
            if r.ci_low is not None:
                intervals[name] = [float(r.ci_low), float(r.ci_high)]
            direction = "max" if METRICS[r.name].higher_is_better else "min"
            protocols[name] = {
                **r.protocol.to_dict(),
                "key": r.protocol.protocol_key(),
                "direction": direction,
            }
            if len(sets) > 1:  # the values behind the interval: paired comparisons across trials
                protocols[name][PER_SEED] = [float(v) for v in r.per_set]
    meta = sets[0].meta
    metrics.update(
        nfe=float(meta["nfe"]),
        nfe_unbatched=float(meta["nfe_unbatched"]),
        seconds_per_sample=sum(float(s.meta["seconds_per_sample"]) for s in sets) / len(sets),
    )
    # How guided steps ran (one batch of 2B or two forwards of B): the speed's protocol, and
    # beside every metric how its samples were drawn (not in its comparability key: the two modes
    # draw from the same distribution, as two seeds do). The NFE counts a guided step once either
    # way. Samples written before it was recorded lack it.
    modes = {s.meta.get("cfg_mode") for s in sets if s.meta.get("cfg_mode")}
    if modes:
        mode = "+".join(sorted(modes))
        for protocol in protocols.values():
            protocol["cfg_mode"] = mode
        protocols["nfe"] = {"cfg_mode": mode, "direction": "min"}
    return metrics, intervals, protocols


def run_trial(
    trial: TrialConfig,
    *,
    store_root: Path,
    study_dir: Path,
    cache_dir: Path | None = None,
    device: str = "cpu",
    progress: bool = False,
    host: str | None = None,
) -> TrialRecord:
    """Runs one trial end to end and writes its ledger record (finished or failed)."""
    started = time.perf_counter()
    store, ledger = CheckpointStore(store_root), Ledger(study_dir)
    base = {
        "trial_hash": trial.trial_hash(),
        "training_hash": trial.training_hash(),
        "config": trial.model_dump(mode="json"),
        "host": host or socket.gethostname(),
    }
    try:
        if not trial.sampler.is_baseline:
            store.ensure(trial, device=device, progress=progress)
        folders = [sample_to_disk(trial, store, seed, device) for seed in trial.eval.sample_seeds]
        metrics, intervals, protocols = evaluate_trial(trial, folders, cache_dir)
        if not trial.sampler.is_baseline:
            metrics["heldout_masked_ce"] = heldout_ce(trial, store, device)
        task = trial.task()
        shown = task.preview(trial, load_samples(folders[0]))  # (N, C, H, W), or clips (N, C, T, H, W)
        grid = save_image_grid(shown[: task.preview_count()], folders[0] / "grid.png")
        record = TrialRecord(
            **base,
            status="finished",
            metrics=metrics,
            intervals=intervals,
            protocols=protocols,
            training_curve=store.curve(trial.training_hash()),
            artifacts={"samples_png": str(grid), "samples_dir": str(folders[0].parent)},
            seconds=time.perf_counter() - started,
        )
    except Exception as err:  # a failed trial keeps its error and does not stop the study
        if unwritable(err):  # a full disk or read-only folder is not the trial's failure: the
            raise  # driver names the path (exit 5) and resume runs the trial again
        record = TrialRecord(
            **base,
            status="failed",
            error="".join(traceback.format_exception_only(err)).strip()
            + "\n"
            + traceback.format_exc(limit=-3),
            seconds=time.perf_counter() - started,
        )
    ledger.write(record)
    return ledger.get(record.trial_hash) or record


def heldout_ce(trial: TrialConfig, store: CheckpointStore, device: str) -> float:
    """Held-out masked CE of the checkpoint (nats per masked token), cached in the store."""
    path = store.folder(trial.training_hash()) / "heldout_ce.txt"
    if path.is_file():
        return float(path.read_text())
    net = trained_model(store.checkpoint(trial.training_hash()), device)
    heldout = load_dataset(trial.data.name, "heldout", **trial.data.options)
    value = heldout_masked_ce(
        net,
        heldout.tokens.to(device),
        _to(trial.task().training_conditions(net.config, heldout), device),
        train_config_for(trial).build_scheduler(),
        net.config.mask_id,
    )
    atomic_write_text(path, repr(value))  # trials sharing the checkpoint may read it at any moment
    return value


def _to(x: torch.Tensor | None, device: str) -> torch.Tensor | None:
    return None if x is None else x.to(device)


def set_threads(cpus: float) -> None:
    """CPU trials use as many torch threads as their cpu share (at least one)."""
    torch.set_num_threads(max(1, int(cpus)))
