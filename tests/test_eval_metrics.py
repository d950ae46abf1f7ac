"""The metrics against oracles: FID is zero for a set with itself, matches the closed forms for
two Gaussians and clean-fid / torch-fidelity on the same features; KID, precision / recall and IS
at their known extremes (IS also against torch-fidelity); mIoU on hand-built masks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from harness.evaluation import (
    KID,
    PRECISION,
    RECALL,
    GaussianStats,
    frechet_distance,
    gaussian_stats,
    inception_score,
    mean_iou,
    per_class_iou,
)
from harness.evaluation.extractors import Features
from harness.evaluation.metrics import METRICS
from harness.evaluation.reference import ReferenceStats


def _random_features(seed: int, n: int, d: int, shift: float = 0.0) -> Tensor:
    """n draws (n, d) float64 of one correlated Gaussian (fixed mixing), shifted by ``shift``."""
    mixing = torch.randn(d, d, generator=torch.Generator().manual_seed(12345), dtype=torch.float64) / d**0.5
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x @ (torch.eye(d, dtype=torch.float64) + mixing) + shift


def _generated(features: Tensor) -> Features:
    return Features(features.float())


def _reference(features: Tensor) -> ReferenceStats:
    return ReferenceStats(features.float(), gaussian_stats(features), key="test")


# --- Frechet distance --------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.integers(1, 8), extra=st.integers(2, 40))
def test_fid_of_a_set_with_itself_is_zero(seed: int, d: int, extra: int) -> None:
    features = _random_features(seed, d + extra, d)
    assert frechet_distance(gaussian_stats(features), gaussian_stats(features)) == pytest.approx(
        0.0, abs=1e-6
    )


@settings(max_examples=25, deadline=None)
@given(
    mu=st.lists(st.floats(-3, 3), min_size=4, max_size=4),
    var_1=st.lists(st.floats(0.1, 4), min_size=4, max_size=4),
    var_2=st.lists(st.floats(0.1, 4), min_size=4, max_size=4),
)
def test_fid_of_two_diagonal_gaussians_matches_closed_form(mu, var_1, var_2) -> None:
    """Diagonal covariances commute: d^2 = ||mu_1 - mu_2||^2 + sum_i (sqrt(s1_i) - sqrt(s2_i))^2."""
    s1 = GaussianStats(np.zeros(4), np.diag(var_1), n=100)
    s2 = GaussianStats(np.array(mu), np.diag(var_2), n=100)
    closed = np.sum(np.square(mu)) + np.sum((np.sqrt(var_1) - np.sqrt(var_2)) ** 2)
    assert frechet_distance(s1, s2) == pytest.approx(closed, rel=1e-7, abs=1e-9)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.05, 20))
def test_fid_of_scaled_covariance_matches_closed_form(seed: int, scale: float) -> None:
    """S_2 = c S_1: Tr(S_1 + c S_1 - 2 sqrt(c) S_1) = (1 - sqrt(c))^2 Tr(S_1)."""
    sigma = gaussian_stats(_random_features(seed, 50, 5)).sigma
    s1, s2 = GaussianStats(np.zeros(5), sigma, 50), GaussianStats(np.zeros(5), scale * sigma, 50)
    expected = (1 - np.sqrt(scale)) ** 2 * np.trace(sigma)
    assert frechet_distance(s1, s2) == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")  # inside clean-fid
def test_fid_matches_clean_fid_and_torch_fidelity_on_the_same_features() -> None:
    from cleanfid.fid import fid_from_feats
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    f1, f2 = _random_features(1, 300, 24), _random_features(2, 250, 24, shift=0.3) * 1.2
    ours = frechet_distance(gaussian_stats(f1), gaussian_stats(f2))
    clean = fid_from_feats(f1.numpy(), f2.numpy())
    stats = [fid_features_to_statistics(f) for f in (f1, f2)]
    fidelity = fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID]
    assert ours == pytest.approx(clean, rel=1e-9)
    assert ours == pytest.approx(fidelity, rel=1e-7)


def test_dead_units_make_covariance_singular_and_fid_stays_finite() -> None:
    """A constant (dead ReLU) feature adds nothing: FID with it ~ FID without it."""
    f1, f2 = _random_features(3, 80, 6), _random_features(4, 90, 6, shift=0.5)
    dead = lambda f: torch.cat([f, torch.zeros(f.shape[0], 2, dtype=f.dtype)], dim=1)  # (N, 8)
    with_dead = frechet_distance(gaussian_stats(dead(f1)), gaussian_stats(dead(f2)))
    without = frechet_distance(gaussian_stats(f1), gaussian_stats(f2))
    assert np.isfinite(with_dead) and with_dead == pytest.approx(without, abs=1e-4)


# --- KID, precision / recall, IS ---------------------------------------------------------------


def test_kid_is_near_zero_for_one_distribution_and_grows_with_the_shift() -> None:
    reference = _reference(_random_features(5, 400, 8))
    kid = METRICS[KID]
    values = [kid(_generated(_random_features(6, 200, 8, shift=s)), reference) for s in (0.0, 0.5, 1.5)]
    assert abs(values[0]) < 0.05 * values[1] and values[0] < values[1] < values[2]


def test_precision_recall_are_one_for_the_same_set_and_zero_for_far_sets() -> None:
    features = _random_features(7, 120, 4)
    same, far = _generated(features), _generated(features + 100.0)
    reference = _reference(features)
    assert METRICS[PRECISION](same, reference) == 1.0 and METRICS[RECALL](same, reference) == 1.0
    assert METRICS[PRECISION](far, reference) == 0.0 and METRICS[RECALL](far, reference) == 0.0


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 12), per_class=st.integers(1, 5))
def test_inception_score_of_uniform_one_hot_predictions_is_k(k: int, per_class: int) -> None:
    probs = torch.eye(k).repeat(per_class, 1)  # (k * per_class, k), every class equally often
    assert inception_score(probs, splits=1)[0] == pytest.approx(k, rel=1e-12)


def test_inception_score_matches_torch_fidelity_and_is_one_for_identical_predictions() -> None:
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    logits = torch.randn(500, 20, generator=torch.Generator().manual_seed(8)) * 3
    theirs = isc_features_to_metric(logits, splits=10, shuffle=True, rng_seed=2020)
    mean, std = inception_score(logits.double().softmax(dim=1), splits=10, shuffle_seed=2020)
    assert mean == pytest.approx(theirs[KEY_METRIC_ISC_MEAN], rel=1e-10)
    assert std == pytest.approx(theirs[KEY_METRIC_ISC_STD], rel=1e-8)
    same = torch.softmax(torch.randn(1, 7), dim=1).repeat(30, 1)
    assert inception_score(same, splits=3)[0] == pytest.approx(1.0, abs=1e-12)


# --- mIoU --------------------------------------------------------------------------------------


def test_miou_on_hand_built_masks() -> None:
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 0, 1, 0], [0, 1, 1, 1], [2, 2, 0, 3]])
    # class 0: inter 3, union 5; class 1: inter 3, union 5; class 2: 2/2; class 3: absent (only at ignored px)
    iou = per_class_iou(pred, target, num_classes=4)
    assert iou[:3].tolist() == pytest.approx([3 / 5, 3 / 5, 1.0]) and torch.isnan(iou[3])
    assert mean_iou(pred, target, num_classes=4) == pytest.approx((0.6 + 0.6 + 1.0) / 3)
    assert mean_iou(target.clamp(max=2), target.clamp(max=2), num_classes=3, ignore_index=255) == 1.0


def test_miou_counts_a_class_only_predicted_as_zero_and_rejects_bad_labels() -> None:
    target, pred = torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 0], [0, 1]])
    assert mean_iou(pred, target, num_classes=2) == pytest.approx((3 / 4 + 0.0) / 2)
    with pytest.raises(ValueError, match="outside"):
        mean_iou(pred + 5, target, num_classes=2)
    with pytest.raises(ValueError, match="ignored"):
        mean_iou(pred, torch.full_like(target, 255), num_classes=2)
