"""The fault scenarios that strike what the harness stores or computes (tests/reliability/faults.py
runs them): a damaged file of each stored kind before a resume, a disk that fills mid-study, and a
training that diverges.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from conftest import kill_tagged
from fault_checks import Tally, audit, compare, expect_exit, finished_cleanly
from fault_rig import SkipScenario, Study, Workspace, record_status

# ---- 2. a damaged file of each stored kind ----------------------------------------------------


@dataclass(frozen=True)
class Damage:
    """What a corruption did: the path the resume must name, the finished files it may replace,
    and how many trainings must have completed in the end (2: the damaged one, redone once)."""

    named: Path
    exempt: frozenset[Path]
    quarantined: tuple[Path, str]  # (a folder, a glob under it) that must match after the resume
    trainings: int = 1


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damage_record(ws: Workspace, study: Study, victim: str) -> Damage:
    truncate(study.record(victim))
    moved = (study.dir / "quarantine" / "ledger", f"{victim}.json.*")
    return Damage(study.record(victim), frozenset({study.record(victim)}), moved)


def _damage_samples(ws: Workspace, study: Study, victim: str) -> Damage:
    record = json.loads(study.record(victim).read_text())
    folder = Path(record["artifacts"]["samples_dir"]) / "seed_0"
    data = bytearray((folder / "samples.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    (folder / "samples.npz").write_bytes(bytes(data))
    moved = (study.store / "quarantine" / "samples" / study.training_hash, "samples/*/seed_0.*")
    return Damage(folder, frozenset({study.record(victim)}), moved)


def _damage_checkpoint(ws: Workspace, study: Study, victim: str) -> Damage:
    """A truncated checkpoint, read when a trial needs it: the victim's record is removed too."""
    truncate(study.training / "checkpoint.pt")
    study.record(victim).unlink()
    outputs = {study.training / n for n in ("done.json", "checkpoint.pt", "curve.jsonl")}
    return Damage(
        study.training,
        frozenset({study.record(victim), *outputs}),
        (study.store / "quarantine", f"{study.training_hash}.*/checkpoint.pt"),
        trainings=2,
    )


def _damage_finished_checkpoint(ws: Workspace, study: Study, victim: str) -> Damage:
    """A truncated checkpoint of a finished study: no trial needs it, resume checks it all the same."""
    truncate(study.training / "checkpoint.pt")
    outputs = {study.training / n for n in ("done.json", "checkpoint.pt", "curve.jsonl")}
    return Damage(
        study.training,
        frozenset(outputs),
        (study.store / "quarantine", f"{study.training_hash}.*/checkpoint.pt"),
        trainings=2,
    )


def _damage_cache(ws: Workspace, study: Study, victim: str) -> Damage:
    """Truncated reference statistics, read when a trial is scored: the victim's record is removed."""
    cache = ws.private_cache()
    (entry,) = sorted(cache.glob("reference/digits-cnn-*.pt"))
    truncate(entry)
    study.record(victim).unlink()
    return Damage(entry, frozenset({study.record(victim)}), (cache / "quarantine" / "reference", "*"))


DAMAGES = {
    "ledger record": _damage_record,
    "samples file": _damage_samples,
    "checkpoint": _damage_checkpoint,
    "checkpoint of a finished study": _damage_finished_checkpoint,
    "cache entry": _damage_cache,
}


def corrupt_and_resume(ws: Workspace, kind: str) -> Tally:
    tally = Tally()
    root, path = ws.folder / "runs", ws.study(f"corrupt-{kind.replace(' ', '-')}")
    study = Study.plan(path, root)
    if not expect_exit(tally, ws.cli("run", path, root), 0, "the first run"):
        return tally
    kept = study.finished_files()
    damage = DAMAGES[kind](ws, study, study.trial_hashes[0])
    resumed = ws.cli("resume", study.name, root)
    finished_cleanly(tally, resumed, study)
    compare(tally, kept, damage.exempt)
    audit(tally, study, trainings=damage.trainings)
    tally.expect(
        str(damage.named) in resumed.stderr,
        f"the resume's stderr does not name {damage.named}{resumed.tail()}",
    )
    folder, pattern = damage.quarantined
    tally.expect(any(folder.glob(pattern)), f"nothing quarantined at {folder / pattern}")
    return tally


# ---- 4. a full disk ---------------------------------------------------------------------------


def mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        raise SkipScenario(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")


def unmount(folder: Path) -> None:
    if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(folder)], check=True)  # a file still open: detach it


def fill(folder: Path) -> Path:
    """Writes ``folder/filler`` until the filesystem has no block left; returns it."""
    path = folder / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (1 << 20, 4096, 1):
            block = b"\0" * chunk
            try:
                while True:
                    os.write(fd, block)
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return path


def disk_full(ws: Workspace) -> Tally:
    """The disk fills once the first trial is recorded: exit 5 naming a path, nothing finished
    damaged; once space is freed, resume finishes the study."""
    disk = ws.folder / "disk"
    mount_tmpfs(disk, "64m")
    try:
        return _disk_full(ws, disk)
    finally:
        kill_tagged(ws.tag)
        unmount(disk)


def _disk_full(ws: Workspace, disk: Path) -> Tally:
    tally = Tally()
    root, path = disk / "runs", ws.study("disk-full")
    study = Study.plan(path, root)
    driver = ws.start("run", path, root)
    driver.wait_for(lambda: bool(study.records()), "the first ledger record")
    filler = fill(disk)
    driver.finish()
    expect_exit(tally, driver, 5, "the driver on a full disk")
    error = next((line for line in driver.stderr.splitlines() if line.startswith("error: ")), "")
    tally.expect(
        error.startswith(f"error: {root.resolve()}")
        and "(ENOSPC)" in error
        and "Traceback" not in driver.stderr,
        f"not one error naming a path under the runs root and ENOSPC{driver.tail()}",
    )
    kept = study.finished_files()
    broken = [p for p in study.records() if record_status(p) is None]
    tally.expect(not broken, f"records damaged by the full disk: {broken}")
    tally.expect(bool(kept), "no finished record survived the full disk")
    filler.unlink()
    resumed = ws.cli("resume", study.name, root)
    finished_cleanly(tally, resumed, study)
    compare(tally, kept)
    audit(tally, study)
    return tally


# ---- 5. a training that diverges ----------------------------------------------------------------


def nan_training(ws: Workspace) -> Tally:
    """lr = 1e30: the gradient norm overflows at step 2. Every trial is failed "diverged", nothing
    non-finite is recorded, the checkpoint is never done, the study exits 3."""
    tally, root = Tally(), ws.folder / "runs"
    path = ws.study("diverged", overrides={"train.lr": 1e30}, space={"sampler.num_steps": [2, 3]})
    study = Study.plan(path, root)
    driver = ws.cli("run", path, root)
    expect_exit(tally, driver, 3, "the diverged study")
    total = len(study.trial_hashes)
    named = all(str(study.record(h)) in driver.stderr for h in study.trial_hashes)
    tally.expect(f"{total} of {total} trials failed" in driver.stderr and named, f"stderr:{driver.tail()}")
    for record in study.records():
        error = json.loads(record.read_text()).get("error") or ""
        tally.expect("training diverged at step" in error, f"{record}: error {error[:300]!r}")
    audit(tally, study, status="failed", trainings=0)
    return tally
