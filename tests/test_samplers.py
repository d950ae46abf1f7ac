"""Samplers: one conformance suite every configuration passes unchanged, then Euler- and MaskGIT-
specific properties derived from the math (PAPER.md section 5).

The networks are tiny deterministic stand-ins that count their own calls, so NFE is checked against
an independent count.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sampler_stubs import (  # noqa: F401  (one_thread: an autouse fixture)
    MASK,
    NUM_CLASSES,
    B,
    ConstantNet,
    CountingNet,
    K,
    L,
    OracleNet,
    RandomNet,
    RowSpy,
    V,
    flat,
    newly_unmasked,
    one_thread,
    partly_given,
    run,
    uniform_net,
)

from models.registry import UnknownNameError
from models.samplers import (
    COUNT_RULES,
    RANDOMIZATIONS,
    SAMPLERS,
    UNMASK_SCHEDULES,
    Denoiser,
    EulerSampler,
    HaltonSampler,
    MaskGITSampler,
)
from models.samplers.denoiser import TIMING_ROUNDS
from models.schedulers import SCHEDULERS, Cosine, Cubic, Linear, Polynomial

# --- the configurations under test -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HaltonOn4x4(HaltonSampler):
    """The Halton sampler told that the L = 16 tokens are a 4 x 4 grid (the suite passes no grid)."""

    def sample(self, denoiser, **kw):
        return super().sample(denoiser, grids=((4, 4),), **kw)


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
    **{f"maskgit-{rule}-counts": MaskGITSampler(counts=rule) for rule in COUNT_RULES},
    **{f"halton-{rule}-counts": HaltonSampler(num_steps=8, counts=rule) for rule in COUNT_RULES},
    "halton-4x4-cosine": HaltonOn4x4(num_steps=5, schedule="cosine"),
    "halton-etm": HaltonSampler(num_steps=6, scheduler=Cosine()),
}
ALL = {**NEVER_REVISITING, **REVISITING}


@pytest.fixture(params=sorted(ALL))
def sampler(request):
    return ALL[request.param]


@pytest.fixture(params=sorted(NEVER_REVISITING))
def never_revisiting_sampler(request):
    return NEVER_REVISITING[request.param]


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
        assert first.cfg_mode is None
        # Per-call accounting: a second run on the same Denoiser reports its own calls only.
        second = run(sampler, net, denoiser=denoiser, seed=1)
        assert second.nfe == first.nfe and net.calls == 2 * first.nfe

    def test_nfe_with_cfg(self, sampler):
        y = torch.tensor([0, 1, 2, 1])
        batched_net, two_pass_net, default_net = RandomNet(), RandomNet(), RandomNet()

        def guided(net, cfg_batched):
            denoiser = Denoiser(net, cfg_scale=2.5, null_class=NUM_CLASSES, cfg_batched=cfg_batched)
            return run(sampler, net, y=y, seed=3, denoiser=denoiser)

        batched, two_pass, default = (
            guided(batched_net, True),
            guided(two_pass_net, False),
            guided(default_net, None),
        )
        assert batched.nfe == batched_net.calls and batched.cfg_mode == "batched"
        assert batched.nfe_unbatched == 2 * batched.nfe
        assert two_pass_net.calls == two_pass.nfe_unbatched == batched.nfe_unbatched
        assert two_pass.cfg_mode == "two-pass"
        # The NFE does not depend on how the halves ran: a guided step is one evaluation.
        assert two_pass.nfe == default.nfe == batched.nfe
        assert default.nfe_unbatched == batched.nfe_unbatched
        # The default times both ways on CPU, TIMING_ROUNDS times each (1 + 2 forwards a round) on
        # its first step, then runs its choice.
        per_step = 1 if default.cfg_mode == "batched" else 2
        assert default_net.calls == per_step * (default.nfe - 1) + 3 * TIMING_ROUNDS
        # How the branches are batched changes neither the NFE nor the samples.
        assert torch.equal(batched.tokens, two_pass.tokens)
        assert torch.equal(batched.tokens, default.tokens)

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
    assert SAMPLERS.names() == ["euler", "halton", "maskgit"]
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
    [
        EulerSampler(num_steps=4),
        EulerSampler(num_steps=4, argmax_fill=True),
        MaskGITSampler(num_steps=4),
        HaltonSampler(num_steps=4),
    ],
    ids=["euler", "euler-argmax", "maskgit", "halton"],
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


@pytest.mark.parametrize(
    "sampler",
    [EulerSampler(num_steps=6), EulerSampler(num_steps=3, argmax_fill=True, temperature=0.5, top_k=3)],
    ids=["euler", "euler-argmax-T0.5-top-k"],
)
def test_euler_reads_only_the_rows_it_unmasks(sampler):
    """Each call asks for the logits of exactly the positions that leave [MASK] in that step."""
    spy = RowSpy(RandomNet(), cfg_scale=2.0, null_class=NUM_CLASSES)
    out = run(sampler, spy.net, denoiser=spy, y=torch.tensor([0, 1, 2, 0]), return_trajectory=True)
    assert len(spy.asked) == sampler.num_steps == len(out.trajectory) - 1
    for rows, before, after in zip(spy.asked, out.trajectory, out.trajectory[1:], strict=False):
        assert torch.equal(rows, flat(newly_unmasked(before, after)))


def test_euler_single_step_unmasks_everything():
    out = run(EulerSampler(num_steps=1), RandomNet())
    assert out.nfe == 1 and torch.all(out.tokens != MASK)


@pytest.mark.parametrize("kwargs", [{"num_steps": 0}, {"num_steps": 1, "reference_grid": True}])
def test_euler_invalid_steps(kwargs):
    with pytest.raises(ValueError):
        EulerSampler(**kwargs)
