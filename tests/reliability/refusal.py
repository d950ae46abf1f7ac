"""Run one bad-input case of ``run_study.py`` and judge its refusal.

The contract (run_study.py's docstring): bad input gets one clear ``error:`` on stderr that names
the field, value or path, exit code 2, and nothing is written before it (no runs root, no cache
entry, no output file). A case runs in this process (``run_study.main``: seconds saved per case on
the torch import) or, where a hang or a memory blow-up must be contained, as the real CLI in a
subprocess under a wall-clock limit and an address-space limit (RLIMIT_AS).
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from corpus_kit import REPO, Case

RUN_STUDY = REPO / "run_study.py"
SUBPROCESS_TIME_LIMIT = 120.0  # seconds: starting the CLI (torch, Ray, MLflow) takes 10-25 s on 2 busy cores
MEMORY_LIMIT = 6 << 30  # bytes of address space for a subprocess case: torch imports in ~3 GB
TAG_ENV = "UNMASK_BAD_INPUT_CASE"  # marks every process a subprocess case starts
CLEARED_ENV = ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")  # a case must not reach a real store or cluster
MAX_MESSAGE = 4000  # characters: a refusal names the culprit, it never echoes an unbounded input
if str(REPO) not in sys.path:  # run_study.py is a script at the root, not a package module
    sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class Outcome:
    code: int | None  # None: killed at the time limit
    stderr: str
    seconds: float


class CaseTimeoutError(Exception):
    """An in-process case ran past its time limit."""


def substitute(text: str, tmp: Path) -> str:
    return text.replace("@TMP@", str(tmp)).replace("@REPO@", str(REPO))


def prepare_case(case: Case, tmp: Path) -> list[str]:
    """Writes the case's files under ``tmp``; returns its argv with @TMP@ / @REPO@ filled in."""
    for relative, content in case.files.items():
        path = tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(substitute(content, tmp))
    return [substitute(arg, tmp) for arg in case.argv]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every path under ``folder``: what a refusal must leave as it was."""
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


@contextlib.contextmanager
def _isolated(tmp: Path) -> Iterator[None]:
    """cwd = tmp, $UNMASK_CACHE = tmp/cache, no tracking URI or Ray address; all restored after."""
    saved = {key: os.environ.get(key) for key in (*CLEARED_ENV, "UNMASK_CACHE")}
    cwd = Path.cwd()
    for key in CLEARED_ENV:
        os.environ.pop(key, None)
    os.environ["UNMASK_CACHE"] = str(tmp / "cache")
    os.chdir(tmp)
    try:
        yield
    finally:
        os.chdir(cwd)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _alarm(signum: int, frame: object) -> None:
    raise CaseTimeoutError


def run_in_process(argv: list[str], tmp: Path, time_limit: float) -> Outcome:
    """``run_study.main(argv)`` as the CLI would end: its return code, SystemExit's code (argparse),
    or exit 1 with the traceback on stderr for any other exception. SIGALRM bounds its time."""
    import run_study

    err = io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    start = time.perf_counter()
    try:
        with _isolated(tmp), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code: int | None = run_study.main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except CaseTimeoutError:
        code = None
    except Exception:  # what the CLI would print as a bug (exit 1)
        code = 1
        err.write(traceback.format_exc())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return Outcome(code, err.getvalue(), time.perf_counter() - start)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment carries ``TAG_ENV=tag`` (what the CLI started inherits it)."""
    needle, found = f"{TAG_ENV}={tag}".encode(), []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in environ and int(entry) != os.getpid():
            found.append(int(entry))
    return found


def _end_tagged(tag: str) -> None:
    """SIGKILL, by PID, whatever the CLI left running (a Ray it should never have started)."""
    for pid in _tagged_pids(tag):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run_subprocess(argv: list[str], tmp: Path, time_limit: float) -> Outcome:
    """The real CLI from ``tmp``, killed (with everything it started) at the time limit."""
    env = {key: value for key, value in os.environ.items() if key not in CLEARED_ENV}
    tag = f"{os.getpid()}-{tmp.name}"
    env.update({"UNMASK_CACHE": str(tmp / "cache"), "RAY_USAGE_STATS_ENABLED": "0", TAG_ENV: tag})
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(RUN_STUDY), *argv],
        cwd=tmp,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_limit_memory,  # runs in the child between fork and exec
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=time_limit)
        code: int | None = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        code = None
    finally:
        _end_tagged(tag)
    return Outcome(code, stderr, time.perf_counter() - start)


def run_case(case: Case, tmp: Path) -> tuple[Outcome, list[str]]:
    """Prepares, runs and judges ``case`` in the empty folder ``tmp``: (outcome, problems)."""
    argv = prepare_case(case, tmp)
    before = snapshot(tmp)
    if case.subprocess:
        outcome = run_subprocess(argv, tmp, time_limit(case))
    else:
        outcome = run_in_process(argv, tmp, time_limit(case))
    return outcome, problems(case, outcome, tmp, before)


def time_limit(case: Case) -> float:
    return max(case.time_limit, SUBPROCESS_TIME_LIMIT) if case.subprocess else case.time_limit


def warm_up() -> None:
    """Imports what the commands import lazily, so that an in-process case's time is its own."""
    import harness.evaluation  # noqa: F401
    import harness.ingest.cli  # noqa: F401
    import harness.runner  # noqa: F401
    import run_study  # noqa: F401


def problems(case: Case, outcome: Outcome, tmp: Path, before: dict[str, tuple[int, int]]) -> list[str]:
    """What is wrong with the refusal; empty when it is clean."""
    found = []
    if outcome.code is None:
        found.append(f"still running after {outcome.seconds:.0f} s: killed")
    elif outcome.code != 2:
        found.append(f"exit code {outcome.code}, expected 2")
    if "Traceback" in outcome.stderr:
        found.append("a traceback on stderr")
    if "error:" not in outcome.stderr:
        found.append("no 'error:' on stderr")
    if len(outcome.stderr) > MAX_MESSAGE:
        found.append(f"{len(outcome.stderr):,} characters on stderr: the message echoes its input")
    expect = [substitute(word, tmp) for word in case.expect]
    found += [f"stderr does not name {word!r}" for word in expect if word not in outcome.stderr]
    if (tmp / "runs").exists():
        found.append("the runs root was created")
    after = snapshot(tmp)
    cache = [p for p in after if p == "cache" or p.startswith("cache/")]
    if cache:  # none of the corpus needs one: bad input is refused before any extractor is built
        found.append(f"the cache was written: {sorted(cache)[:3]}")
    ignored = {"runs", "cache"}  # reported above
    changed = sorted(
        p for p, stat in after.items() if before.get(p) != stat and p.split("/")[0] not in ignored
    )
    changed += sorted(f"{p} (removed)" for p in before if p not in after)
    if changed:
        found.append(f"files written or changed: {changed[:5]}")
    if outcome.code is not None and outcome.seconds > time_limit(case):
        found.append(f"took {outcome.seconds:.1f} s, over the {time_limit(case):.0f} s bound")
    if found:
        found.append(f"stderr: {outcome.stderr[-1500:]!r}")
    return found
