"""The MaskGIT-style sampler's own properties (PAPER.md section 5): unmask counts per schedule,
confidence order, randomisation strengths and the ETM time from the unmasked fraction.
The sampler conformance suite in test_samplers.py covers the properties every sampler shares."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sampler_stubs import (  # noqa: F401  (one_thread: an autouse fixture)
    MASK,
    B,
    CountingNet,
    K,
    L,
    RandomNet,
    RowSpy,
    V,
    newly_unmasked,
    one_thread,
    partly_given,
    run,
)
from torch import Tensor

from models.registry import UnknownNameError
from models.samplers import RANDOMIZATIONS, UNMASK_SCHEDULES, MaskGITSampler
from models.samplers.counts import floor_counts
from models.samplers.maskgit import invert_kappa
from models.schedulers import SCHEDULERS, Cosine, Linear, Polynomial

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
def test_floor_counts_follow_the_schedule(schedule, n, N):
    want = expected_counts(schedule, n, N)
    assert min(want) >= 1  # these cases need no excess taken back
    assert floor_counts(schedule, n, N) == want


@settings(deadline=None, max_examples=60)
@given(schedule=st.sampled_from(sorted(SCHEDULE_WEIGHTS)), N=st.integers(1, 2000), data=st.data())
def test_floor_counts_partition_the_tokens(schedule, N, data):
    n = data.draw(st.integers(1, min(N, 64)))
    counts = floor_counts(schedule, n, N)
    assert len(counts) == n
    assert sum(counts) == N
    assert min(counts) >= 1


def test_maskgit_single_step_commits_everything():
    for schedule in UNMASK_SCHEDULES:
        assert floor_counts(schedule, 1, 37) == [37]
        out = run(MaskGITSampler(num_steps=1, schedule=schedule), RandomNet())
        assert out.nfe == 1 and torch.all(out.tokens != MASK)


@pytest.mark.parametrize("n, N", [(0, 10), (11, 10)])
def test_floor_counts_reject_bad_steps(n, N):
    with pytest.raises(ValueError):
        floor_counts("cosine", n, N)


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


@pytest.mark.parametrize("randomization", sorted(RANDOMIZATIONS))
def test_maskgit_reads_only_rows_it_may_commit(randomization):
    """Each call asks for logits of masked positions only, and of every position it commits; in
    random order the commits are known before the network is read, so exactly those."""
    spy = RowSpy(RandomNet())
    out = run(
        MaskGITSampler(num_steps=5, randomization=randomization),
        spy.net,
        denoiser=spy,
        return_trajectory=True,
    )
    assert len(spy.asked) == out.nfe == 5
    for rows, before, after in zip(spy.asked, out.trajectory, out.trajectory[1:], strict=False):
        asked = torch.zeros(B * L, dtype=torch.bool).index_fill(0, rows, True).view(B, L)
        committed = newly_unmasked(before, after)
        assert torch.all(asked <= (before == MASK)) and torch.all(committed <= asked)
        if randomization == "random":
            assert torch.equal(asked, committed)


@settings(deadline=None, max_examples=40)
@given(
    seed=st.integers(0, 2**31 - 1),
    count=st.integers(1, 30),
    levels=st.sampled_from([3, 8, 1000]),  # few levels: ties everywhere; many: almost none
)
def test_pruned_scoring_commits_what_scoring_everything_commits(seed, count, levels):
    """Scoring only the positions whose noise bound can still reach the top ``count``, drawing only
    those whose log p ceiling can (and all of them on a tie at that rank), commits the very
    positions and tokens full scoring commits."""
    B, L, num_masked = 3, 40, 30
    g = torch.Generator().manual_seed(seed)
    masked = torch.zeros(B, L, dtype=torch.bool)
    for b in range(B):
        masked[b, torch.randperm(L, generator=g)[:num_masked]] = True
    x = torch.where(masked, MASK, torch.randint(0, K, (B, L), generator=g))
    log_p = -torch.randint(0, levels, (B * L,), generator=g).float() / levels * 6  # <= 0, tied levels
    noise = torch.randint(-levels, levels, (B, L), generator=g).float() / levels * 4
    # what a row's logits tell of its log p before the draw: an upper bound, often exact
    ceiling = log_p + torch.randint(0, 3, (B * L,), generator=g).float() * torch.rand(B * L, generator=g)

    def draw(rows, need=None):
        rows = rows if need is None else rows[ceiling[rows] >= need]
        return rows, log_p[rows], rows % K

    sampler = MaskGITSampler()
    count = min(count, num_masked)
    pruned = sampler._commit_most_confident(draw, x, masked, noise, count, prune=True)
    full = sampler._commit_most_confident(draw, x, masked, noise, count, prune=False)
    assert torch.equal(pruned, full)


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


@pytest.mark.parametrize("randomization", ["linear", "none", "random"])
@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_drawing_in_blocks_of_rows_changes_no_bit(monkeypatch, randomization, cfg_scale):
    """The draw gathers, guides and samples DRAW_ROWS rows at a time (for the cache); each row's
    draw is its own, so blocks of 3 rows (uneven, many per step) give the very tokens of one block."""
    from sampler_stubs import NUM_CLASSES

    import models.samplers.maskgit as maskgit_module
    from models.samplers import Denoiser

    net = RandomNet()
    y = torch.tensor([0, 1, 2, 0])
    sampler = MaskGITSampler(num_steps=5, randomization=randomization, temperature=0.9)

    def tokens() -> Tensor:
        denoiser = Denoiser(net, cfg_scale=cfg_scale, null_class=NUM_CLASSES, cfg_batched=True)
        return run(sampler, net, seed=3, denoiser=denoiser, y=y).tokens

    whole = tokens()
    monkeypatch.setattr(maskgit_module, "DRAW_ROWS", 3)
    assert torch.equal(tokens(), whole)
