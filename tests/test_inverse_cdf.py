"""The categorical draw every sampler shares (models.samplers.draw) is exact at the vocabulary the
paper uses (16,384 codes): classes far below float32 resolution of the running sum keep their
mass, where the float32 draw the samplers used before quantised it away; every class's interval
of [0, 1) is its probability to within a factor 1 +- 1e-6, with irregular masses whose float32
block sums round."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.samplers.draw import BLOCK, categorical, inverse_cdf

V, HEAD, P_TAIL = 16_384, 384, 2e-8  # the last 16,000 codes at 2e-8 each, the rest on the first 384


def tail_heavy_row() -> torch.Tensor:
    """(1, V) float32: what a softmax over the paper's codebook can hand the draw."""
    probs = torch.full((1, V), P_TAIL)
    probs[0, :HEAD] = (1 - (V - HEAD) * P_TAIL) / HEAD
    return probs


def float32_inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The draw before: float32 running sum, float32 uniforms."""
    cdf = probs.cumsum(dim=-1)
    return torch.searchsorted(cdf, u.float() * cdf[:, -1:], right=True).clamp_max(probs.shape[-1] - 1)


def test_the_tail_below_float32_resolution_is_drawn_at_its_rate():
    """10^6 draws: the tail (mass 3.2e-4) is hit 320 +- 4 sigma times, sigma = sqrt(320)."""
    draws = 10**6
    u = torch.rand(1, draws, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hits = int((inverse_cdf(tail_heavy_row(), u) >= HEAD).sum())
    expected = draws * (V - HEAD) * P_TAIL  # 320
    assert abs(hits - expected) <= 4 * math.sqrt(expected), hits


def test_every_class_is_drawn_exactly_on_its_own_interval():
    """The uniform at the middle of each class's interval of the exact CDF draws that class: all
    16,000 tail classes, each 2e-8 wide. The float32 draw gets most of them wrong: near 1 its
    running sum moves in steps of 6e-8 (so about two tail classes in three have no mass and the
    rest three times theirs), and its uniforms cannot tell the classes apart."""
    probs = tail_heavy_row()
    masses = [float(p) for p in probs[0]]  # the float32 values, exactly
    edges = [0.0]
    for mass in masses:
        edges.append(math.fsum([edges[-1], mass]))
    total = edges[-1]
    u = torch.tensor(
        [[(a + b) / 2 / total for a, b in zip(edges[:-1], edges[1:], strict=True)]], dtype=torch.float64
    )
    assert torch.equal(inverse_cdf(probs, u), torch.arange(V)[None])
    wrong = int((float32_inverse_cdf(probs, u) != torch.arange(V)).sum())
    assert wrong > (V - HEAD) // 2, wrong


@settings(deadline=None, max_examples=50)
@given(
    logits=st.lists(st.floats(-30, 30), min_size=2, max_size=40),
    seed=st.integers(0, 2**31 - 1),
    zeroed=st.sets(st.integers(0, 39), max_size=20),
)
def test_never_draws_a_class_without_mass(logits, seed, zeroed):
    probs = torch.tensor(logits).softmax(dim=-1)[None]  # (1, V)
    zeroed = {i for i in zeroed if i < probs.shape[1]}
    if len(zeroed) == probs.shape[1]:
        zeroed.pop()
    probs[0, list(zeroed)] = 0.0
    u = torch.rand(1, 500, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u[0, :2] = torch.tensor([0.0, 1 - 2**-53], dtype=torch.float64)  # the ends of [0, 1)
    drawn = inverse_cdf(probs, u)
    assert torch.all(probs[0, drawn[0]] > 0)


@pytest.mark.parametrize("shape", [(5,), (5, 3)])
def test_one_draw_per_row_or_several(shape):
    probs = torch.tensor([[0.0, 1.0, 0.0]] * 5)
    u = torch.rand(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    drawn = inverse_cdf(probs, u)
    assert drawn.shape == shape and torch.all(drawn == 1)
    assert torch.equal(probs, torch.tensor([[0.0, 1.0, 0.0]] * 5))  # the caller's probs are left alone


def interval_widths(probs: torch.Tensor) -> torch.Tensor:
    """probs (1, V) -> (V,) float64: the length of the set of u in [0, 1) that draws each class,
    its lower end found by bisection (the draw is monotone in u), to 2^-60."""
    v = probs.shape[1]
    classes = torch.arange(v)
    lo, hi = torch.zeros(v, dtype=torch.float64), torch.ones(v, dtype=torch.float64)
    for _ in range(60):
        mid = (lo + hi) / 2
        reached = inverse_cdf(probs, mid[None])[0] >= classes  # (V,)
        hi, lo = torch.where(reached, mid, hi), torch.where(reached, lo, mid)
    return torch.diff(torch.cat([hi, torch.ones(1, dtype=torch.float64)]))


@settings(deadline=None, max_examples=40)
@given(
    v=st.integers(2, 3 * BLOCK + 5),
    scale=st.floats(0.5, 40.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_every_class_gets_its_probability_to_one_part_in_a_million(v, scale, seed):
    """Irregular masses spanning many orders of magnitude, across several blocks and a partial
    last one: each class's share of [0, 1) is p_i / sum p within a factor 1 +- 1e-6."""
    logits = torch.randn(1, v, generator=torch.Generator().manual_seed(seed)) * scale
    probs = logits.softmax(dim=-1)  # (1, V) float32
    exact = probs[0].double() / probs[0].double().sum()
    widths = interval_widths(probs)
    assert torch.all((widths - exact).abs() <= 1e-6 * exact + 1e-15), (widths / exact - 1).abs().max()


@settings(deadline=None, max_examples=40)
@given(v=st.integers(2, 2 * BLOCK + 3), seed=st.integers(0, 2**31 - 1))
def test_categorical_draws_from_the_softmax_and_returns_its_log_probability(v, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(50, v, generator=gen) * 5
    logits[:, 0] = float("-inf")  # an excluded class ([MASK]) is never drawn
    u = torch.rand(50, generator=gen, dtype=torch.float64)
    weights = (logits - logits.amax(dim=-1, keepdim=True)).exp()
    drawn, log_p = categorical(logits.clone(), u)
    assert torch.equal(drawn, inverse_cdf(weights, u)) and torch.all(drawn > 0)
    expected = logits.double().log_softmax(dim=-1).gather(1, drawn[:, None]).squeeze(1)
    assert log_p.dtype == torch.float32 and torch.allclose(log_p.double(), expected, atol=1e-5, rtol=1e-6)
