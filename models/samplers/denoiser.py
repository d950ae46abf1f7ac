"""The network as samplers see it: classifier-free guidance, NFE counting, logits of chosen rows."""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.guidance import cfg_combine, cfg_combine_

BATCHED, TWO_PASS = CFG_MODES = ("batched", "two-pass")
Pair = tuple[Tensor, Tensor]  # the conditional and unconditional logits

TWO_PASS_MARGIN = 0.05  # how much faster two-pass must be, at its fastest, to be kept on CPU
TIMING_ROUNDS = 2  # timings of each mode: one alone let a cold first run pick the slower mode
# net -> {(x_t shape, y shape, threads): batched?}: the CPU choice, timed once per process.
_CPU_CHOICES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class NFECount:
    """Network evaluations so far.

    ``evaluations``: network evaluations, the NFE (a guided step is one, however its halves ran);
    ``calls``: forward calls made (a batched guided step one call of a double batch, a two-pass
    step two);
    ``unbatched``: the calls the same work takes with CFG as two separate forwards;
    ``rows``: samples pushed through the network, summed over calls.
    """

    evaluations: int = 0
    calls: int = 0
    unbatched: int = 0
    rows: int = 0


class Denoiser:
    """Wraps a network ``net(x_t, t, y) -> logits (B, L, V)`` with CFG and NFE counting.

    With ``cfg_scale != 1`` and a condition, the conditional and unconditional halves run as one
    forward of a (2B, L) batch ("batched": one call) or as two forwards of B ("two-pass", the
    reference code's way: two calls). ``cfg_batched`` True / False forces one; None (the
    default) takes the cheaper: batched on an accelerator; on CPU, where either can win (two
    passes use the cache better, one batch of 2B pays fewer per-op costs, which dominate on a
    busy machine), the first guided call of each input shape and thread count runs both and
    times them, and the faster is kept for the process (two-pass only when clearly faster; the
    timing's extra forwards are not counted, and their seconds are in ``choice_seconds``). The
    two modes compute the same function, but BLAS may round a batch of B and one of 2B
    differently, so a token drawn at a class boundary can differ between them: the mode is part
    of the protocol (``SampleResult.cfg_mode``, recorded beside every metric's protocol, not in
    its comparability key). NFE is unchanged by the mode (``count.evaluations``: one per guided
    step, ``count.unbatched``: two); ``count.calls`` and ``cfg_mode`` say how the last call ran.
    Returns guided raw logits, before temperature. The null condition is ``full_like(y,
    null_class)``: the null class for class ids (B,), the empty caption (all PAD, ``null_class``
    = 0) for caption ids (B, S).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        cfg_scale: float = 1.0,
        null_class: int | None = None,
        cfg_batched: bool | None = None,
    ) -> None:
        if cfg_scale != 1.0 and null_class is None:
            raise ValueError("cfg_scale != 1 needs the network's null class (num_classes)")
        self.net = net
        self.cfg_scale = cfg_scale
        self.null_class = null_class
        self.cfg_batched = cfg_batched
        self.count = NFECount()
        self.cfg_mode: str | None = None  # the last call's: "batched", "two-pass", None (unguided)
        # Seconds the CPU choice took beyond the run whose output the step used (the kept
        # mode's last): not sampling work, so whoever times a sampler subtracts them.
        self.choice_seconds = 0.0
        self._choices: dict = {}  # the CPU choices, where the network cannot be weakly referenced

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0

    def __call__(self, x_t: Tensor, t: Tensor, y: Tensor | None, *, rows: Tensor | None = None) -> Tensor:
        """x_t (B, L), t (B,), y (B,) / (B, S) or None -> guided logits (B, L, V); with rows (N,)
        (distinct positions in the flattened grid) only theirs, (N, V): ``StepLogits.rows``."""
        step = self.evaluate(x_t, t, y)
        return step.full() if rows is None else step.rows(rows)

    @torch.no_grad()
    def evaluate(self, x_t: Tensor, t: Tensor, y: Tensor | None) -> StepLogits:
        """One network evaluation (one or two calls, counted), guided lazily row by row."""
        self.count.evaluations += 1
        if not self.guided or y is None:
            self.cfg_mode = None
            self.count.unbatched += 1
            self.count.calls += 1
            self.count.rows += x_t.shape[0]
            return StepLogits(self.net(x_t, t, y).float())
        self.count.unbatched += 2
        cond, uncond = self._branches(x_t, t, y)  # (B, L, V) each
        return StepLogits(cond, uncond, self.cfg_scale)

    def _branches(self, x_t: Tensor, t: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The conditional and unconditional logits, by the chosen mode, counted."""
        null = torch.full_like(y, self.null_class)

        def batched() -> tuple[Tensor, Tensor]:
            logits = self.net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))
            return logits.chunk(2)

        def two_pass() -> tuple[Tensor, Tensor]:
            return self.net(x_t, t, y), self.net(x_t, t, null)

        use_batched, done = self.cfg_batched, None
        if use_batched is None and x_t.device.type != "cpu":
            use_batched = True
        if use_batched is None:
            key = (tuple(x_t.shape), tuple(y.shape), torch.get_num_threads())
            choices = self._cpu_choices()
            if key not in choices:
                runs: dict[bool, list[float]] = {True: [], False: []}
                began = time.perf_counter()
                timed = _timed(batched, runs[True]), _timed(two_pass, runs[False])
                choices[key], done = choose_batching(*timed)
                kept = runs[choices[key]][-1:]  # the run whose output is this step's
                self.choice_seconds += time.perf_counter() - began - sum(kept)
            use_batched = choices[key]
        self.cfg_mode = BATCHED if use_batched else TWO_PASS
        cond, uncond = done if done is not None else (batched if use_batched else two_pass)()
        calls = 1 if use_batched else 2
        self.count.calls += calls
        self.count.rows += 2 * x_t.shape[0]  # B rows twice, in one call or in two
        return cond.float(), uncond.float()

    def _cpu_choices(self) -> dict:
        try:
            return _CPU_CHOICES.setdefault(self.net, {})
        except TypeError:  # not weakly referenceable: remember for this Denoiser only
            return self._choices


def _timed(run: Callable[[], Pair], seconds: list[float]) -> Callable[[], Pair]:
    """``run``, appending the seconds of each call to ``seconds``."""

    def timed() -> Pair:
        began = time.perf_counter()
        out = run()
        seconds.append(time.perf_counter() - began)
        return out

    return timed


def choose_batching(
    batched: Callable[[], tuple[Tensor, Tensor]],
    two_pass: Callable[[], tuple[Tensor, Tensor]],
    clock: Callable[[], float] = time.perf_counter,
    rounds: int = TIMING_ROUNDS,
) -> tuple[bool, tuple[Tensor, Tensor]]:
    """Runs both ways ``rounds`` times, alternately, two-pass first: (batched?, the kept mode's
    last output). Each mode is judged by its fastest run: the first run of a shape pays what
    later runs do not (memory the allocator has to fetch), and one run of either mode can be slowed
    by the machine. Two-pass only when it was clearly faster (by ``TWO_PASS_MARGIN``: batched bills
    one call a step)."""
    best, out = {True: math.inf, False: math.inf}, {}
    for _ in range(rounds):
        for is_batched, run in ((False, two_pass), (True, batched)):
            start = clock()
            out[is_batched] = run()
            best[is_batched] = min(best[is_batched], clock() - start)
    faster = best[False] < (1 - TWO_PASS_MARGIN) * best[True]
    return (False, out[False]) if faster else (True, out[True])


@dataclass(frozen=True)
class StepLogits:
    """One evaluation's logits: ``cond`` (B, L, V) and, under CFG, ``uncond``; rows are guided
    (u + s (c - u)) and copied only when asked for, so a sampler pays per row it reads."""

    cond: Tensor
    uncond: Tensor | None = None
    cfg_scale: float = 1.0

    def full(self) -> Tensor:
        """(B, L, V); unguided, the network's own output."""
        return self.cond if self.uncond is None else cfg_combine(self.cond, self.uncond, self.cfg_scale)

    def rows(self, rows: Tensor) -> Tensor:
        """rows (N,): distinct positions in the flattened (B * L) grid -> their logits (N, V), a
        new tensor the caller may overwrite."""
        if self.uncond is None:
            return gather_rows(self.cond, rows)
        positions = self.cond.shape[0] * self.cond.shape[1]
        if rows.numel() == positions and torch.equal(rows, torch.arange(positions, device=rows.device)):
            # every row, in order: the combine makes the copy, no gather
            return cfg_combine(self.cond, self.uncond, self.cfg_scale).reshape(rows.numel(), -1)
        return cfg_combine_(gather_rows(self.cond, rows), gather_rows(self.uncond, rows), self.cfg_scale)


def gather_rows(logits: Tensor, rows: Tensor) -> Tensor:
    """logits (B, L, V) -> a copy of rows (N,) of the flattened grid, (N, V)."""
    return logits.reshape(-1, logits.shape[-1]).index_select(0, rows)
