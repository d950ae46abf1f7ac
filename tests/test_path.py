"""Property tests for the masking path: x_t from (x_1, t), per-token times, MaskGIT corruption."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.losses import masked_positions
from models.path import expand_t, maskgit_corrupt, modality_t, sample_t, sample_x_t
from models.schedulers import SCHEDULERS, Cubic, Polynomial

K = 10  # data codes; [MASK] = K
MASK = K
SCHEDULER_NAMES = SCHEDULERS.names()


def data(B: int, L: int, seed: int = 0, k: int = K) -> torch.Tensor:
    return torch.randint(0, k, (B, L), generator=torch.Generator().manual_seed(seed))


def binomial_tol(p: float, n: int, sigmas: float = 5.0) -> float:
    return sigmas * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-9


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_t0_is_all_mask_and_t1_is_data(name):
    scheduler = SCHEDULERS[name]()
    x_1 = data(64, 256)
    g = torch.Generator().manual_seed(1)
    x_0 = sample_x_t(x_1, torch.zeros(64), scheduler, MASK, generator=g)
    assert torch.all(x_0 == MASK)
    x_t = sample_x_t(x_1, torch.ones(64), scheduler, MASK, generator=g)
    assert torch.equal(x_t, x_1)


@pytest.mark.parametrize(
    "scheduler",
    [SCHEDULERS[n]() for n in ["linear", "cosine", "root", "arccos"]]
    + [Cubic(a=0.5, b=2.5), Polynomial(n=3.0)],
    ids=repr,
)
@pytest.mark.parametrize("t", [0.1, 0.37, 0.5, 0.83])
def test_unmasked_fraction_matches_kappa(scheduler, t):
    B, L = 128, 256
    x_1 = data(B, L)
    x_t = sample_x_t(x_1, torch.full((B,), t), scheduler, MASK, generator=torch.Generator().manual_seed(2))
    kept = x_t != MASK
    kappa = scheduler.kappa(torch.tensor(t, dtype=torch.float64)).item()
    assert abs(kept.double().mean().item() - kappa) < binomial_tol(kappa, B * L)
    # Every token is either [MASK] or its data value.
    assert torch.equal(x_t[kept], x_1[kept])


def test_per_sample_t():
    scheduler = SCHEDULERS["cosine"]()
    t = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0])
    L = 40000
    x_1 = data(len(t), L)
    x_t = sample_x_t(x_1, t, scheduler, MASK, generator=torch.Generator().manual_seed(3))
    fractions = (x_t != MASK).double().mean(dim=1)
    for b, t_b in enumerate(t.tolist()):
        kappa = 1 - math.cos(math.pi * t_b / 2)
        assert abs(fractions[b].item() - kappa) < binomial_tol(kappa, L)


def test_per_token_t():
    scheduler = SCHEDULERS["linear"]()
    B, L = 8, 4000
    x_1 = data(B, L)
    # Exact: t = 0 positions are masked, t = 1 positions are data.
    t = (torch.arange(L) % 2).float().expand(B, L)
    x_t = sample_x_t(x_1, t, scheduler, MASK, generator=torch.Generator().manual_seed(4))
    assert torch.all(x_t[:, 0::2] == MASK)
    assert torch.equal(x_t[:, 1::2], x_1[:, 1::2])
    # Statistical: a column-wise t gives column-wise fractions.
    levels = torch.tensor([0.1, 0.4, 0.7, 0.95])
    t = levels[torch.arange(L) % 4].expand(B, L)
    x_t = sample_x_t(x_1, t, scheduler, MASK, generator=torch.Generator().manual_seed(5))
    for i, level in enumerate(levels.tolist()):
        fraction = (x_t[:, i::4] != MASK).double().mean().item()
        assert abs(fraction - level) < binomial_tol(level, B * L // 4)


def test_expand_t_shapes():
    x_1 = data(3, 5)
    assert expand_t(torch.rand(3), x_1).shape == (3, 5)
    t = torch.rand(3, 5)
    assert expand_t(t, x_1) is t
    with pytest.raises(ValueError):
        expand_t(torch.rand(3, 4), x_1)


@settings(deadline=None, max_examples=30)
@given(
    B=st.integers(1, 4),
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    data_=st.data(),
)
def test_modality_t_layout(B, lengths, data_):
    M = len(lengths)
    values = data_.draw(st.lists(st.floats(0.0, 1.0), min_size=B * M, max_size=B * M))
    t_m = torch.tensor(values, dtype=torch.float64).view(B, M)
    t = modality_t(t_m, lengths)
    assert t.shape == (B, sum(lengths))
    start = 0
    for m, length in enumerate(lengths):
        assert torch.all(t[:, start : start + length] == t_m[:, m : m + 1])
        start += length


def test_modality_t_rejects_wrong_count():
    with pytest.raises(ValueError):
        modality_t(torch.rand(2, 3), [4, 4])


def test_two_modalities_have_independent_times_and_mask_ids():
    """Image (K codes, [MASK] = K) + labels (C classes, [MASK] = C), each with its own t."""
    L_img, L_lab, C = 300, 200, 4
    B = 400
    scheduler = SCHEDULERS["linear"]()
    x_img = data(B, L_img, seed=6)
    x_lab = data(B, L_lab, seed=7, k=C)
    x_1 = torch.cat([x_img, x_lab], dim=1)
    mask_ids = torch.cat([torch.full((L_img,), K), torch.full((L_lab,), C)])  # (L,)
    g = torch.Generator().manual_seed(8)
    t_m = torch.rand(B, 2, generator=g)
    t_m[:4] = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    x_t = sample_x_t(x_1, modality_t(t_m, [L_img, L_lab]), scheduler, mask_ids, generator=g)
    masked = masked_positions(x_t, mask_ids)
    # Masked positions carry their own modality's [MASK] id; the rest carry data.
    assert torch.equal(x_t[masked], mask_ids.expand(B, -1)[masked])
    assert torch.equal(x_t[~masked], x_1[~masked])
    # Exact rows: each modality follows its own t.
    assert masked[0, :L_img].all() and not masked[0, L_img:].any()
    assert not masked[1, :L_img].any() and masked[1, L_img:].all()
    assert masked[2].all() and not masked[3].any()
    # Statistical: per-modality fractions follow the per-modality t, row by row.
    frac_img = (~masked[:, :L_img]).double().mean(1)
    frac_lab = (~masked[:, L_img:]).double().mean(1)
    assert torch.all((frac_img - t_m[:, 0].double()).abs() < 5 * math.sqrt(0.25 / L_img))
    assert torch.all((frac_lab - t_m[:, 1].double()).abs() < 5 * math.sqrt(0.25 / L_lab))
    # Independence of the two times: the fractions are (nearly) uncorrelated across samples.
    corr = torch.corrcoef(torch.stack([frac_img[4:], frac_lab[4:]]))[0, 1].item()
    assert abs(corr) < 5 / math.sqrt(B)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_same_seed_same_x_t(name):
    scheduler = SCHEDULERS[name]()
    x_1 = data(16, 64)
    t = torch.rand(16, generator=torch.Generator().manual_seed(0))
    a = sample_x_t(x_1, t, scheduler, MASK, generator=torch.Generator().manual_seed(9))
    b = sample_x_t(x_1, t, scheduler, MASK, generator=torch.Generator().manual_seed(9))
    c = sample_x_t(x_1, t, scheduler, MASK, generator=torch.Generator().manual_seed(10))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@settings(deadline=None, max_examples=20)
@given(B=st.integers(1, 64), eps=st.floats(0.0, 0.1), seed=st.integers(0, 2**31 - 1))
def test_sample_t_range(B, eps, seed):
    t = sample_t(B, eps=eps, generator=torch.Generator().manual_seed(seed))
    assert t.shape == (B,)
    assert torch.all(t >= eps) and torch.all(t <= 1.0)


@settings(deadline=None, max_examples=25)
@given(B=st.integers(1, 16), L=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
def test_maskgit_corrupt_masks_exactly_ceil_cos(B, L, seed):
    x_1 = data(B, L, seed=seed % 1000)
    x_t = maskgit_corrupt(x_1, MASK, generator=torch.Generator().manual_seed(seed))
    # The first draw of the generator is r ~ U(0, 1) per sample: reproduce it.
    r = torch.rand(B, generator=torch.Generator().manual_seed(seed)).double()
    expected = [math.ceil(math.cos(math.pi * r_b / 2) * L) for r_b in r.tolist()]
    counts = (x_t == MASK).sum(dim=1).tolist()
    for count, want, r_b in zip(counts, expected, r.tolist(), strict=True):
        # float32 rounding may move gamma L across an integer: allow that only when it is that close.
        exact = math.cos(math.pi * r_b / 2) * L
        near_integer = abs(exact - round(exact)) < 1e-4 * max(L, 1)
        assert count == want or (near_integer and abs(count - want) <= 1)
        assert 1 <= count <= L
    kept = x_t != MASK
    assert torch.equal(x_t[kept], x_1[kept])


def test_maskgit_corrupt_is_seeded_and_uniform_over_positions():
    x_1 = data(2000, 16)
    a = maskgit_corrupt(x_1, MASK, generator=torch.Generator().manual_seed(11))
    b = maskgit_corrupt(x_1, MASK, generator=torch.Generator().manual_seed(11))
    c = maskgit_corrupt(x_1, MASK, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Positions are chosen uniformly: every column is masked about equally often.
    per_column = (a == MASK).double().mean(dim=0)
    # E[masked fraction] = E[ceil(cos(pi r / 2) L)] / L, between 2/pi and 2/pi + 1/L.
    assert torch.all(per_column > 2 / math.pi - 0.05) and torch.all(per_column < 2 / math.pi + 1 / 16 + 0.05)
