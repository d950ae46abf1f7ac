"""Faults the harness promises to survive (README "Failure and recovery"), run through the CLI.

Each scenario runs ``run_study.py`` on a tiny digits study (one training of 60 steps with a
periodic checkpoint at 20 and 40, three sampling trials, one at a time) in its own session, hits
it with one fault, and checks what must hold afterwards:

- every planned trial has one ledger record and one MLflow child run (one per trial hash), in the
  state the study should end in (finished; failed for a diverged training);
- the ledger records and the finished training's done.json, checkpoint and curve that existed
  right after the fault are byte-identical at the end (except what the scenario damaged);
- no training ran to its end twice: a curve logs its final step once per completed training, and
  the store's quarantine keeps the curve of a training redone on purpose;
- after ``resume`` the study is complete: exit 0, no MLflow invocation left RUNNING, no Ray
  process left behind, nothing non-finite in the ledger, the curves or MLflow.

A scenario returns a Tally: its problems, and how many results were lost (a planned trial without
its record or child run, a finished file changed or gone) or duplicated (a second child run of a
trial, a training completed twice). tests/reliability/test_faults.py runs each scenario as a slow
test; benchmarks/faults.py runs them all and prints the totals. Processes are ended by their PID
or process group: the driver's session, then whatever carries the scenario's environment tag.
This module holds the table of scenarios and runs one; the rig (fault_rig.py), the checks
(fault_checks.py) and the scenarios themselves (fault_processes.py, fault_damage.py) live beside it.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conftest import kill_tagged
from fault_checks import Tally
from fault_damage import DAMAGES, corrupt_and_resume, disk_full, nan_training
from fault_processes import KILL_POINTS, kill_and_resume, kill_worker, second_driver, two_studies_one_store
from fault_rig import NotLandedError, SkipScenario, Workspace

from harness.evaluation import Evaluator

# ---- the scenarios ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownBug:
    """A harness bug a scenario exposes: the problems it causes start with one of ``problems``."""

    reason: str
    problems: tuple[str, ...]

    def explains(self, problem: str) -> bool:
        return problem.startswith(self.problems)


class KnownBugError(AssertionError):
    """The scenario failed by its known bug alone (tests mark it xfail(strict=True, raises=this))."""


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[Workspace], Tally]
    bug: KnownBug | None = None  # the scenario is expected to fail by this bug, and by nothing else


SCENARIOS = [
    *(Scenario(f"SIGKILL of the driver: {p}", lambda ws, p=p: kill_and_resume(ws, p)) for p in KILL_POINTS),
    *(
        Scenario(
            f"SIGKILL of a Ray {phase} worker, {retries} retries",
            lambda ws, p=phase, r=retries: kill_worker(ws, p, r),
        )
        for phase, retries in (("training", 1), ("training", 0), ("sampling", 0))
    ),
    *(Scenario(f"corrupt {k}, then resume", lambda ws, k=k: corrupt_and_resume(ws, k)) for k in DAMAGES),
    Scenario("a second driver of a running study", second_driver),
    Scenario("two studies on one new MLflow store", two_studies_one_store),
    Scenario("disk full mid-study, then resume", disk_full),
    Scenario("a training that diverges (lr 1e30)", nan_training),
]


@dataclass
class Result:
    scenario: Scenario
    tally: Tally
    seconds: float
    skipped: str | None = None


def run_scenario(scenario: Scenario, folder: Path, cache: Path) -> Result:
    """Runs one scenario in the empty ``folder``; every process it started is ended after it."""
    folder.mkdir(parents=True, exist_ok=True)
    ws = Workspace(folder, cache)
    started = time.perf_counter()
    try:
        tally, skipped = scenario.run(ws), None
    except SkipScenario as skip:
        tally, skipped = Tally(), str(skip)
    except NotLandedError as err:
        tally, skipped = Tally([f"the fault was not injected as intended: {err}"]), None
    except Exception:  # a scenario that breaks is reported, and the next one runs
        tally, skipped = Tally([f"the scenario raised:\n{traceback.format_exc()}"]), None
    finally:
        kill_tagged(ws.tag)
    return Result(scenario, tally, time.perf_counter() - started, skipped)


def warm_cache(cache: Path) -> Path:
    """The digits classifier and reference statistics in ``cache``, built once before the drivers."""
    Evaluator("digits", metrics=["fid"], cache_dir=cache).reference_stats  # noqa: B018
    return cache


def verdict(result: Result) -> None:
    """Raises AssertionError naming what went wrong, or KnownBugError when the scenario's known bug
    explains every problem (and nothing was lost or duplicated); returns when it survived."""
    tally, bug = result.tally, result.scenario.bug
    if tally.survived:
        return
    report = f"lost {tally.lost}, duplicated {tally.duplicated}:\n" + "\n".join(tally.problems)
    if bug is not None and tally.lost == tally.duplicated == 0 and all(map(bug.explains, tally.problems)):
        raise KnownBugError(f"bug: {bug.reason}\n{report}")
    raise AssertionError(report)
