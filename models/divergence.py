"""A training whose loss, gradient norm or weights stop being finite is stopped, never saved.

Each optimizer step's (loss, gradient norm) stays on the device: ``DivergenceGuard.check``
copies all pending pairs to the host at once, so the guard adds no GPU->CPU synchronisation per
step. The trainer checks at its logging steps and before every checkpoint it writes, and the
check before a save also counts the non-finite values in the weights and the EMA: weights
that came from a non-finite step are never written. Under data parallelism every rank checks
at the same steps and the pending values are summed over the ranks (a NaN or inf on any rank
makes the sum non-finite on all), so every rank stops at the same step with the same message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.data_parallel import DataParallel


class TrainingDivergedError(RuntimeError):
    """The loss, the gradient norm or the weights of a training step were not finite.

    ``step`` is the first optimizer step (counted from 1, as in the training curve) found bad.
    """

    def __init__(self, message: str, step: int | None = None) -> None:
        super().__init__(message)  # args == (message,): the exception pickles (Ray workers)
        self.step = step


def nonfinite_count(modules: Sequence[nn.Module]) -> Tensor | None:
    """The number of NaN / inf entries in the floating parameters and buffers, on their device."""
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()]
    if not tensors:
        return None
    return sum(torch.count_nonzero(~torch.isfinite(t.detach())) for t in tensors)


class DivergenceGuard:
    """Holds each step's (loss, gradient norm) on the device until ``check``.

    parallel: this process's rank of a data-parallel training (``check`` all-reduces), or None.
    """

    def __init__(self, parallel: DataParallel | None = None) -> None:
        self.parallel = parallel
        self.pending: list[tuple[int, Tensor]] = []  # (step, (2,) float64 [loss, grad norm])
        self.last_finite: tuple[int, float] | None = None  # (step, loss) of the last sound step

    def record(self, step: int, loss: Tensor, grad_norm: Tensor) -> None:
        """Step ``step``'s loss (this rank's mean) and gradient norm: 0-d tensors, not synchronised."""
        self.pending.append((step, torch.stack([loss.detach().double(), grad_norm.detach().double()])))

    def check(self, modules: Sequence[nn.Module] = ()) -> list[float]:
        """The mean over ranks of each pending step's loss, oldest first; clears them.

        Raises TrainingDivergedError at the first pending step whose loss or gradient norm is not
        finite (on any rank), or when ``modules`` (the weights about to be saved) hold a
        non-finite value. One device->host copy, and one all-reduce under data parallelism.
        """
        steps = [step for step, _ in self.pending]
        parts = [torch.stack([pair for _, pair in self.pending]).flatten()] if self.pending else []  # (2 W,)
        bad_weights = nonfinite_count(modules)
        if bad_weights is not None:
            parts.append(bad_weights.to(torch.float64).view(1))
        self.pending = []
        if not parts:
            return []
        device = parts[0].device
        packed = torch.cat([p.to(device) for p in parts])  # (2 W [+ 1],)
        world_size = 1
        if self.parallel is not None and self.parallel.world_size > 1:
            torch.distributed.all_reduce(packed)  # sum: non-finite on any rank is non-finite on all
            world_size = self.parallel.world_size
        values = packed.cpu().tolist()
        losses = []
        for i, step in enumerate(steps):
            loss, grad_norm = values[2 * i] / world_size, values[2 * i + 1] / world_size
            for what, value in (("loss", loss), ("gradient norm", grad_norm)):
                if not math.isfinite(value):
                    raise TrainingDivergedError(self._message(step, f"{what} {value}"), step)
            self.last_finite = (step, loss)
            losses.append(loss)
        if bad_weights is not None and values[-1] > 0:
            step = steps[-1] if steps else None
            raise TrainingDivergedError(
                self._message(step, f"{int(values[-1])} non-finite values in the weights"), step
            )
        return losses

    def _message(self, step: int | None, what: str) -> str:
        at = "" if step is None else f" at step {step}"
        if self.last_finite is None:
            before = "no finite step before it"
        else:
            before = f"last finite loss {self.last_finite[1]:.6g} at step {self.last_finite[0]}"
        return f"training diverged{at}: {what} ({before})"
