"""Guidance and logit processing: CFG algebra, translators, temperature, top-k / top-p, the Denoiser."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sampler_stubs import perturbed_dit as perturbed

from models.backbone import DiscreteDiT, ModelConfig
from models.guidance import (
    apply_temperature,
    cfg_combine,
    cfg_combine_,
    cfg_scale_from_maskgit_weight,
    exclude_class,
    exclude_class_,
    maskgit_weight_from_cfg_scale,
    process_logits,
    temperature_from_multiplier,
    top_k_filter,
    top_p_filter,
)
from models.samplers import Denoiser

scales = st.floats(-4.0, 8.0, allow_nan=False)
seeds = st.integers(0, 2**31 - 1)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@settings(deadline=None, max_examples=25)
@given(s=scales, seed=seeds)
def test_cfg_combine_is_u_plus_s_c_minus_u(s, seed):
    c, u = randn(2, 3, 5, seed=seed), randn(2, 3, 5, seed=seed + 1)
    torch.testing.assert_close(cfg_combine(c, u, s), u + s * (c - u))
    # The other codebases' form c + w (c - u) with w = s - 1 is the same logits.
    w = maskgit_weight_from_cfg_scale(s)
    torch.testing.assert_close(cfg_combine(c, u, s), c + w * (c - u))


def test_cfg_combine_special_scales():
    c, u = randn(2, 3, 5, seed=1), randn(2, 3, 5, seed=2)
    torch.testing.assert_close(cfg_combine(c, u, 1.0), c)
    torch.testing.assert_close(cfg_combine(c, u, 0.0), u)
    torch.testing.assert_close(cfg_combine(c, u, 2.0), 2 * c - u)


@settings(deadline=None, max_examples=25)
@given(s=scales, w=scales)
def test_cfg_translators_round_trip(s, w):
    assert maskgit_weight_from_cfg_scale(s) == pytest.approx(s - 1)
    assert cfg_scale_from_maskgit_weight(w) == pytest.approx(w + 1)
    assert cfg_scale_from_maskgit_weight(maskgit_weight_from_cfg_scale(s)) == pytest.approx(s)
    assert maskgit_weight_from_cfg_scale(cfg_scale_from_maskgit_weight(w)) == pytest.approx(w)


@settings(deadline=None, max_examples=25)
@given(beta=st.floats(0.05, 20.0), seed=seeds)
def test_temperature_translator(beta, seed):
    """Multiplying logits by beta is dividing by T = 1 / beta; the map is its own inverse."""
    temperature = temperature_from_multiplier(beta)
    assert temperature == pytest.approx(1 / beta)
    assert temperature_from_multiplier(temperature) == pytest.approx(beta)
    logits = randn(4, 6, seed=seed)
    torch.testing.assert_close(apply_temperature(logits, temperature), logits * beta)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_temperature_and_multiplier_must_be_positive(bad):
    with pytest.raises(ValueError):
        apply_temperature(torch.zeros(3), bad)
    with pytest.raises(ValueError):
        temperature_from_multiplier(bad)


@settings(deadline=None, max_examples=25)
@given(T=st.floats(0.05, 10.0), seed=seeds)
def test_temperature_divides(T, seed):
    logits = randn(3, 7, seed=seed)
    torch.testing.assert_close(apply_temperature(logits, T), logits / T)
    # T < 1 sharpens: the top probability does not fall.
    p1, pT = logits.softmax(-1).amax(-1), apply_temperature(logits, T).softmax(-1).amax(-1)
    assert torch.all(pT >= p1 - 1e-12) if T < 1 else torch.all(pT <= p1 + 1e-12)


@settings(deadline=None, max_examples=30)
@given(V=st.integers(2, 12), k=st.integers(1, 12), seed=seeds)
def test_top_k_keeps_exactly_the_k_largest(V, k, seed):
    logits = randn(4, V, seed=seed)  # continuous: no ties
    out = top_k_filter(logits, k)
    kept = torch.isfinite(out)
    assert torch.all(kept.sum(-1) == min(k, V))
    torch.testing.assert_close(out[kept], logits[kept])
    # Every kept logit beats every dropped one.
    for row, keep in zip(logits, kept, strict=True):
        if (~keep).any():
            assert row[keep].min() > row[~keep].max()


def test_top_k_none_or_zero_keeps_all():
    logits = randn(2, 5)
    assert torch.equal(top_k_filter(logits, None), logits)
    assert torch.equal(top_k_filter(logits, 0), logits)


def _minimal_nucleus(row: list[float], p: float) -> set[int]:
    probs = [math.exp(v) for v in row]
    total = sum(probs)
    order = sorted(range(len(row)), key=lambda i: -row[i])
    kept, mass = set(), 0.0
    for i in order:
        kept.add(i)
        mass += probs[i] / total
        if mass >= p:
            break
    return kept


@settings(deadline=None, max_examples=40)
@given(V=st.integers(2, 10), p=st.floats(0.01, 0.99), seed=seeds)
def test_top_p_keeps_the_minimal_nucleus(V, p, seed):
    logits = randn(3, V, seed=seed) * 2
    probs = logits.softmax(-1)
    # Skip draws where p lies on a cumulative-mass boundary (float rounding decides there).
    cums = probs.sort(-1, descending=True).values.cumsum(-1)
    assume(bool(((cums - p).abs() > 1e-6).all()))
    out = top_p_filter(logits, p)
    for b in range(3):
        kept = {i for i in range(V) if math.isfinite(out[b, i].item())}
        assert kept == _minimal_nucleus(logits[b].tolist(), p)
        mass = probs[b, sorted(kept)].sum().item()
        assert mass >= p  # the kept set reaches p ...
        smallest = min(probs[b, i].item() for i in kept)
        assert mass - smallest < p  # ... and is minimal: dropping its least likely token falls short


@settings(deadline=None, max_examples=25)
@given(V=st.integers(2, 10), p=st.floats(0.0, 1.0), seed=seeds)
def test_top_p_always_keeps_the_top_token(V, p, seed):
    """Any p in [0, 1] leaves a distribution to sample from: the most likely token stays."""
    logits = randn(3, V, seed=seed)
    out = top_p_filter(logits, p)
    top = logits.argmax(-1, keepdim=True)
    assert torch.all(torch.isfinite(out.gather(-1, top)))
    assert torch.all(torch.isfinite(out.softmax(-1)))


def test_top_p_none_or_one_keeps_all():
    logits = randn(2, 5)
    assert torch.equal(top_p_filter(logits, None), logits)
    assert torch.equal(top_p_filter(logits, 1.0), logits)


@settings(deadline=None, max_examples=20)
@given(V=st.integers(2, 10), seed=seeds, data=st.data())
def test_exclude_class_zeroes_its_probability(V, seed, data):
    class_id = data.draw(st.integers(0, V - 1))
    logits = randn(2, 3, V, seed=seed)
    logits[..., class_id] += 50  # most of the mass on the excluded class
    out = exclude_class(logits, class_id)
    probs = out.softmax(-1)
    assert torch.all(probs[..., class_id] == 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, dtype=torch.float64))
    others = [i for i in range(V) if i != class_id]
    torch.testing.assert_close(out[..., others], logits[..., others])
    assert logits[..., class_id].min() > 40, "input must not be modified in place"
    assert exclude_class(logits, None) is logits


def test_process_logits_order():
    """Exclude [MASK], divide by T, then top-k, then top-p: checked against a hand-built pipeline."""
    logits = torch.tensor([[3.0, 1.0, 0.5, -1.0, 10.0]])  # class 4 plays [MASK]
    out = process_logits(logits, temperature=0.5, top_k=3, top_p=None, mask_id=4)
    want = torch.tensor([[6.0, 2.0, 1.0, -math.inf, -math.inf]])
    assert torch.equal(out, want)
    out = process_logits(logits, temperature=2.0, top_k=None, top_p=0.5, mask_id=4)
    # After /2: [1.5, .5, .25, -.5]; softmax top prob = e^1.5 / sum > 0.5: only class 0 stays.
    assert torch.isfinite(out).tolist() == [[True, False, False, False, False]]


# --- the Denoiser: batched vs two-pass CFG and NFE counting ---------------------------------------

NUM_CLASSES = 5


def perturbed_dit(timestep: str = "explicit", seed: int = 0) -> DiscreteDiT:
    config = ModelConfig(
        vocab_size=6,
        grid=(3, 4),
        num_classes=NUM_CLASSES,
        timestep=timestep,
        size="tiny",
        depth=1,
        width=32,
        heads=2,
    )
    return perturbed(config, seed)


class CountingNet(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.calls, self.rows = net, 0, 0

    def forward(self, x_t, t, y):
        self.calls += 1
        self.rows += x_t.shape[0]
        return self.net(x_t, t, y)


@settings(deadline=None, max_examples=10)
@given(s=st.floats(-2.0, 6.0).filter(lambda s: s != 1.0), B=st.integers(1, 4), seed=st.integers(0, 1000))
def test_batched_cfg_equals_two_forwards(s, B, seed):
    net = perturbed_dit(seed=seed % 3)
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randint(0, 7, (B, 12), generator=g)
    t = torch.rand(B, generator=g)
    y = torch.randint(0, NUM_CLASSES, (B,), generator=g)
    batched = Denoiser(net, cfg_scale=s, null_class=NUM_CLASSES, cfg_batched=True)(x_t, t, y)
    two_pass = Denoiser(net, cfg_scale=s, null_class=NUM_CLASSES, cfg_batched=False)(x_t, t, y)
    torch.testing.assert_close(batched, two_pass, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        c = net(x_t, t, y)
        u = net(x_t, t, torch.full_like(y, NUM_CLASSES))
    assert (c - u).abs().max() > 1e-3, "the perturbed network must depend on the class"
    torch.testing.assert_close(batched, u + s * (c - u), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "cfg_scale, batched, give_y, calls, unbatched, rows_per_call",
    [
        (2.0, True, True, 1, 2, 2),  # batched CFG: one call of a double batch
        (2.0, False, True, 2, 2, 1),  # the reference's two passes
        (1.0, True, True, 1, 1, 1),  # no guidance
        (3.0, True, False, 1, 1, 1),  # no condition: nothing to guide
    ],
)
def test_nfe_counting(cfg_scale, batched, give_y, calls, unbatched, rows_per_call):
    B, steps = 3, 4
    counted = CountingNet(perturbed_dit(timestep="implicit"))
    denoiser = Denoiser(counted, cfg_scale=cfg_scale, null_class=NUM_CLASSES, cfg_batched=batched)
    x_t = torch.full((B, 12), 6)
    y = torch.arange(B) if give_y else None
    for _ in range(steps):
        out = denoiser(x_t, torch.zeros(B), y)
        assert out.shape == (B, 12, 7)
    assert denoiser.count.calls == counted.calls == calls * steps
    assert denoiser.count.unbatched == unbatched * steps
    assert denoiser.count.rows == counted.rows == rows_per_call * B * calls * steps


def test_guidance_needs_a_null_class():
    with pytest.raises(ValueError):
        Denoiser(CountingNet(perturbed_dit()), cfg_scale=2.0, null_class=None)


@settings(deadline=None, max_examples=20)
@given(s=scales, seed=seeds)
def test_cfg_combine_gives_the_bits_of_the_plain_expression(s, seed):
    """Written into one buffer, u + s (c - u) still rounds as the out-of-place expression does."""
    c, u = randn(3, 4, 33, seed=seed).float(), randn(3, 4, 33, seed=seed + 1).float()
    assert torch.equal(cfg_combine(c, u, s), u + s * (c - u))
    assert torch.equal(cfg_combine_(c.clone(), u, s), u + s * (c - u))


@settings(deadline=None, max_examples=30)
@given(
    T=st.sampled_from([1.0, 0.7, 1.3]),
    top_k=st.sampled_from([None, 3]),
    top_p=st.sampled_from([None, 0.8]),
    mask=st.sampled_from(["none", "one", "per-position"]),
    seed=seeds,
)
def test_processing_gathered_rows_gives_the_bits_of_processing_the_grid(T, top_k, top_p, mask, seed):
    """Each step acts on one row at a time: process the rows a sampler reads, not the whole grid."""
    B, L, V = 3, 10, 37
    logits = randn(B, L, V, seed=seed).float() * 3
    mask_ids = {"none": None, "one": V - 1, "per-position": torch.tensor([V - 1] * 6 + [V - 2] * 4)}[mask]
    full = process_logits(logits, temperature=T, top_k=top_k, top_p=top_p, mask_id=mask_ids)
    rows = torch.randperm(B * L, generator=torch.Generator().manual_seed(seed % 1000))[:13].sort().values
    row_ids = mask_ids[rows % L] if mask == "per-position" else mask_ids
    gathered = logits.reshape(-1, V)[rows]  # a copy: processed in place
    out = process_logits(gathered, temperature=T, top_k=top_k, top_p=top_p, mask_id=row_ids, in_place=True)
    assert torch.equal(out, full.reshape(-1, V)[rows])


def test_process_logits_copies_unless_in_place():
    logits = torch.tensor([[3.0, 1.0, 0.5, -1.0, 10.0]])
    before = logits.clone()
    process_logits(logits, temperature=0.5, mask_id=4)
    assert torch.equal(logits, before), "input must not be modified unless in_place"
    assert process_logits(logits) is logits, "T = 1 and nothing to exclude: no copy, no division"
    out = process_logits(logits, temperature=0.5, mask_id=4, in_place=True)
    assert out is logits and torch.equal(logits, torch.tensor([[6.0, 2.0, 1.0, -2.0, -math.inf]]))


def test_exclude_class_per_row_of_gathered_rows():
    rows = torch.zeros(4, 6)
    exclude_class_(rows, torch.tensor([5, 4, 5, 0]))
    assert torch.isinf(rows).nonzero().tolist() == [[0, 5], [1, 4], [2, 5], [3, 0]]
