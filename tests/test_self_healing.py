"""Self-healing store and ledger: nothing finished is lost, nothing damaged blocks a study.

A truncated ledger record, a truncated checkpoint, a deleted or corrupt sample file and a
corrupt cache file are each detected, named on stderr, moved to a quarantine folder and
recomputed; everything intact stays byte-identical. The study tests run a 1-checkpoint,
2-trial digits study once (module fixture) and damage a copy of its runs root per test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_runs_root, study_file

import run_study
from harness.cache import load_cached, save_torch
from harness.config.trial import TrialConfig, build_trial
from harness.evaluation import Evaluator
from harness.evaluation.domain import DIGITS_CNN, cache_path
from harness.evaluation.samples import checksum_file, save_samples, verify_samples
from harness.run import store as store_module
from harness.run.ledger import Ledger, TrialRecord
from harness.run.store import CheckpointStore
from harness.run.trial import run_trial, sample_folder
from harness.runner import execute, prepare
from reports.markdown import load_records

NAME = "healing"


def stamped_names(folder: Path) -> list[str]:
    """Names in a quarantine folder without their UTC timestamp (``<name>.<YYYYmmddTHHMMSS.ffffffZ>``)."""
    return sorted(p.name.rsplit(".", 2)[0] for p in folder.iterdir()) if folder.is_dir() else []


def truncate(path: Path) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return data[: len(data) // 2]


# ---- units: no study -----------------------------------------------------------------------------


def _record(trial_hash: str) -> TrialRecord:
    return TrialRecord(trial_hash, "c1", "finished", {"seed": 0}, metrics={"fid": 1.0})


@pytest.mark.parametrize(
    "text",
    ['{"trial_hash": "t1", "status": "fin', "[]", '{"trial_hash": "t1"}', "\xff\xfe", "other-trial"],
)
def test_a_damaged_ledger_record_is_quarantined_and_treated_as_absent(tmp_path, capsys, text) -> None:
    ledger = Ledger(tmp_path / "study")
    ledger.write(_record("t2"))
    kept = ledger.path("t2").read_bytes()
    if text == "other-trial":  # a valid record under another trial's name
        ledger.path("t1").write_text(_record("t9").to_json())
    else:
        ledger.path("t1").write_bytes(text.encode("latin-1"))
    assert [r.trial_hash for r in ledger.records()] == ["t2"]
    assert not ledger.path("t1").exists() and ledger.get("t1") is None
    assert stamped_names(tmp_path / "study" / "quarantine" / "ledger") == ["t1.json"]
    (warning,) = capsys.readouterr().err.splitlines()
    assert str(ledger.path("t1")) in warning and "not a ledger record" in warning
    ledger.write(_record("t1"))  # its trial runs again: a fresh record, the first attempt
    assert ledger.get("t1").attempts == 1 and ledger.path("t2").read_bytes() == kept


def test_the_markdown_report_skips_a_truncated_record_with_a_warning(tmp_path, capsys) -> None:
    ledger = Ledger(tmp_path)
    ledger.write(_record("t1"))
    ledger.write(_record("t2"))
    truncate(ledger.path("t2"))
    assert [r["trial_hash"] for r in load_records(tmp_path)] == ["t1"]
    assert str(ledger.path("t2")) in capsys.readouterr().err
    assert ledger.path("t2").exists()  # a report reads; it moves nothing


def test_sample_files_carry_a_checksum_that_finds_damage(tmp_path) -> None:
    tokens, images = torch.zeros(4, 6, dtype=torch.long), torch.rand(4, 1, 2, 3)
    file = save_samples(tmp_path, tokens, images, meta={"sample_seed": 0})
    assert verify_samples(tmp_path) is None and json.loads(checksum_file(file).read_text())["size"] > 0
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    file.write_bytes(bytes(data))
    assert "sha256" in verify_samples(tmp_path)
    truncate(file)
    assert "size" in verify_samples(tmp_path)
    save_samples(tmp_path, tokens, images)
    checksum_file(file).unlink()  # a file from before checksums: its zip CRCs are checked instead
    assert verify_samples(tmp_path) is None
    truncate(file)
    assert "unreadable" in verify_samples(tmp_path)
    file.unlink()
    assert "missing" in verify_samples(tmp_path)


def test_an_unloadable_cache_entry_is_quarantined_and_reported_absent(tmp_path, capsys) -> None:
    path = save_torch({"a": torch.ones(3)}, tmp_path / "reference" / "x.pt")
    assert load_cached(path, tmp_path, required=("a",))["a"].sum() == 3
    assert load_cached(path, tmp_path, required=("b",)) is None  # lacks a key it must have
    assert stamped_names(tmp_path / "quarantine" / "reference") == ["x.pt"]
    path.write_bytes(b"PK\x03\x04 not a torch file")
    assert load_cached(path, tmp_path) is None and not path.exists()
    assert stamped_names(tmp_path / "quarantine" / "reference") == ["x.pt", "x.pt"]
    assert capsys.readouterr().err.count(str(path)) == 2


TINY = {
    "train": {"steps": 3, "batch_size": 8, "warmup_steps": 0, "checkpoint_every": 0},
    "model": {"size": "tiny"},
    "sampler": {"num_steps": 2},
    "eval": {"num_samples": 20, "batch_size": 20, "metrics": ["fid"]},
}


def test_a_checkpoint_is_hashed_once_per_process_and_old_done_files_stay_valid(tmp_path, monkeypatch) -> None:
    trial = build_trial(TINY)
    store, h = CheckpointStore(tmp_path), trial.training_hash()
    store.ensure(trial)
    done = json.loads((store.folder(h) / "done.json").read_text())
    assert done["checkpoint"]["size"] == store.checkpoint(h).stat().st_size
    hashed = []
    monkeypatch.setattr(store_module, "sha256_file", lambda p: hashed.append(p) or pytest.fail("rehashed"))
    monkeypatch.setattr(store_module, "train_into", lambda *a, **k: pytest.fail("trained again"))
    for _ in range(3):
        assert store.ensure(trial) == store.checkpoint(h)
    (store.folder(h) / "done.json").write_text(json.dumps({"seconds": done["seconds"]}))  # no checksum
    assert store.verify(h) is None and store.ensure(trial) == store.checkpoint(h)
    assert hashed == [] and not (tmp_path / "quarantine").exists()


# ---- a finished study, damaged -------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, warm_eval_cache, ray_session) -> dict:
    """A digits study with one checkpoint and two trials, run to the end."""
    tmp = tmp_path_factory.mktemp("healing")
    root = make_runs_root(tmp / "runs", warm_eval_cache)
    study = study_file(tmp, NAME, space={"sampler.num_steps": [2, 3]}, concurrency=1)
    records = execute(prepare(study, root))
    assert len(records) == 2 and all(r.status == "finished" for r in records)
    return {"root": root, "study": study, "cache": warm_eval_cache}


@pytest.fixture
def damaged(finished_study, tmp_path) -> dict:
    """A copy of the finished study's runs root, its plan, ledger and store, to damage."""
    root = tmp_path / "runs"
    shutil.copytree(finished_study["root"], root)
    plan = prepare(finished_study["study"], root).plan
    assert plan.pending_trials == []
    trials = sorted(plan.trials, key=lambda t: t.sampler.num_steps)
    return {**finished_study, "root": root, "trials": trials}


def ledger_of(case: dict) -> Ledger:
    return Ledger(case["root"] / NAME)


def store_of(case: dict) -> CheckpointStore:
    return CheckpointStore(case["root"] / "checkpoints")


def resume(case: dict) -> list[TrialRecord]:
    records = execute(prepare(case["study"], case["root"]))
    assert len(records) == 2 and all(r.status == "finished" and r.attempts == 1 for r in records)
    assert sorted(r.trial_hash for r in records) == sorted(t.trial_hash() for t in case["trials"])
    return records


def test_a_truncated_ledger_record_no_longer_blocks_report_or_resume(damaged, capsys) -> None:
    ledger = ledger_of(damaged)
    broken, intact = (t.trial_hash() for t in damaged["trials"])
    kept = ledger.path(intact).read_bytes()
    truncated = truncate(ledger.path(broken))
    argv = ["report", str(damaged["study"]), "--runs-root", str(damaged["root"]), "--from-ledger"]
    assert run_study.main(argv) == 0
    assert str(ledger.path(broken)) in capsys.readouterr().err
    assert not ledger.quarantine_folder.exists()  # report reads; the driver repairs, under its lock
    resume(damaged)  # the trial runs once more; the intact record is not touched
    (moved,) = ledger.quarantine_folder.iterdir()
    assert moved.name.startswith(f"{broken}.json.") and moved.read_bytes() == truncated
    assert ledger.get(broken).status == "finished" and ledger.path(intact).read_bytes() == kept


def test_a_truncated_checkpoint_is_quarantined_and_trained_again_once(damaged, capsys) -> None:
    store, trial = store_of(damaged), damaged["trials"][0]
    h = trial.training_hash()
    truncated = truncate(store.checkpoint(h))
    other: TrialConfig = trial.model_copy(
        update={"sampler": trial.sampler.model_copy(update={"num_steps": 4})}
    )
    assert other.training_hash() == h
    record = run_trial(
        other, store_root=store.root, study_dir=damaged["root"] / NAME, cache_dir=damaged["cache"]
    )
    assert record.status == "finished", record.error
    (moved,) = (store.root / "quarantine").iterdir()
    assert moved.name.startswith(f"{h}.") and (moved / "checkpoint.pt").read_bytes() == truncated
    assert {"checkpoint.pt", "done.json", "curve.jsonl", "heldout_ce.txt"} == {
        p.name for p in moved.iterdir()
    }
    assert str(store.folder(h)) in capsys.readouterr().err
    assert store.verify(h) is None
    steps = [step for step, _ in store.curve(h)]
    raw = (store.folder(h) / "curve.jsonl").read_text().splitlines()
    assert len(raw) == len(steps) and steps[-1] == trial.train.steps  # trained once, from the start


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_resume_reruns_only_the_trial_whose_samples_are_gone_or_corrupt(damaged, damage, capsys) -> None:
    ledger, store = ledger_of(damaged), store_of(damaged)
    broken, intact = damaged["trials"]
    folder = sample_folder(broken, store, broken.eval.sample_seeds[0])
    untouched = sample_folder(intact, store, intact.eval.sample_seeds[0]) / "samples.npz"
    kept = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (ledger.path(intact.trial_hash()), untouched)}
    old_record = ledger.path(broken.trial_hash()).read_bytes()
    if damage == "delete":
        (folder / "samples.npz").unlink()
    else:
        data = bytearray((folder / "samples.npz").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / "samples.npz").write_bytes(bytes(data))
    resume(damaged)
    err = capsys.readouterr().err
    assert str(ledger.path(broken.trial_hash())) in err
    (moved,) = ledger.quarantine_folder.iterdir()  # the old record: the ledger holds one per trial
    assert moved.read_bytes() == old_record
    assert verify_samples(folder) is None and ledger.get(broken.trial_hash()).status == "finished"
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept} == kept  # the other trial: untouched
    quarantined = store.root / "quarantine" / "samples" / folder.parent.relative_to(store.root)
    if damage == "corrupt":
        assert stamped_names(quarantined) == [folder.name] and str(folder) in err
    else:
        assert not quarantined.exists()  # nothing to keep: the file was gone


def test_a_corrupt_cache_file_is_recomputed(finished_study, tmp_path, capsys) -> None:
    source, cache = finished_study["cache"], tmp_path / "cache"
    key = Evaluator("digits", metrics=["fid"], cache_dir=source).reference_stats.key
    reference = Path("reference") / f"digits-cnn-{key}.pt"
    extractor = cache_path(DIGITS_CNN, *DIGITS_CNN.load_split("train"), source).relative_to(source)
    for name in (reference, extractor):
        (cache / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, cache / name)
    truncate(cache / reference)
    stats = Evaluator("digits", metrics=["fid"], cache_dir=cache).reference_stats
    assert stamped_names(cache / "quarantine" / "reference") == [reference.name]
    assert load_cached(cache / reference, cache)["features"].shape == stats.features.shape
    (cache / extractor).write_bytes(b"garbage")
    Evaluator("digits", metrics=["fid"], cache_dir=cache)  # trains the classifier again
    assert stamped_names(cache / "quarantine" / "extractors") == [extractor.name]
    assert load_cached(cache / extractor, cache) is not None
    err = capsys.readouterr().err
    assert str(cache / reference) in err and str(cache / extractor) in err


def test_validate_counts_a_damaged_record_as_pending_and_moves_nothing(damaged, capsys) -> None:
    ledger = ledger_of(damaged)
    broken = damaged["trials"][0].trial_hash()
    truncated = truncate(ledger.path(broken))
    argv = ["validate", str(damaged["study"]), "--runs-root", str(damaged["root"])]
    assert run_study.main(argv) == 0
    assert ledger.path(broken).read_bytes() == truncated and not ledger.quarantine_folder.exists()
    plan = prepare(damaged["study"], damaged["root"]).plan
    assert [t.trial_hash() for t in plan.pending_trials] == [broken]


def test_resume_of_a_finished_study_checks_its_checkpoint_and_retrains_a_damaged_one(damaged, capsys) -> None:
    store, ledger = store_of(damaged), ledger_of(damaged)
    h = damaged["trials"][0].training_hash()
    records = {t.trial_hash(): ledger.path(t.trial_hash()).read_bytes() for t in damaged["trials"]}
    truncated = truncate(store.checkpoint(h))
    assert prepare(damaged["study"], damaged["root"]).plan.pending_trainings == []  # validate: no reads
    resume(damaged)
    (moved,) = (store.root / "quarantine").iterdir()
    assert moved.name.startswith(f"{h}.") and (moved / "checkpoint.pt").read_bytes() == truncated
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if str(store.folder(h)) in line]
    assert "does not match" in warning and "runs again" in warning
    assert store.verify(h) is None  # trained again, intact
    assert {t: ledger.path(t).read_bytes() for t in records} == records  # the finished trials stand


def test_heal_leaves_an_intact_or_unfinished_training_alone(damaged) -> None:
    store = store_of(damaged)
    h = damaged["trials"][0].training_hash()
    kept = store.checkpoint(h).read_bytes()
    assert store.heal(h) is None and store.checkpoint(h).read_bytes() == kept
    assert store.heal("0" * 16) is None and not (store.root / "quarantine").exists()
