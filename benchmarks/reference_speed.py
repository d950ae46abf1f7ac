#!/usr/bin/env python
"""Our sampler and trainer against what a user would take off the shelf or write, on CPU.

Every figure is a median over ``--repeats`` (>= 5) rounds; each round runs the two sides back
to back in a rotating order (``benchmarks/sampler.py``'s ``paired``), so a busy machine slows
both alike, and a ratio is the median of the rounds' ratios; beside it the same ratio of this
process's CPU time, which other load on a shared machine disturbs far less. Random weights and
random tokens: speed does not depend on training. Prints two rows of the performance table:

1. ``euler``: our ``EulerSampler`` (through a ``Denoiser``) against flow_matching 1.0.10's
   ``MixtureDiscreteEulerSolver`` on the same network and the same path: a
   ``MixtureDiscreteProbPath`` with kappa(t) = t (``PolynomialConvexScheduler(n=1)``), source
   all [MASK], the network wrapped as a ``ModelWrapper`` that returns p_{1|t} = softmax of our
   logits ([MASK] excluded, as ours samples), class-conditional through the solver's extras; the
   same grid 0 = t_0 < ... < t_n = 1, so both make NFE = n forwards of the whole batch (counted
   on the network itself and printed). Ratio: our wall / theirs (goal < 1).
2. ``train``: training tokens/s (batch x seq_len x steps) of our trainer's step, ``train_step``
   (the ``optimizer_step`` that ``train`` loops over, as ``harness/run/store.py`` runs it, with
   every ``TrainConfig`` default: warm-up, grad clip 1.0, EMA, class dropout, the divergence
   check), against a plain loop: the same ``DiscreteDiT`` and batch, t ~ U(0, 1), each token
   masked with probability 1 - kappa(t) = 1 - t, cross-entropy on the masked positions, AdamW,
   zero_grad. Each side keeps training one model; a round is a block of steps of each, so that
   the two timings of a round lie seconds apart. Ratio: ours / plain (goal >= 0.95).

flow_matching is an optional extra (``bench``); without it the ``euler`` row exits with status 2.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from importlib.metadata import version

import torch
import torch.nn.functional as F
from sampler import median_ratio, paired  # benchmarks/sampler.py: the house's paired timing
from torch import Tensor, nn

from models.backbone import DiscreteDiT, ModelConfig
from models.samplers import Denoiser, EulerSampler
from models.trainer import TrainConfig, init_state, train_step

try:
    from flow_matching.path import MixtureDiscreteProbPath
    from flow_matching.path.scheduler import PolynomialConvexScheduler
    from flow_matching.solver import MixtureDiscreteEulerSolver
    from flow_matching.utils import ModelWrapper
except ImportError:  # the optional ``bench`` extra; main() says how to install it
    MixtureDiscreteEulerSolver = None
    ModelWrapper = nn.Module

INSTALL = ".venv/bin/pip install --no-deps flow_matching==1.0.10 torchdiffeq"

# Sizes: each part about a minute on two idle cores (many more on a busy one).
EULER_SIZE, EULER_BATCH, EULER_NFES = "small", 16, (8, 16)
TRAIN_SIZE, TRAIN_BATCH, TRAIN_STEPS = "tiny", 32, 4
GRID, CODES, CLASSES = (16, 16), 1024, 10


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> tuple[dict, dict]:
    """``paired``'s wall times of each fn, and this process's CPU time of the same calls: on a
    shared machine the wall of a call swells with whatever else runs, its CPU time far less
    (though it counts both threads, and their spinning while they wait for each other)."""
    cpu: dict[str, list[float]] = {name: [] for name in fns}

    def clocked(name: str, fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            start = time.process_time()
            fn()
            cpu[name].append(time.process_time() - start)

        return run

    wall = paired({name: clocked(name, fn) for name, fn in fns.items()}, repeats)
    return wall, {name: times[1:] for name, times in cpu.items()}  # [1:]: paired's warm-up call


class Counted(nn.Module):
    """The network, counting its forward calls: both sides' network work, measured alike."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.forwards = net, 0

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        self.forwards += 1
        return self.net(x_t, t, y)  # (B, L, V)


class Posterior(ModelWrapper):
    """flow_matching's model interface: forward(x, t, **extras) -> p_{1|t}(. | x_t), (B, L, V),
    the softmax of our logits with [MASK] excluded (the class ids ``y`` come as an extra)."""

    def __init__(self, net: nn.Module, mask_id: int) -> None:
        super().__init__(net)
        self.mask_id = mask_id

    def forward(self, x: Tensor, t: Tensor, **extras: Tensor) -> Tensor:
        logits = self.model(x, t, extras["y"])  # (B, L, V)
        logits[..., self.mask_id] = -torch.inf
        return logits.softmax(dim=-1)  # (B, L, V)


class EulerBench:
    """A network with random weights (counting its forwards), class labels, and a run of each side."""

    def __init__(self, config: ModelConfig, batch: int) -> None:
        torch.manual_seed(0)
        self.config, self.batch = config, batch
        self.net = Counted(DiscreteDiT(config).eval())
        self.y = torch.arange(batch) % config.num_classes  # (B,)

    def ours(self, nfe: int) -> Callable[[], Tensor]:
        sampler = EulerSampler(num_steps=nfe)
        return lambda: (
            sampler.sample(
                Denoiser(self.net),
                batch_size=self.batch,
                seq_len=self.config.seq_len,
                mask_id=self.config.mask_id,
                y=self.y,
                generator=torch.Generator().manual_seed(0),
            ).tokens
        )

    def theirs(self, nfe: int) -> Callable[[], Tensor]:
        path = MixtureDiscreteProbPath(scheduler=PolynomialConvexScheduler(n=1.0))  # kappa(t) = t
        solver = MixtureDiscreteEulerSolver(
            model=Posterior(self.net, self.config.mask_id), path=path, vocabulary_size=self.config.num_ids
        )
        x_0 = torch.full((self.batch, self.config.seq_len), self.config.mask_id)  # (B, L) all [MASK]
        grid = torch.linspace(0.0, 1.0, nfe + 1)  # our grid: n intervals, n forwards

        def run() -> Tensor:
            torch.manual_seed(0)  # the solver draws from the global generator
            return solver.sample(x_init=x_0, step_size=None, time_grid=grid, y=self.y)

        return run

    def forwards(self, nfe: int) -> Callable[[], None]:
        """NFE bare forwards of the all-[MASK] batch: the network work both sides share."""
        x_t = torch.full((self.batch, self.config.seq_len), self.config.mask_id)  # (B, L)
        t = torch.zeros(self.batch)  # (B,)

        @torch.no_grad()
        def run() -> None:
            for _ in range(nfe):
                self.net.net(x_t, t, self.y)

        return run

    def check(self, run: Callable[[], Tensor]) -> tuple[int, int]:
        """(forwards of one run, [MASK] left in its tokens): the same work, and a finished grid."""
        before = self.net.forwards
        tokens = run()
        return self.net.forwards - before, int((tokens == self.config.mask_id).sum())


def euler_row(repeats: int) -> None:
    config = ModelConfig(vocab_size=CODES, grid=GRID, num_classes=CLASSES, size=EULER_SIZE)
    bench = EulerBench(config, EULER_BATCH)
    depth, width, _ = config.dims
    print(
        f"\nEuler: {EULER_SIZE} ({depth} layers, width {width}), {config.seq_len} tokens, {CODES:,} codes, "
        f"batch {EULER_BATCH}, NFE {', '.join(map(str, EULER_NFES))}; flow_matching "
        f"{version('flow_matching')} (medians of {repeats})"
    )
    for nfe in EULER_NFES:
        ours, theirs = bench.ours(nfe), bench.theirs(nfe)
        (our_nfe, our_left), (their_nfe, their_left) = bench.check(ours), bench.check(theirs)
        if our_nfe != their_nfe:
            raise RuntimeError(f"unequal network work: {our_nfe} forwards vs {their_nfe}")
        times, cpu = timed({"ours": ours, "flow_matching": theirs, "forwards": bench.forwards(nfe)}, repeats)
        ratio = median_ratio(times["ours"], times["flow_matching"])
        print(
            f"NFE {nfe}: forwards per run ours {our_nfe}, flow_matching {their_nfe}; [MASK] left "
            f"{our_left}, {their_left}; wall ours {statistics.median(times['ours']):.2f} s, "
            f"flow_matching {statistics.median(times['flow_matching']):.2f} s; / (NFE bare forwards): "
            f"ours {median_ratio(times['ours'], times['forwards']):.2f}, "
            f"flow_matching {median_ratio(times['flow_matching'], times['forwards']):.2f}"
        )
        print(
            f"  our Euler / flow_matching MixtureDiscreteEulerSolver  {ratio:.3f}  (goal: < 1); "
            f"in CPU time {median_ratio(cpu['ours'], cpu['flow_matching']):.3f}"
        )


class TrainBench:
    """Both trainings on random tokens, each holding its state across rounds: a round is a block
    of ``steps`` optimizer steps of each, so the two sides' timings lie seconds apart."""

    def __init__(self, config: ModelConfig, batch: int, steps: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.tokens = torch.randint(0, CODES, (1024, config.seq_len), generator=generator)  # (N, L)
        self.labels = torch.randint(0, CLASSES, (1024,), generator=generator)  # (N,)
        self.config, self.batch, self.steps = config, batch, steps
        self.train_config = TrainConfig(batch_size=batch)  # every other field: the default
        self.scheduler = self.train_config.build_scheduler()
        self.state = init_state(config, self.train_config)
        self.state.model.train()
        torch.manual_seed(0)
        self.net = DiscreteDiT(config).train()
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=1e-3)

    def ours(self) -> None:
        """``train_step``: the step ``train`` takes (``optimizer_step``) and its divergence check."""
        for _ in range(self.steps):
            train_step(self.state, self.tokens, self.labels, self.train_config, self.scheduler, "cpu")

    def plain(self) -> None:
        """The least a user could write: masked CE on kappa(t) = t, AdamW, nothing else."""
        for _ in range(self.steps):
            index = torch.randint(0, self.tokens.shape[0], (self.batch,))
            x_1, y = self.tokens[index], self.labels[index]  # (B, L), (B,)
            t = torch.rand(self.batch)  # (B,)
            masked = torch.rand(x_1.shape) < 1 - t[:, None]  # (B, L): masked with prob 1 - kappa(t)
            x_t = torch.where(masked, self.config.mask_id, x_1)
            logits = self.net(x_t, t, y)  # (B, L, V)
            loss = F.cross_entropy(logits[masked], x_1[masked])
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad()


def train_row(repeats: int) -> None:
    config = ModelConfig(vocab_size=CODES, grid=GRID, num_classes=CLASSES, size=TRAIN_SIZE)
    bench = TrainBench(config, TRAIN_BATCH, TRAIN_STEPS)
    times, cpu = timed({"ours": bench.ours, "plain": bench.plain}, repeats)
    count = TRAIN_BATCH * config.seq_len * TRAIN_STEPS
    depth, width, _ = config.dims
    print(
        f"\nTraining: {TRAIN_SIZE} ({depth} layers, width {width}), {config.seq_len} tokens, "
        f"{CODES:,} codes, batch {TRAIN_BATCH}; rounds of {TRAIN_STEPS} steps = {count:,} tokens "
        f"(medians of {repeats})"
    )
    print(
        f"tokens/s: ours {count / statistics.median(times['ours']):,.0f}, "
        f"plain {count / statistics.median(times['plain']):,.0f}"
    )
    ratio = median_ratio(times["plain"], times["ours"])  # tokens/s ours / plain = wall plain / ours
    print(
        f"training tokens/s, our trainer / plain AdamW + masked-CE loop  {ratio:.3f}  (goal >= 0.95); "
        f"in CPU time {median_ratio(cpu['plain'], cpu['ours']):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7, help="rounds per figure, >= 5")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("euler", "train"), help="one row only")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be >= 5: the figures are medians")
    if args.only != "train" and MixtureDiscreteEulerSolver is None:
        print(f"flow_matching is not installed (the optional 'bench' extra): {INSTALL}", file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads, torch {torch.__version__}")
    if args.only != "train":
        euler_row(args.repeats)
    if args.only != "euler":
        train_row(args.repeats)


if __name__ == "__main__":
    main()
