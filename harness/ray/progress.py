"""Driver-side output of a Tune run: progress lines per job, and Ray's logged errors about a path
that cannot be written kept to one line each (the driver reports the path itself, exit 5)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from harness.errors import unwritable

TRAIN, SAMPLE = "train", "sample"  # the two kinds of job of a grid study's one Tuner


class Progress:
    """Driver-side hook: prints progress and hands each finished sampling trial to ``on_complete``.

    ``totals`` counts the jobs of each kind (``train``, ``trial``); a job's kind is its config's
    ``kind`` (a grid study's one Tuner runs both), else ``default``. ``on_start`` is called once,
    when the first job's worker is up (started, its imports done) and before that job runs: Tune
    calls a job's function only after its callbacks' ``on_trial_start`` returned, so what the
    driver still has to set up runs while the worker starts, and what it raises ends the run, as
    it is, before any job has run."""

    def __init__(
        self,
        totals: dict[str, int],
        on_complete: Callable[[], None] | None,
        default: str = "trial",
        on_start: Callable[[], None] | None = None,
    ) -> None:
        from ray.tune import Callback

        outer = self

        class Hook(Callback):
            def on_trial_start(self, iteration, trials, trial, **info):
                outer.start()

            def on_trial_complete(self, iteration, trials, trial, **info):
                outer.tick(trial, "done")

            def on_trial_error(self, iteration, trials, trial, **info):
                outer.tick(trial, "FAILED")

            def on_trial_result(self, iteration, trials, trial, result, **info):
                outer.training_progress(trial, result)

        self.totals, self.default, self.on_complete = totals, default, on_complete
        self.on_start = on_start
        self.done = dict.fromkeys(totals, 0)
        self.quarters: dict[tuple[str, int], int] = {}
        self.callback = Hook()

    def start(self) -> None:
        on_start, self.on_start = self.on_start, None  # once, and not again after it raised
        if on_start is not None:
            on_start()

    def label(self, trial) -> str:
        kind = ((trial.config or {}).get("job") or {}).get("kind")
        return "train" if kind == TRAIN else "trial" if kind == SAMPLE else self.default

    def training_progress(self, trial, result: dict) -> None:
        """Prints a training's progress at each quarter of its steps."""
        step, steps = result.get("step"), result.get("steps")
        if step is None or not steps or result.get("done"):
            return
        quarter, key = 4 * step // steps, (trial.trial_id, steps)  # a chain's trainings, one by one
        if quarter > self.quarters.get(key, 0):
            self.quarters[key] = quarter
            print(
                f"  [train {trial.trial_id[-5:]}] step {step}/{steps} loss {result['loss']:.3f}",
                flush=True,
            )

    def tick(self, trial, status: str) -> None:
        label = self.label(trial)
        self.done[label] = self.done.get(label, 0) + 1
        result = trial.last_result or {}
        shown = {
            k: round(v, 4)
            for k, v in result.items()
            if k in ("fid", "fvd", "caption_agreement", "nfe", "precision", "recall")
        }
        total = self.totals.get(label, 0)
        print(f"  [{label} {self.done[label]}/{total}] {status} {shown or ''}", flush=True)
        if self.on_complete is not None and label == "trial":
            self.on_complete()


class _OneLineForUnwritable(logging.Filter):
    """Ray logs a full traceback for each write that fails on a full disk or a read-only folder
    (every trial, every save of the experiment state); this keeps each to one line, and the
    driver ends with one error naming the path (run_study.py, exit 5)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # logged with exc_info, or inside the except block with the traceback in the text
        err = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        cause = getattr(err, "cause", None) or err  # a RayTaskError carries the worker's error
        if err is not None and unwritable(cause):
            text = record.getMessage().split("Traceback (most recent call last)")[0].rstrip(" :\n")
            record.msg, record.args = f"{text}: {cause}", ()
            record.exc_info, record.exc_text = None, None
        return True


def shorten_unwritable(logger: logging.Logger) -> None:
    for handler in logger.handlers:
        if not any(isinstance(f, _OneLineForUnwritable) for f in handler.filters):
            handler.addFilter(_OneLineForUnwritable())
