"""Samplers: one conformance suite every configuration passes unchanged, then Euler- and MaskGIT-
specific properties derived from the math (PAPER.md section 5).

The networks are tiny deterministic stand-ins that count their own calls, so NFE is checked against
an independent count.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from models.registry import UnknownNameError
from models.samplers import (
    RANDOMIZATIONS,
    SAMPLERS,
    UNMASK_SCHEDULES,
    Denoiser,
    EulerSampler,
    MaskGITSampler,
    maskgit_counts,
)
from models.samplers.maskgit import invert_kappa
from models.schedulers import SCHEDULERS, Cosine, Cubic, Linear, Polynomial

K = 6  # data codes 0..K-1
MASK = K  # [MASK] id
V = K + 1
NUM_CLASSES = 3  # class ids 0..2, null class 3
B, L = 4, 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Hundreds of tiny sampling loops: thread start-up dominates them (badly on a loaded 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- stand-in networks ------------------------------------------------------------------------------


class CountingNet(nn.Module):
    """net(x_t, t, y) -> logits (B, L, V); records every call independently of the Denoiser."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.ts: list[Tensor] = []

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        self.calls += 1
        self.ts.append(t.detach().clone())
        return self.logits(x_t, t, y)

    def logits(self, x_t: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        raise NotImplementedError


class OracleNet(CountingNet):
    """Always predicts token 2 (all the mass on class 2)."""

    def logits(self, x_t, t, y):
        out = torch.zeros(*x_t.shape, V)
        out[..., 2] = 50.0
        return out


class ConstantNet(CountingNet):
    """The same logits (V,) at every position."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.register_buffer("row", torch.tensor(logits))

    def logits(self, x_t, t, y):
        return self.row.expand(*x_t.shape, V).clone()


class RandomNet(CountingNet):
    """Fixed random logits that depend on position, input token and class: a deterministic function."""

    def __init__(self, seq_len: int = L, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("by_position", torch.randn(seq_len, V, generator=g))
        self.register_buffer("by_token", 0.5 * torch.randn(V, V, generator=g))
        self.register_buffer("by_class", torch.randn(NUM_CLASSES + 1, V, generator=g))

    def logits(self, x_t, t, y):
        if y is None:
            y = torch.full((x_t.shape[0],), NUM_CLASSES)
        return self.by_position[None] + self.by_token[x_t] + self.by_class[y][:, None]


def uniform_net() -> ConstantNet:
    return ConstantNet([0.0] * V)


def run(sampler, net, *, seed=0, batch_size=B, seq_len=L, denoiser=None, **kw):
    denoiser = denoiser or Denoiser(net)
    return sampler.sample(
        denoiser,
        batch_size=batch_size,
        seq_len=seq_len,
        mask_id=MASK,
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )


def newly_unmasked(before: Tensor, after: Tensor) -> Tensor:
    return (before == MASK) & (after != MASK)


# --- the configurations under test -------------------------------------------------------------------

REVISITING = {  # correctors: may re-mask a generated token
    "euler-remask": EulerSampler(remask_scale=4.0),
}
NEVER_REVISITING = {
    "euler": EulerSampler(),
    "euler-argmax": EulerSampler(argmax_fill=True),
    "euler-reference": EulerSampler(reference_grid=True, argmax_fill=True),
    **{
        f"maskgit-{schedule}-{randomization}": MaskGITSampler(schedule=schedule, randomization=randomization)
        for schedule in UNMASK_SCHEDULES
        for randomization in RANDOMIZATIONS
    },
    "maskgit-etm": MaskGITSampler(scheduler=Cosine()),
}
ALL = {**NEVER_REVISITING, **REVISITING}


@pytest.fixture(params=sorted(ALL))
def sampler(request):
    return ALL[request.param]


@pytest.fixture(params=sorted(NEVER_REVISITING))
def never_revisiting_sampler(request):
    return NEVER_REVISITING[request.param]


def partly_given(seed: int = 0, num_masked: int = 12) -> Tensor:
    """x_init (B, L): random codes with exactly ``num_masked`` [MASK] per row, at random positions."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, K, (B, L), generator=g)
    for b in range(B):
        x[b, torch.randperm(L, generator=g)[:num_masked]] = MASK
    return x


# --- conformance: every sampler, unchanged ------------------------------------------------------------


class TestSamplerConformance:
    def test_oracle_network_gives_all_twos(self, sampler):
        out = run(sampler, OracleNet())
        assert out.tokens.shape == (B, L)
        assert torch.all(out.tokens == 2)

    def test_random_network_leaves_no_mask(self, sampler):
        out = run(sampler, RandomNet(), y=torch.tensor([0, 1, 2, 0]))
        assert out.tokens.dtype == torch.long
        assert torch.all((out.tokens >= 0) & (out.tokens < K))

    def test_nfe_is_the_number_of_network_calls(self, sampler):
        net = RandomNet()
        denoiser = Denoiser(net)
        first = run(sampler, net, denoiser=denoiser)
        assert first.nfe == net.calls > 0
        assert first.nfe_unbatched == first.nfe
        # Per-call accounting: a second run on the same Denoiser reports its own calls only.
        second = run(sampler, net, denoiser=denoiser, seed=1)
        assert second.nfe == first.nfe and net.calls == 2 * first.nfe

    def test_nfe_with_cfg(self, sampler):
        y = torch.tensor([0, 1, 2, 1])
        batched_net, two_pass_net = RandomNet(), RandomNet()
        batched = run(
            sampler,
            batched_net,
            y=y,
            seed=3,
            denoiser=Denoiser(batched_net, cfg_scale=2.5, null_class=NUM_CLASSES),
        )
        two_pass = run(
            sampler,
            two_pass_net,
            y=y,
            seed=3,
            denoiser=Denoiser(two_pass_net, cfg_scale=2.5, null_class=NUM_CLASSES, cfg_batched=False),
        )
        assert batched.nfe == batched_net.calls
        assert batched.nfe_unbatched == 2 * batched.nfe
        assert two_pass.nfe == two_pass_net.calls == two_pass.nfe_unbatched == batched.nfe_unbatched
        # How the branches are batched changes the bill, not the samples.
        assert torch.equal(batched.tokens, two_pass.tokens)

    def test_same_seed_same_tokens(self, sampler):
        a = run(sampler, RandomNet(), seed=7)
        b = run(sampler, RandomNet(), seed=7)
        c = run(sampler, RandomNet(), seed=8)
        assert torch.equal(a.tokens, b.tokens)
        assert not torch.equal(a.tokens, c.tokens)

    def test_trajectory_is_recorded_without_changing_the_sample(self, sampler):
        plain = run(sampler, RandomNet(), seed=5)
        traced = run(sampler, RandomNet(), seed=5, return_trajectory=True)
        assert plain.trajectory is None
        assert torch.equal(plain.tokens, traced.tokens)
        trajectory = traced.trajectory
        assert len(trajectory) == traced.nfe + 1  # the start, then one state per network call
        assert torch.all(trajectory[0] == MASK)
        # The sample agrees with the last state wherever that state is not [MASK].
        last = trajectory[-1]
        assert torch.equal(traced.tokens[last != MASK], last[last != MASK])

    def test_clamped_tokens_never_change(self, sampler):
        x_init = partly_given()
        out = run(sampler, RandomNet(), x_init=x_init, return_trajectory=True)
        given_ = x_init != MASK
        for state in out.trajectory:
            assert torch.equal(state[given_], x_init[given_])
        assert torch.equal(out.tokens[given_], x_init[given_])
        assert torch.all(out.tokens != MASK)

    def test_x_init_shape_is_checked(self, sampler):
        with pytest.raises(ValueError):
            run(sampler, RandomNet(), x_init=torch.full((B, L + 1), MASK))


def test_unmasked_tokens_never_change(never_revisiting_sampler):
    """Monotone trajectory: once a token leaves [MASK] it keeps its value (no corrector)."""
    for x_init in (None, partly_given()):
        out = run(never_revisiting_sampler, RandomNet(), return_trajectory=True, x_init=x_init)
        for before, after in zip(out.trajectory, out.trajectory[1:], strict=False):
            done = before != MASK
            assert torch.equal(after[done], before[done])


def test_the_corrector_does_revisit():
    """Why ``euler-remask`` is left out of the monotonicity test: it re-masks generated tokens."""
    out = run(REVISITING["euler-remask"], RandomNet(), return_trajectory=True)
    remasked = sum(
        int(((a != MASK) & (b == MASK)).sum())
        for a, b in zip(out.trajectory, out.trajectory[1:], strict=False)
    )
    assert remasked > 0


def test_registry():
    assert SAMPLERS.names() == ["euler", "maskgit"]
    assert SAMPLERS["euler"](num_steps=3).num_steps == 3
    with pytest.raises(UnknownNameError, match="euler"):
        SAMPLERS["eular"]


# --- Euler --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheduler", [Linear(), Cosine(), Polynomial(n=2.0), SCHEDULERS["root"](), Cubic(a=0.5, b=2.0)], ids=repr
)
def test_euler_unmasked_fraction_follows_kappa(scheduler):
    """P(unmasked after step k) = kappa(t_{k+1}) exactly (the telescoping product of survivals)."""
    n, batch, seq = 8, 32, 512
    out = run(
        EulerSampler(num_steps=n, scheduler=scheduler),
        ConstantNet([0.0] * V),
        batch_size=batch,
        seq_len=seq,
        return_trajectory=True,
    )
    grid = [k / n for k in range(n + 1)]
    kappa = scheduler.kappa(torch.tensor(grid, dtype=torch.float64)).tolist()
    for k, state in enumerate(out.trajectory):
        fraction = (state != MASK).double().mean().item()
        tol = 5 * math.sqrt(kappa[k] * (1 - kappa[k]) / (batch * seq)) + 1e-9
        assert abs(fraction - kappa[k]) <= tol, f"step {k}: {fraction} vs kappa {kappa[k]}"


@settings(deadline=None, max_examples=15)
@given(n=st.integers(1, 40))
def test_euler_nfe_and_times_on_the_corrected_grid(n):
    net = uniform_net()
    out = run(EulerSampler(num_steps=n), net)
    assert out.nfe == n == net.calls
    times = torch.stack([t[0] for t in net.ts]).double()
    torch.testing.assert_close(times, torch.arange(n, dtype=torch.float64) / n, rtol=0, atol=1e-6)
    assert all(torch.all(t == t[0]) for t in net.ts)
    assert torch.all(out.tokens != MASK)


@settings(deadline=None, max_examples=15)
@given(n=st.integers(2, 40))
def test_euler_nfe_and_times_on_the_reference_grid(n):
    t_min = 1e-4
    net = uniform_net()
    out = run(EulerSampler(num_steps=n, reference_grid=True), net)
    assert out.nfe == n - 1 == net.calls
    want = torch.tensor([t_min + k * (1 - t_min) / n for k in range(n - 1)], dtype=torch.float64)
    torch.testing.assert_close(torch.stack([t[0] for t in net.ts]).double(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [4, 10])
def test_euler_reference_grid_leaves_about_one_over_n_for_code_zero(n):
    """The reference stops at t_{n-1} < 1: (1 - kappa(t_{n-1})) / (1 - kappa(t_0)) of the tokens are
    still [MASK] after the last call (about 1/n for linear kappa) and decode as code 0."""
    t_min, batch, seq = 1e-4, 32, 512
    out = run(
        EulerSampler(num_steps=n, reference_grid=True),
        uniform_net(),
        batch_size=batch,
        seq_len=seq,
        return_trajectory=True,
    )
    t = [t_min + k * (1 - t_min) / n for k in range(n)]
    left = (1 - t[n - 1]) / (1 - t[0])
    assert left == pytest.approx(1 / n, rel=1e-3)
    still_masked = out.trajectory[-1] == MASK
    tol = 5 * math.sqrt(left * (1 - left) / (batch * seq))
    assert abs(still_masked.double().mean().item() - left) < tol
    assert torch.all(out.tokens[still_masked] == 0)
    assert torch.all(out.tokens != MASK)
    # Each intermediate state: unmasked fraction 1 - (1 - kappa(t_{k+1})) / (1 - kappa(t_0)).
    for k, state in enumerate(out.trajectory[1:]):
        want = 1 - (1 - t[k + 1]) / (1 - t[0])
        assert abs((state != MASK).double().mean().item() - want) < 5 * math.sqrt(0.25 / (batch * seq))


def argmax_net() -> ConstantNet:
    """Class 3 is the argmax but holds only e / (e + K - 1) of the mass; [MASK] gets none."""
    row = [0.0] * V
    row[3] = 1.0
    return ConstantNet(row)


@pytest.mark.parametrize("reference_grid", [False, True])
def test_euler_argmax_fill(reference_grid):
    n, batch, seq = 3, 16, 64
    filled = run(
        EulerSampler(num_steps=n, argmax_fill=True, reference_grid=reference_grid),
        argmax_net(),
        batch_size=batch,
        seq_len=seq,
        return_trajectory=True,
    )
    # Tokens still masked before the last step (after the last call, on the reference grid) take the argmax.
    pending = (filled.trajectory[-1 if reference_grid else -2]) == MASK
    assert pending.sum() > 0
    assert torch.all(filled.tokens[pending] == 3)
    # Without the fill they would not all be 3 (a sample, or code 0 on the reference grid).
    sampled = run(
        EulerSampler(num_steps=n, reference_grid=reference_grid),
        argmax_net(),
        batch_size=batch,
        seq_len=seq,
        return_trajectory=True,
    )
    pending = (sampled.trajectory[-1 if reference_grid else -2]) == MASK
    assert not torch.all(sampled.tokens[pending] == 3)


def mask_heavy_net() -> ConstantNet:
    row = [0.0] * V
    row[MASK] = 8.0  # p([MASK]) is about 0.998
    return ConstantNet(row)


@pytest.mark.parametrize(
    "sampler",
    [EulerSampler(num_steps=4), EulerSampler(num_steps=4, argmax_fill=True), MaskGITSampler(num_steps=4)],
    ids=["euler", "euler-argmax", "maskgit"],
)
def test_mask_class_is_never_sampled(sampler):
    out = run(sampler, mask_heavy_net(), batch_size=16, seq_len=64, return_trajectory=True)
    assert torch.all(out.tokens != MASK)
    # Every step's state has exactly its scheduled share: no proposal wrote [MASK] back.
    for before, after in zip(out.trajectory, out.trajectory[1:], strict=False):
        assert torch.all(after[before != MASK] != MASK)


def test_reference_mode_samples_mask_without_exclusion():
    """The faithful flag reproduces defect 2: with [MASK] not excluded it is sampled."""
    out = run(EulerSampler(num_steps=4, exclude_mask=False), mask_heavy_net(), batch_size=16, seq_len=64)
    assert (out.tokens == MASK).float().mean() > 0.9


def test_euler_remask_zero_is_off():
    a = run(EulerSampler(num_steps=6), RandomNet(), return_trajectory=True)
    for before, after in zip(a.trajectory, a.trajectory[1:], strict=False):
        assert not torch.any((before != MASK) & (after == MASK))


def test_euler_single_step_unmasks_everything():
    out = run(EulerSampler(num_steps=1), RandomNet())
    assert out.nfe == 1 and torch.all(out.tokens != MASK)


@pytest.mark.parametrize("kwargs", [{"num_steps": 0}, {"num_steps": 1, "reference_grid": True}])
def test_euler_invalid_steps(kwargs):
    with pytest.raises(ValueError):
        EulerSampler(**kwargs)


# --- MaskGIT ------------------------------------------------------------------------------------------

SCHEDULE_WEIGHTS = {  # w(r), r = 1 - k / (n - 1): the schedules of PAPER.md section 5
    "linear": lambda r: 1 - r,
    "root": lambda r: 1 - math.sqrt(r),
    "square": lambda r: 1 - r * r,
    "cosine": lambda r: math.cos(math.pi * r / 2),
    "arccos": lambda r: math.acos(r) / (math.pi / 2),
}


def expected_counts(schedule: str, n: int, N: int) -> list[int]:
    r = [1 - k / (n - 1) for k in range(n)] if n > 1 else [1.0]
    w = [SCHEDULE_WEIGHTS[schedule](r_k) for r_k in r]
    counts = [max(1, math.floor(w_k / sum(w) * N)) for w_k in w]
    counts[-1] += N - sum(counts)
    return counts


def test_every_schedule_is_known():
    assert set(UNMASK_SCHEDULES.names()) == set(SCHEDULE_WEIGHTS)


@pytest.mark.parametrize("schedule", sorted(SCHEDULE_WEIGHTS))
@pytest.mark.parametrize("n, N", [(20, 1024), (8, 64), (12, 256), (10, 100)])
def test_maskgit_counts_follow_the_schedule(schedule, n, N):
    want = expected_counts(schedule, n, N)
    assert min(want) >= 1  # these cases need no excess taken back
    assert maskgit_counts(schedule, n, N) == want


@settings(deadline=None, max_examples=60)
@given(schedule=st.sampled_from(sorted(SCHEDULE_WEIGHTS)), N=st.integers(1, 2000), data=st.data())
def test_maskgit_counts_partition_the_tokens(schedule, N, data):
    n = data.draw(st.integers(1, min(N, 64)))
    counts = maskgit_counts(schedule, n, N)
    assert len(counts) == n
    assert sum(counts) == N
    assert min(counts) >= 1


def test_maskgit_single_step_commits_everything():
    for schedule in UNMASK_SCHEDULES:
        assert maskgit_counts(schedule, 1, 37) == [37]
        out = run(MaskGITSampler(num_steps=1, schedule=schedule), RandomNet())
        assert out.nfe == 1 and torch.all(out.tokens != MASK)


@pytest.mark.parametrize("n, N", [(0, 10), (11, 10)])
def test_maskgit_counts_reject_bad_steps(n, N):
    with pytest.raises(ValueError):
        maskgit_counts("cosine", n, N)


@pytest.mark.parametrize("schedule", sorted(SCHEDULE_WEIGHTS))
@pytest.mark.parametrize("randomization", sorted(RANDOMIZATIONS))
@pytest.mark.parametrize("num_masked", [L, 11])
def test_maskgit_commits_exactly_counts_per_step(schedule, randomization, num_masked):
    n = 5
    x_init = partly_given(num_masked=num_masked) if num_masked < L else None
    sampler = MaskGITSampler(num_steps=n, schedule=schedule, randomization=randomization)
    out = run(sampler, RandomNet(), x_init=x_init, return_trajectory=True)
    counts = expected_counts(schedule, n, num_masked)
    assert out.nfe == n
    for k, (before, after) in enumerate(zip(out.trajectory, out.trajectory[1:], strict=False)):
        assert newly_unmasked(before, after).sum(dim=1).tolist() == [counts[k]] * B


class ConfidenceNet(CountingNet):
    """Position i of row b spreads its mass uniformly over support[b, i] codes, so the log
    probability of whatever is drawn there is exactly -log support[b, i]: a known confidence."""

    def __init__(self, support: Tensor) -> None:
        super().__init__()
        codes = torch.arange(V)
        on = codes[None, None] < support[..., None]  # (B, L, V)
        self.register_buffer("table", torch.where(on, 0.0, -1e4))

    def logits(self, x_t, t, y):
        return self.table.clone()


def test_maskgit_without_randomization_commits_most_confident_first():
    n, batch, seq = 4, 6, K  # support sizes 1..K are distinct: no ties in confidence
    g = torch.Generator().manual_seed(0)
    support = torch.stack([torch.randperm(seq, generator=g) + 1 for _ in range(batch)])  # (B, L)
    out = run(
        MaskGITSampler(num_steps=n, schedule="linear", randomization="none"),
        ConfidenceNet(support),
        batch_size=batch,
        seq_len=seq,
        return_trajectory=True,
    )
    counts = expected_counts("linear", n, seq)
    order = support.argsort(dim=1)  # most confident (smallest support) first
    done = 0
    for k, state in enumerate(out.trajectory[1:]):
        done += counts[k]
        want = torch.zeros(batch, seq, dtype=torch.bool).scatter(1, order[:, :done], True)
        assert torch.equal(state != MASK, want), f"step {k}"
    # Each drawn code lies in its position's support.
    assert torch.all(out.tokens < support)


def test_maskgit_random_order_ignores_confidence():
    n, batch, seq = 4, 16, K
    g = torch.Generator().manual_seed(0)
    support = torch.stack([torch.randperm(seq, generator=g) + 1 for _ in range(batch)])
    out = run(
        MaskGITSampler(num_steps=n, schedule="linear", randomization="random"),
        ConfidenceNet(support),
        batch_size=batch,
        seq_len=seq,
        return_trajectory=True,
    )
    first = newly_unmasked(out.trajectory[0], out.trajectory[1])  # one token per row at step 0
    most_confident = support.argmin(dim=1)
    assert not torch.all(first[torch.arange(batch), most_confident])


@pytest.mark.parametrize("scheduler", [Linear(), Cosine(), Polynomial(n=2.0)], ids=repr)
@pytest.mark.parametrize("num_masked", [L, 10])
def test_maskgit_etm_time_follows_the_unmasked_fraction(scheduler, num_masked):
    """An ETM is called at t = kappa^-1(unmasked fraction), the fraction of the state it is shown."""
    net = RandomNet()
    x_init = partly_given(num_masked=num_masked) if num_masked < L else None
    out = run(MaskGITSampler(num_steps=6, scheduler=scheduler), net, x_init=x_init, return_trajectory=True)
    assert len(net.ts) == out.nfe == 6
    for t, state in zip(net.ts, out.trajectory, strict=False):
        fraction = (state != MASK).double().mean(dim=1)
        torch.testing.assert_close(scheduler.kappa(t.double()), fraction, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "sampler",
    [MaskGITSampler(scheduler=Cosine(), reference_time=True), MaskGITSampler()],
    ids=["reference_time", "no-scheduler"],
)
def test_maskgit_reference_time_calls_at_zero(sampler):
    net = RandomNet()
    run(sampler, net)
    assert net.calls == sampler.num_steps
    assert all(torch.all(t == 0) for t in net.ts)


def test_maskgit_unknown_names():
    with pytest.raises(UnknownNameError, match="cosine"):
        MaskGITSampler(schedule="cosin")
    with pytest.raises(UnknownNameError, match="linear"):
        MaskGITSampler(randomization="gumbel")


def test_maskgit_needs_equal_masked_counts():
    x_init = partly_given(num_masked=6)
    x_init[0, x_init[0] != MASK] = MASK  # row 0 now has more masked tokens
    with pytest.raises(ValueError):
        run(MaskGITSampler(), RandomNet(), x_init=x_init)


@pytest.mark.parametrize("n", [2, 5, 20])
def test_randomization_strengths(n):
    assert [RANDOMIZATIONS["none"](k, n) for k in range(n)] == [0.0] * n
    linear = [RANDOMIZATIONS["linear"](k, n) for k in range(n)]
    assert linear == pytest.approx([1 - k / (n - 1) for k in range(n)])
    warmup = [RANDOMIZATIONS["warmup"](k, n) for k in range(n)]
    assert all(w == 1.0 for k, w in enumerate(warmup) if k / (n - 1) <= 0.5)
    assert warmup[-1] == 0.0 and all(a >= b for a, b in zip(warmup, warmup[1:], strict=False))


@settings(deadline=None, max_examples=30)
@given(
    name=st.sampled_from(["linear", "cosine", "quadratic", "root", "sine", "arccos", "cubic"]),
    y=st.floats(0.0, 1.0),
)
def test_invert_kappa(name, y):
    scheduler = SCHEDULERS[name]()
    t = invert_kappa(scheduler, torch.tensor([y], dtype=torch.float64))
    assert 0.0 <= t.item() <= 1.0
    assert scheduler.kappa(t).item() == pytest.approx(y, abs=1e-6)
