"""Which task family a trial belongs to: the ``TASK`` of every module in ``harness.tasks``.

A family says from capabilities whether it applies (``Task.applies``); the base family
(``harness.tasks.base.Task``, class-conditional generation) takes a trial no other claims. Two
families claiming one trial is a combination the harness does not support, refused naming both.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

import harness.tasks as package
from harness.data.types import DatasetShape
from harness.errors import UserError
from harness.tasks.base import Task

if TYPE_CHECKING:
    from harness.config.trial import TrialConfig

GENERATION = Task()
TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    if TASKS.get(task.name, task) is not task:
        raise ValueError(f"task family {task.name!r} is registered twice")
    TASKS[task.name] = task
    return task


def unregister(name: str) -> None:
    TASKS.pop(name, None)


def _discover() -> None:
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        task = getattr(module, "TASK", None)
        if isinstance(task, Task):
            register(task)


_discover()


def task_for(trial: TrialConfig, shape: DatasetShape) -> Task:
    """The one family that claims the trial, or the base family when none does."""
    claims = [t for t in TASKS.values() if t.applies(trial, shape)]
    if len(claims) > 1:
        names = " and ".join(repr(t.name) for t in claims)
        raise UserError(
            f"data.name {trial.data.name!r} with this trial's model and sampler is claimed by the {names} "
            "task families; the harness does not combine them"
        )
    return claims[0] if claims else GENERATION
