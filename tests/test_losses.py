"""Losses against hand computation on tiny tensors, and the ELBO weight's properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.losses import LOSSES, all_token_ce, elbo, masked_ce, masked_positions
from models.path import sample_x_t
from models.schedulers import SCHEDULERS, Linear, Polynomial

# B = 2, L = 3, V = 3 ([MASK] = 2 in this toy vocabulary of K = 2 codes).
LOGITS = [
    [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [-1.0, 3.0, 1.0]],
    [[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [4.0, 1.0, -3.0]],
]
X_1 = [[0, 1, 1], [1, 0, 0]]
MASKED = [[True, False, True], [True, True, False]]


def hand_ce(row: list[float], target: int) -> float:
    """-log softmax(row)[target] = logsumexp(row) - row[target]."""
    return math.log(sum(math.exp(v) for v in row)) - row[target]


def hand_ces() -> list[list[float]]:
    return [[hand_ce(LOGITS[b][i], X_1[b][i]) for i in range(3)] for b in range(2)]


def tensors():
    return torch.tensor(LOGITS), torch.tensor(X_1), torch.tensor(MASKED)


def test_registry_names():
    assert set(LOSSES.names()) == {"masked_ce", "elbo", "all_token_ce"}
    assert LOSSES["masked_ce"] is masked_ce and LOSSES["elbo"] is elbo


def test_masked_ce_by_hand():
    logits, x_1, masked = tensors()
    ce = hand_ces()
    picked = [ce[b][i] for b in range(2) for i in range(3) if MASKED[b][i]]
    got = masked_ce(logits, x_1, masked, torch.tensor([0.3, 0.7]), Linear())
    assert got.item() == pytest.approx(sum(picked) / len(picked), rel=1e-6)


def test_masked_ce_divides_by_batch_mask_count_not_per_sample_mean():
    """Sum over the batch / number masked in the batch (not the mean of per-sample means)."""
    logits, x_1, _ = tensors()
    masked = torch.tensor([[True, True, True], [False, False, True]])
    ce = hand_ces()
    want = (ce[0][0] + ce[0][1] + ce[0][2] + ce[1][2]) / 4
    per_sample_mean = ((ce[0][0] + ce[0][1] + ce[0][2]) / 3 + ce[1][2]) / 2
    assert abs(want - per_sample_mean) > 1e-3  # the two readings differ on this data
    got = masked_ce(logits, x_1, masked, torch.tensor([0.3, 0.7]), Linear()).item()
    assert got == pytest.approx(want, rel=1e-6)


def test_masked_ce_with_nothing_masked_is_zero():
    logits, x_1, masked = tensors()
    got = masked_ce(logits, x_1, torch.zeros_like(masked), torch.tensor([0.3, 0.7]), Linear())
    assert got.item() == 0.0


def test_all_token_ce_by_hand():
    logits, x_1, masked = tensors()
    ce = hand_ces()
    got = all_token_ce(logits, x_1, masked, torch.tensor([0.3, 0.7]), Linear())
    assert got.item() == pytest.approx(sum(map(sum, ce)) / 6, rel=1e-6)


@pytest.mark.parametrize(
    "scheduler, weight",
    [
        (Linear(), lambda t: 1 / (1 - t)),
        (Polynomial(n=2.0), lambda t: 2 * t / (1 - t * t)),
        (
            SCHEDULERS["cosine"](),
            lambda t: (math.pi / 2) * math.sin(math.pi * t / 2) / math.cos(math.pi * t / 2),
        ),
    ],
    ids=["linear", "quadratic", "cosine"],
)
def test_elbo_by_hand(scheduler, weight):
    logits, x_1, masked = tensors()
    ce = hand_ces()
    t = [0.3, 0.7]
    total = sum(weight(t[b]) * ce[b][i] for b in range(2) for i in range(3) if MASKED[b][i])
    got = elbo(logits, x_1, masked, torch.tensor(t), scheduler)
    assert got.item() == pytest.approx(total / 6, rel=1e-5)


def test_elbo_per_token_t_by_hand():
    logits, x_1, masked = tensors()
    ce = hand_ces()
    t = [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]
    total = sum(ce[b][i] / (1 - t[b][i]) for b in range(2) for i in range(3) if MASKED[b][i])
    got = elbo(logits, x_1, masked, torch.tensor(t), Linear())
    assert got.item() == pytest.approx(total / 6, rel=1e-5)


@settings(deadline=None, max_examples=30)
@given(
    name=st.sampled_from(["linear", "quadratic", "cosine", "sine", "cubic", "arcsin"]),
    t=st.floats(0.01, 0.95),
    V=st.integers(2, 9),
)
def test_elbo_weight_is_d_kappa_over_one_minus_kappa(name, t, V):
    """With every token masked and uniform logits (CE = log V), elbo = w(t) log V."""
    scheduler = SCHEDULERS[name]()
    B, L = 2, 5
    logits = torch.zeros(B, L, V)
    x_1 = torch.zeros(B, L, dtype=torch.long)
    masked = torch.ones(B, L, dtype=torch.bool)
    t64 = torch.tensor(t, dtype=torch.float64)
    w = (scheduler.d_kappa(t64) / (1 - scheduler.kappa(t64))).item()
    got = elbo(logits, x_1, masked, torch.full((B,), t), scheduler).item()
    assert got == pytest.approx(w * math.log(V), rel=1e-4)


@pytest.mark.parametrize("name", ["linear", "cosine", "quadratic"])
def test_elbo_expectation_over_t_is_the_ce(name):
    """E_t E_mask[w(t) 1[masked] CE] = CE * integral of kappa'(t) dt = CE, for every kappa.

    A model with constant CE (uniform logits: CE = log V) makes the estimator's mean over t equal
    log V; t on a midpoint grid is the expectation over U(0, 1) by quadrature.
    """
    scheduler = SCHEDULERS[name]()
    N, L, V = 2000, 256, 5
    t = (torch.arange(N, dtype=torch.float32) + 0.5) / N
    x_1 = torch.randint(0, V - 1, (N, L), generator=torch.Generator().manual_seed(0))
    x_t = sample_x_t(x_1, t, scheduler, V - 1, generator=torch.Generator().manual_seed(1))
    loss = elbo(torch.zeros(N, L, V), x_1, masked_positions(x_t, V - 1), t, scheduler).item()
    assert loss == pytest.approx(math.log(V), rel=0.03)


def test_masked_positions_with_per_position_ids():
    mask_ids = torch.tensor([5, 5, 3, 3])
    x_t = torch.tensor([[5, 1, 3, 5], [0, 5, 2, 3]])
    want = torch.tensor([[True, False, True, False], [False, True, False, True]])
    assert torch.equal(masked_positions(x_t, mask_ids), want)
    assert torch.equal(masked_positions(x_t, 5), x_t == 5)


@pytest.mark.parametrize("name", ["masked_ce", "elbo", "all_token_ce"])
def test_losses_are_differentiable_scalars(name):
    logits = torch.tensor(LOGITS, requires_grad=True)
    x_1, masked = torch.tensor(X_1), torch.tensor(MASKED)
    loss = LOSSES[name](logits, x_1, masked, torch.tensor([0.3, 0.7]), Linear())
    assert loss.dim() == 0
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    if name != "all_token_ce":
        # Unmasked positions get no gradient from the masked losses.
        assert torch.all(logits.grad[~masked] == 0)
