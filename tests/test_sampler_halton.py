"""The Halton-order sampler's own properties (Besnier et al., ICLR 2025): its order is a permutation
of any grid, follows the 2D Halton sequence on (H, W), repeats per frame on (T, H, W), and the
sampler commits exactly that order, reading only the rows it commits. The conformance suite in
test_samplers.py covers what every sampler shares."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sampler_stubs import (  # noqa: F401  (one_thread: an autouse fixture)
    MASK,
    B,
    L,
    RandomNet,
    RowSpy,
    newly_unmasked,
    one_thread,
    partly_given,
    perturbed_dit,
    run,
)

from harness.generation.sampling import generate
from models.backbone import ModelConfig
from models.modalities import Layout, Modality
from models.samplers import HaltonSampler, commit_counts, halton_order
from models.samplers.halton import halton_ranks, radical_inverse
from models.schedulers import Cosine, Linear


def phi(i: int, base: int) -> Fraction:
    """The radical inverse, digit by digit, as a fraction."""
    out, scale = Fraction(0), Fraction(1, base)
    while i:
        i, digit = divmod(i, base)
        out += digit * scale
        scale /= base
    return out


def halton_cells_by_definition(H: int, W: int) -> list[int]:
    """Row-major cells in order of first visit by (phi_2(i), phi_3(i)), i = 1, 2, ..."""
    seen: dict[int, None] = {}
    i = 0
    while len(seen) < H * W:
        i += 1
        cell = math.floor(phi(i, 2) * H) * W + math.floor(phi(i, 3) * W)
        seen.setdefault(cell)
    return list(seen)


def test_the_order_starts_as_the_halton_sequence_by_hand():
    # (1/2, 1/3), (1/4, 2/3), (3/4, 1/9), (1/8, 4/9), (5/8, 7/9), (3/8, 2/9), (7/8, 5/9), (1/16, 8/9)
    cells = [(2, 1), (1, 2), (3, 0), (0, 1), (2, 3), (1, 0), (3, 2), (0, 3)]
    assert halton_order((4, 4)).tolist()[:8] == [r * 4 + c for r, c in cells]


@settings(deadline=None, max_examples=40)
@given(H=st.integers(1, 24), W=st.integers(1, 24))
def test_a_2d_order_follows_the_halton_sequence(H, W):
    assert halton_order((H, W)).tolist() == halton_cells_by_definition(H, W)


@settings(deadline=None, max_examples=60)
@given(grid=st.lists(st.integers(1, 12), min_size=1, max_size=4).map(tuple))
def test_the_order_is_a_permutation_of_any_grid(grid):
    order = halton_order(grid)
    assert order.dtype == torch.long
    assert sorted(order.tolist()) == list(range(math.prod(grid)))


def test_large_grids_are_covered():
    for grid in [(64, 64), (32, 32), (1, 4096), (4096,), (3, 100)]:
        assert sorted(halton_order(grid).tolist()) == list(range(math.prod(grid)))


@settings(deadline=None, max_examples=30)
@given(T=st.integers(1, 5), H=st.integers(1, 9), W=st.integers(1, 9))
def test_video_frames_share_the_2d_order_and_fill_in_step(T, H, W):
    order = halton_order((T, H, W)).view(H * W, T)  # rank-major: all T frames at each rank
    plane = halton_order((H, W))
    assert torch.equal(order % (H * W), plane[:, None].expand(H * W, T))
    assert torch.equal(order // (H * W), torch.arange(T).expand(H * W, T))


@settings(deadline=None, max_examples=30)
@given(base=st.sampled_from([2, 3, 5]), index=st.integers(0, 10**6))
def test_radical_inverse_is_exact(base, index):
    digits = max(1, math.ceil(math.log(index + 1, base)) + 1)
    numerator = radical_inverse(torch.tensor([index]), base, digits)
    assert Fraction(int(numerator), base**digits) == phi(index, base)


def test_segments_interleave_by_the_fraction_of_their_order():
    ranks = halton_ranks(((2, 2), (2, 2)))  # two equal segments alternate, the first first
    order = ranks.argsort().tolist()
    first, second = halton_order((2, 2)).tolist(), (halton_order((2, 2)) + 4).tolist()
    assert order == [p for pair in zip(first, second, strict=True) for p in pair]
    # (4,): van der Corput 1/2, 1/4, 3/4, 1/8 -> cells 2, 1, 3, 0; (2,): 1/2, 1/4 -> 1, 0 (at 4 + 1, 4 + 0).
    # A rank of the 2-long segment counts double: keys 0, 1, 2, 3 against 0, 2.
    unequal = halton_ranks(((4,), (2,)))
    assert unequal.argsort().tolist() == [2, 5, 1, 3, 4, 0]


# --- the sampler ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("grids", [None, ((4, 4),), ((2, 8),), ((2, 2, 4),), ((2, 4), (8,))])
@pytest.mark.parametrize("given_tokens", [False, True])
def test_the_sampler_commits_the_halton_order(grids, given_tokens):
    """Step k commits the next counts[k] masked positions of the order, and reads only their logits;
    given tokens are skipped by the order and never change."""
    n = 5
    x_init = partly_given(num_masked=11) if given_tokens else None
    spy = RowSpy(RandomNet(), cfg_scale=2.0, null_class=3)
    sampler = HaltonSampler(num_steps=n, schedule="linear", counts="floor")
    out = run(sampler, spy.net, denoiser=spy, y=torch.tensor([0, 1, 2, 0]), x_init=x_init,
              return_trajectory=True, grids=grids)  # fmt: skip
    masked = out.trajectory[0] == MASK
    counts = commit_counts("floor", "linear", n, int(masked[0].sum()))
    ranks = halton_ranks(grids or ((L,),))
    done = 0
    for k, (rows, before, after) in enumerate(
        zip(spy.asked, out.trajectory, out.trajectory[1:], strict=False)
    ):
        committed = newly_unmasked(before, after)
        for b in range(B):
            order = [p for p in ranks.argsort().tolist() if masked[b, p]]
            assert sorted(committed[b].nonzero().squeeze(1).tolist()) == sorted(
                order[done : done + counts[k]]
            )
        asked = torch.zeros(B * L, dtype=torch.bool).index_fill(0, rows, True).view(B, L)
        assert torch.equal(asked, committed)
        done += counts[k]
        if x_init is not None:
            assert torch.equal(after[~masked], x_init[~masked])
    assert torch.all(out.tokens != MASK)


@pytest.mark.parametrize("scheduler", [Linear(), Cosine()], ids=repr)
def test_an_etm_is_called_at_the_unmasked_fraction(scheduler):
    net = RandomNet()
    out = run(HaltonSampler(num_steps=6, scheduler=scheduler), net, return_trajectory=True)
    assert len(net.ts) == out.nfe == 6
    for t, state in zip(net.ts, out.trajectory, strict=False):
        fraction = (state != MASK).double().mean(dim=1)
        torch.testing.assert_close(scheduler.kappa(t.double()), fraction, rtol=0, atol=1e-5)


def test_an_itm_is_called_at_zero():
    net = RandomNet()
    run(HaltonSampler(num_steps=4), net)
    assert all(torch.all(t == 0) for t in net.ts)


def test_refusals():
    with pytest.raises(ValueError, match="grids"):
        run(HaltonSampler(num_steps=4), RandomNet(), grids=((3, 3),))
    x_init = partly_given(num_masked=6)
    x_init[0, x_init[0] != MASK] = MASK  # row 0 now has more masked tokens
    with pytest.raises(ValueError, match="same number of masked tokens"):
        run(HaltonSampler(num_steps=4), RandomNet(), x_init=x_init)
    with pytest.raises(ValueError, match="num_steps"):
        HaltonSampler(num_steps=0)
    with pytest.raises(ValueError, match="num_steps"):
        run(HaltonSampler(num_steps=L + 1), RandomNet())


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(vocab_size=6, grid=(2, 4, 4), depth=1, width=32, heads=2),  # video: (T, H, W)
        ModelConfig.joint(
            Layout((Modality("a", 6, (4, 4)), Modality("b", 3, (2, 4)))), depth=1, width=32, heads=2
        ),
    ],
    ids=["video", "joint"],
)
def test_generation_hands_the_sampler_the_models_grids(config):
    """``generate`` passes the segments' grids (ModelConfig.segments), and a real network samples."""
    seen = []

    @dataclasses.dataclass(frozen=True)
    class Recording(HaltonSampler):
        def sample(self, denoiser, **kw):
            seen.append(kw["grids"])
            return super().sample(denoiser, **kw)

    net = perturbed_dit(config)
    out = generate(net, Recording(num_steps=4), num_samples=3, batch_size=2)
    assert seen == [tuple(grid for grid, _ in config.segments)] * 2
    assert out.tokens.shape == (3, config.seq_len) and out.nfe == 4
    assert torch.all(out.tokens < torch.as_tensor(config.mask_id))
