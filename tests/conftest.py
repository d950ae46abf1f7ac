"""Shared test setup: Ray's environment, one evaluator cache per session, one Ray per session.

The Ray variables must be in the environment before anything imports Ray (see
shared/ENVIRONMENT.md), so they are set when pytest imports this file. Helpers for the harness
tests (study files, runs roots, subprocesses whose Ray processes are tracked and ended) live
here as fixtures so that test files do not import each other.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

RAY_TEST_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}
for _key, _value in RAY_TEST_ENV.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run_study.py is a script at the root, not a package module
    sys.path.insert(0, str(REPO))
BASE_YAML = REPO / "search_spaces" / "small.yaml"  # the CPU-scale base of the embedded studies
CACHE_ENV = "UNMASK_CACHE"
MARKER_ENV = "UNMASK_TEST_PROCESS_TAG"  # carried by every process a tracked subprocess starts

# Small enough that a training takes seconds and a trial about two seconds on two cores.
TINY_OVERRIDES: dict[str, Any] = {
    "train.steps": 20,
    "train.warmup_steps": 5,
    "train.checkpoint_every": 0,
    "eval.num_samples": 60,
    "eval.batch_size": 60,
    "sampler.num_steps": 2,
}


@pytest.fixture(scope="session", autouse=True)
def session_eval_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One evaluator cache for the session (the digits classifier trains once), unless one is set.

    The path is the one tests/test_evaluation.py and tests/test_eval_video.py use for their own
    per-test ``UNMASK_CACHE``, so every file shares the same trained classifiers.
    """
    previous = os.environ.get(CACHE_ENV)
    if previous:
        yield Path(previous)
        return
    path = tmp_path_factory.getbasetemp() / "unmask-eval-cache"
    path.mkdir(parents=True, exist_ok=True)
    os.environ[CACHE_ENV] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(CACHE_ENV, None)


@pytest.fixture(scope="session")
def warm_eval_cache(session_eval_cache: Path) -> Path:
    """The session cache with the digits classifier and reference statistics in it, built here once.

    Without it the first trials of a study would each train the classifier, in parallel.
    """
    from harness.evaluation import Evaluator

    Evaluator("digits", metrics=["fid"], cache_dir=session_eval_cache).reference_stats  # noqa: B018
    return session_eval_cache


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """One local Ray for every in-process study of the session (the harness reuses it)."""
    import ray

    if ray.is_initialized():  # someone already started one in this process: use it, leave it
        yield ray
        return
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def runs_root(tmp_path: Path, session_eval_cache: Path) -> Path:
    """A fresh runs root; studies use the session's cache ($UNMASK_CACHE, set above)."""
    return make_runs_root(tmp_path / "runs", session_eval_cache)


def make_runs_root(path: Path, cache: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.environ[CACHE_ENV] = str(cache)  # already the session's value unless a test changed it
    return path


@pytest.fixture
def write_study(tmp_path: Path) -> Callable[..., Path]:
    """write_study(name, **fields) -> the path of a study YAML whose base is search_spaces/small.yaml."""
    return lambda name, **fields: study_file(tmp_path / "studies", name, **fields)


def study_file(folder: Path, name: str, **fields: Any) -> Path:
    fields.setdefault("base", str(BASE_YAML))
    fields["overrides"] = {**TINY_OVERRIDES, **fields.get("overrides", {})}
    fields.setdefault("resources", {"cpu": 1})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **fields}, sort_keys=False))
    return path


# ---- subprocesses that start Ray: find and end everything they leave behind ----------------


def subprocess_env(tag: str) -> dict[str, str]:
    """The test's environment (PYTHONPATH as it is) with the Ray variables and a process tag."""
    return {**os.environ, **RAY_TEST_ENV, MARKER_ENV: tag}


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment carries ``tag`` (Ray's daemons and workers inherit it)."""
    needle = f"{MARKER_ENV}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ and state != b"Z":
            found.append(int(entry))
    return found


def wait_untagged(tag: str, timeout: float) -> list[str]:
    """Polls until no process carries ``tag``; returns 'pid name' of those still alive at the timeout."""
    deadline = time.monotonic() + timeout
    while (pids := tagged_pids(tag)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [f"{pid} {process_name(pid)}" for pid in pids]


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"


def kill_tagged(tag: str, timeout: float = 30.0) -> list[str]:
    """SIGKILL every process carrying ``tag`` until none is left; returns 'pid command' of each."""
    killed: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while pids := tagged_pids(tag):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes tagged {tag} survived SIGKILL: {pids}")
        for pid in pids:
            name = process_name(pid)
            try:
                os.kill(pid, signal.SIGKILL)
                killed.setdefault(pid, name)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    return [f"{pid} {name}" for pid, name in sorted(killed.items())]


@pytest.fixture
def process_tag() -> Iterator[str]:
    """A tag for the subprocesses of one test; whatever still carries it at teardown is killed."""
    tag = uuid.uuid4().hex
    yield tag
    kill_tagged(tag)


PYTHON = sys.executable


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one thread for the test (a trial's speed-dependent choices, steady timings)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
