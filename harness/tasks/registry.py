"""Which task family a trial belongs to: the ``TASK`` of every module in ``harness.tasks``.

A family says from capabilities whether it applies (``Task.applies``); the base family
(``harness.tasks.base.Task``, class-conditional generation) takes a trial no other claims. Two
families claiming one trial is a combination the harness does not support, refused naming both.
"""

from __future__ import annotations

import harness.tasks as package
from harness.data.types import DatasetShape
from harness.errors import UserError
from harness.plugins import add, discover
from harness.tasks.base import Task, Trial

GENERATION = Task()
TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    return add(TASKS, task.name, task, "task family")


def unregister(name: str) -> None:
    TASKS.pop(name, None)


for _task in discover(package, "TASK", Task):
    register(_task)


def task_for(trial: Trial, shape: DatasetShape) -> Task:
    """The one family that claims the trial, or the base family when none does."""
    claims = [t for t in TASKS.values() if t.applies(trial, shape)]
    if len(claims) > 1:
        reasons = "; ".join(f"the {t.name!r} task: {t.claim(trial, shape)}" for t in claims)
        raise UserError(
            f"this trial belongs to {len(claims)} task families, which do not combine ({reasons})"
        )
    return claims[0] if claims else GENERATION
