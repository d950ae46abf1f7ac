"""Runs a study: validate, plan, dispatch through Ray Tune, record every trial in the ledger."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from harness.cache import atomic_write_text, cache_dir, probe_writable
from harness.config.study import StudySpec, load_study
from harness.config.trial import ConfigError, TrialConfig
from harness.data.registry import load_dataset, open_split, real_images
from harness.errors import UserError
from harness.evaluation import FID, Evaluator
from harness.ray.dispatch import RayDispatcher, TrialContext
from harness.run.extend import STUDY_FILE, write_study
from harness.run.ledger import Ledger, TrialRecord
from harness.run.plan import Plan, make_plan
from harness.run.store import CheckpointStore
from harness.run.trial import damaged_samples, trial_evaluators


@dataclass(frozen=True)
class StudyRun:
    spec: StudySpec
    study_dir: Path
    store: CheckpointStore
    cache_dir: Path
    plan: Plan


def study_path(target: str | Path, runs_root: Path) -> Path:
    """A study file, a study folder, or the name of a study under runs_root."""
    target = Path(target)
    for candidate in (target, target / STUDY_FILE, runs_root / target / STUDY_FILE):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no study file at {str(target)!r} (nor a study folder with {STUDY_FILE} under {runs_root})"
    )


def prepare(target: str | Path, runs_root: Path) -> StudyRun:
    """Validates the study and plans its trials; writes nothing."""
    spec = load_study(study_path(target, runs_root))
    study_dir = runs_root / spec.name
    store = CheckpointStore(runs_root / "checkpoints")
    return StudyRun(spec, study_dir, store, cache_dir().resolve(), make_plan(spec, study_dir, store))


def check_resources(spec: StudySpec, available: dict[str, float]) -> None:
    """A request larger than the cluster would wait forever: refuse it up front. A data-parallel
    training (resources.workers > 1) needs its workers' share at once."""
    workers = spec.resources.workers
    for name, asked in (("cpu", spec.resources.cpu), ("gpu", spec.resources.gpu)):
        have = available.get(name.upper(), 0.0)
        if asked > have:
            raise ConfigError(f"resources.{name} = {asked} but the cluster has {have} {name.upper()}(s)")
        if workers > 1 and asked * workers > have:
            raise ConfigError(
                f"resources.workers = {workers} x resources.{name} = {asked} needs {asked * workers:g} "
                f"{name.upper()}(s) at once; the cluster has {have}"
            )


def missing_files(trials: list[TrialConfig]) -> list[str]:
    """What the trials would read and this machine lacks, one line each: each extractor's weights
    file (a study names none: it is found where the extractor looks) and each dataset's files
    (validation reads none), checked before a study starts here."""
    from harness.data.registry import get_dataset
    from harness.evaluation.extractors import default_extractor_name, missing_weights

    names, data = set(), {}
    for trial in trials:
        scored = bool(trial.task().feature_metrics(trial))
        if scored:
            names.add(default_extractor_name(trial.data.name, trial.eval.extractor))
        names |= {extra.extractor for extra in trial.eval.extra_protocols}
        key = (trial.data.name, json.dumps(trial.data.options, sort_keys=True))
        data[key] = data.get(key, False) or scored or bool(trial.eval.extra_protocols)
    found = {name: missing_weights(name) for name in sorted(names)}
    lines = [f"eval extractor {name!r}: {why}" for name, why in found.items() if why]
    for (name, options), needs_reference in sorted(data.items()):
        check = get_dataset(name).check_files
        try:
            if check is not None:
                check(needs_reference, **json.loads(options))
        except UserError as err:
            lines.append(f"data {name!r}: {err}")
    return lines


def local_resources() -> dict[str, float]:
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def save_study_file(run: StudyRun) -> None:
    """The study as run, into its folder (``write_study``): a later ``resume NAME`` runs it."""
    write_study(run.spec, run.study_dir)


def warm_evaluators(trials: list, cache_dir: Path) -> None:
    """Builds each evaluator the trials need (extractor and reference statistics) once, in the
    driver, so that parallel trials do not each train the same domain classifier, and so that a
    metric an extractor cannot produce is refused before anything runs."""
    seen = set()
    for trial in trials:
        key = (trial.data.name, json.dumps(trial.eval.model_dump(mode="json"), sort_keys=True))
        if key not in seen:
            seen.add(key)
            for _, _, evaluator in trial_evaluators(trial, cache_dir):
                _ = evaluator.reference_stats


DATASETS_FILE = "datasets.json"
SUMMARY_KEYS = ("heldout_mse", "heldout_codes_used", "heldout_perplexity", "train_seconds")


def warm_datasets(trials: list, study_dir: Path, cache_dir: Path) -> list[dict]:
    """Loads each distinct data config once in the driver (a learned tokenizer is trained and
    cached here, not by parallel workers at once) and writes ``<study>/datasets.json``: sizes,
    grid, vocabulary and, for a learned tokenizer, its held-out reconstruction MSE, codebook use
    and the FID of held-out reconstructions against the real training images (the floor no
    token model can beat)."""
    path = study_dir / DATASETS_FILE
    previous = json.loads(path.read_text()) if path.is_file() else []
    known = {json.dumps({"name": d["name"], "options": d["options"]}, sort_keys=True): d for d in previous}
    summaries: dict[str, dict] = {}
    for trial in trials:
        key = json.dumps(trial.data.model_dump(mode="json"), sort_keys=True)
        if key in summaries:
            continue
        train = open_split(trial.data.name, "train", **trial.data.options)  # trains a tokenizer once
        if key in known:  # a resumed study: its floors are measured already
            summaries[key] = known[key]
            continue
        heldout = load_dataset(trial.data.name, "heldout", **trial.data.options)
        summary = {
            **trial.data.model_dump(mode="json"),
            "num_train": len(train),
            "num_heldout": len(heldout),
            "grid": list(train.grid),
            "vocab_size": train.vocab_size,
            "num_classes": train.num_classes,
        }
        meta = getattr(train.tokenizer, "metadata", None)
        if meta is not None:  # a learned tokenizer: how much of the data it keeps
            summary["tokenizer"] = {k: meta[k] for k in SUMMARY_KEYS if k in meta}
            evaluator = Evaluator(
                trial.data.name, metrics=[FID], cache_dir=cache_dir, data_options=trial.data.options
            )
            recon = heldout.images()
            real = real_images(trial.data.name, "heldout", **trial.data.options)[0]
            for name, images in (("reconstruction_fid", recon), ("heldout_real_fid", real)):
                (result,) = evaluator.evaluate(images, 0)
                summary["tokenizer"][name] = float(result.value)
            summary["tokenizer"]["fid_protocol"] = result.protocol.protocol_key()
        summaries[key] = summary
    out = list(summaries.values())
    atomic_write_text(path, json.dumps(out, indent=2, sort_keys=True))
    return out


def verify_finished_work(run: StudyRun) -> Plan:
    """The plan once what the study finished is checked, by the driver under the study's lock
    (so each repair is announced on its stderr): a damaged ledger record, a finished trial whose
    samples are gone or damaged, and a finished checkpoint that does not match its checksum are
    moved to their quarantine, and their trials or trainings run again (the ledger never holds
    two records of one trial). Reads every sample file and checkpoint of the study."""
    ledger, plan = Ledger(run.study_dir), run.plan
    finished = ledger.finished()  # heals: a damaged record goes to the quarantine
    pending = {t.trial_hash() for t in plan.trials if t.trial_hash() not in finished}
    for trial in plan.trials:
        if trial.trial_hash() not in pending and (problem := damaged_samples(trial, run.store)):
            ledger.quarantine(trial.trial_hash(), f"finished, but its samples are not intact ({problem})")
            pending.add(trial.trial_hash())
    trainings = {t.training_hash() for t in plan.pending_trainings}
    for training in plan.trainings:
        if training.training_hash() not in trainings and run.store.heal(training.training_hash()):
            trainings.add(training.training_hash())
    return replace(
        plan,
        pending_trials=[t for t in plan.trials if t.trial_hash() in pending],
        pending_trainings=[t for t in plan.trainings if t.training_hash() in trainings],
    )


def execute(
    run: StudyRun,
    *,
    address: str | None = None,
    on_complete=None,
    verbose: bool = False,
    num_cpus: int | None = None,
    dispatcher: RayDispatcher | None = None,
    on_start: Callable[[], None] | None = None,
) -> list[TrialRecord]:
    """Runs every pending training and trial; returns all ledger records of the study's trials.

    ``dispatcher``: one made (and started) by :func:`dispatcher_for`, closed by the caller; by
    default one is made here, and closed before this returns. ``on_start``: called once, when the
    first job's worker is up (its start and imports, ~2-3 s, run meanwhile) and before any job
    runs; what it raises ends the run before any training or trial has run."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        check_resources(run.spec, local_resources())
    if dispatcher is not None:
        return _execute(run, dispatcher, address, on_complete, on_start)
    dispatcher = dispatcher_for(run, address=address, num_cpus=num_cpus, verbose=verbose)
    try:
        return _execute(run, dispatcher, address, on_complete, on_start)
    finally:
        dispatcher.close()


def dispatcher_for(
    run: StudyRun, *, address: str | None = None, num_cpus: int | None = None, verbose: bool = False
) -> RayDispatcher:
    """The study's dispatcher, its Ray already starting (in the background) when the plan has
    work for it, so that Ray comes up while the driver sets the study up. Close it when done."""
    dispatcher = RayDispatcher(
        address=address, num_cpus=num_cpus, verbose=verbose, ray_train=run.spec.resources.workers > 1
    )
    if _needs_ray(run.spec, run.plan):
        dispatcher.start()
    return dispatcher


def _needs_ray(spec: StudySpec, plan: Plan) -> bool:
    return bool(plan.pending_trials or plan.pending_trainings or spec.search.algorithm != "grid")


def _execute(
    run: StudyRun, dispatcher: RayDispatcher, address: str | None, on_complete, on_start
) -> list[TrialRecord]:
    run.study_dir.mkdir(parents=True, exist_ok=True)
    save_study_file(run)
    ctx = TrialContext(
        str(run.store.root.resolve()),
        str(run.study_dir.resolve()),
        str(run.cache_dir.resolve()),
        run.spec.resources.cpu,
        run.spec.resources.gpu,
    )
    plan = verify_finished_work(run)
    warm_datasets(plan.trials, run.study_dir, run.cache_dir)
    warm_evaluators(plan.pending_trials, run.cache_dir)
    if _needs_ray(run.spec, plan):
        try:
            with dispatcher as ray:
                if address:
                    check_resources(run.spec, ray.cluster_resources())
                if run.spec.search.algorithm == "grid":
                    ray.run_grid(
                        run.spec, plan.pending_trainings, plan.pending_trials, ctx, on_complete, on_start
                    )
                else:
                    ray.run_search(run.spec, ctx, on_complete, on_start)
        except Exception:
            check_writable(run)  # a full disk under Ray's own error: the disk is what to report
            raise
    wanted = {t.trial_hash() for t in plan.trials}
    records = [
        r
        for r in Ledger(run.study_dir).records()
        if r.trial_hash in wanted or run.spec.search.algorithm != "grid"
    ]
    if len({r.trial_hash for r in records} & wanted) < len(wanted):
        check_writable(run)  # a trial whose record could not be written
    return records


def check_writable(run: StudyRun) -> None:
    """Raises the OSError of the first of the study's folder, the checkpoint store and the cache
    that cannot take a small write (disk full, read-only); returns when all can."""
    for folder in (run.study_dir, run.store.root, run.cache_dir):
        probe_writable(folder)
