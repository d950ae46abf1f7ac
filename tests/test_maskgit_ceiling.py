"""MaskGIT's pruning ceiling (models.samplers.maskgit._can_reach): a position is left undrawn only
when no class of its sampling distribution reaches the log p it would need, so the committed
tokens are exactly those of drawing every candidate; and on near-uniform logits (a network early
in training, or a random one) it does rule positions out."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sampler_stubs import NUM_CLASSES, RandomNet, run

import models.samplers.maskgit as maskgit
from models.samplers import Denoiser, MaskGITSampler


def _ceiling_case(seed: int, scale: float, temperature: float, mask: str, n: int = 12, v: int = 9):
    """Raw logits (n, v), the sampler, and its arguments for one case of [MASK] exclusion."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(n, v, generator=g) * scale + torch.randn(n, 1, generator=g) * 20  # any offset
    seq_len = 4
    rows = torch.arange(n) + 3
    mask_id = {
        "int": v - 1,
        "outside": v + 5,  # an id outside V: no class excluded
        "per-row": torch.randint(0, v, (seq_len,), generator=g),  # one [MASK] per modality
    }[mask]
    sampler = MaskGITSampler(temperature=temperature)
    return raw, sampler, rows, mask_id, seq_len


@settings(deadline=None, max_examples=120)
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([1e-3, 0.3, 3.0, 40.0]),
    temperature=st.sampled_from([0.25, 1.0, 3.0]),
    mask=st.sampled_from(["int", "outside", "per-row"]),
)
def test_a_row_is_ruled_out_only_when_no_class_reaches_the_need(seed, scale, temperature, mask) -> None:
    raw, sampler, rows, mask_id, seq_len = _ceiling_case(seed, scale, temperature, mask)
    support = sampler._support_mean(raw.clone(), rows, mask_id, seq_len)
    logits = sampler.sampling_logits(raw.clone(), rows, mask_id, seq_len)
    best = torch.log_softmax(logits.double(), dim=-1).amax(dim=-1)  # (n,) the most any draw reaches
    top = logits.amax(dim=-1)
    assert _all(maskgit._can_reach(top, support, best.float()))  # reachable: never ruled out
    slightly_above = best + 1e-3 * (1 + best.abs())
    beyond = maskgit._can_reach(top, support, slightly_above.float())
    ceiling = top.double() - support[0] - support[1].log()  # Jensen's bound, the ceiling itself
    assert torch.all(ceiling >= best - 1e-6 * (1 + best.abs()))  # an upper bound of every log p
    assert torch.all(beyond | (slightly_above > ceiling))  # ruled out only above the ceiling


def _all(values: torch.Tensor) -> bool:
    return bool(values.all())


def test_near_uniform_rows_are_ruled_out_below_log_one_over_k() -> None:
    raw, sampler, rows, mask_id, seq_len = _ceiling_case(0, 1e-3, 1.0, "int")
    support = sampler._support_mean(raw.clone(), rows, mask_id, seq_len)
    top = sampler.sampling_logits(raw.clone(), rows, mask_id, seq_len).amax(dim=-1)
    classes = raw.shape[1] - 1  # [MASK] excluded
    need = torch.full_like(top, -math.log(classes) + 0.05)  # just above a uniform row's log p
    assert not bool(maskgit._can_reach(top, support, need).any())


def test_top_k_or_top_p_turns_the_ceiling_off() -> None:
    raw, _, rows, mask_id, seq_len = _ceiling_case(0, 1.0, 1.0, "int")
    for sampler in (MaskGITSampler(top_k=3), MaskGITSampler(top_p=0.9)):
        assert sampler._support_mean(raw.clone(), rows, mask_id, seq_len) is None


class FlatNet(RandomNet):
    """RandomNet's logits shrunk: near-uniform rows, as a network early in training gives."""

    def logits(self, x_t, t, y):
        return 0.05 * super().logits(x_t, t, y)


@pytest.mark.parametrize("options", [{}, {"temperature": 0.7}, {"cfg_scale": 2.5}, {"exclude_mask": False}])
def test_samples_are_the_same_bits_as_drawing_every_candidate(options, monkeypatch) -> None:
    """Near-uniform logits (the ceiling rules most candidates out) through a real sampler run,
    with the ceiling and with every candidate drawn: identical tokens."""
    cfg_scale = options.pop("cfg_scale", 1.0)
    sampler = MaskGITSampler(num_steps=4, **options)
    seq_len, batch = 48, 5

    def sample():
        denoiser = Denoiser(FlatNet(seq_len), cfg_scale=cfg_scale, null_class=NUM_CLASSES)
        y = torch.zeros(batch, dtype=torch.long) if cfg_scale != 1.0 else None
        return run(sampler, None, denoiser=denoiser, y=y, seq_len=seq_len, batch_size=batch).tokens

    drawn = []
    real = maskgit._can_reach

    def spy(top, support, need):
        out = real(top, support, need)
        drawn.append((int(out.sum()), out.numel()))
        return out

    monkeypatch.setattr(maskgit, "_can_reach", spy)
    pruned = sample()
    monkeypatch.setattr(
        maskgit, "_can_reach", lambda top, support, need: torch.ones_like(top, dtype=torch.bool)
    )
    everything = sample()
    assert torch.equal(pruned, everything)
    kept, asked = sum(k for k, _ in drawn), sum(n for _, n in drawn)
    assert kept < asked  # the ceiling ruled candidates out: the equality above was put to the test
