"""Improved precision / recall against a direct implementation of the definition, its properties,
and the reference k-NN radii cached with the reference statistics.

Kynkaanniemi et al. (2019): the radius of a feature is its distance to its k-th nearest
neighbour within its own set (itself excluded); precision is the fraction of generated
features inside some reference ball, recall the fraction of reference features inside some
generated ball.
"""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from harness.cache import load_cached, save_torch, sha256_tensors
from harness.evaluation import (
    FID,
    PRECISION,
    RECALL,
    Evaluator,
    FeatureExtractor,
    ReferenceSet,
    extract_features,
)
from harness.evaluation.extractors import Features
from harness.evaluation.frechet import gaussian_stats
from harness.evaluation.metrics import METRICS
from harness.evaluation.reference import ReferenceStats

# derandomize: the same examples every run, so a float32 tie at a ball's edge cannot make it flaky
PROPERTY = settings(max_examples=30, deadline=None, derandomize=True)
SIZES = st.integers(6, 60)  # above 25 rows torch.cdist switches to its matrix-product form


def _features(seed: int, n: int, d: int, shift: float = 0.0) -> Tensor:
    """n standard normal draws (n, d) float32, shifted by ``shift``."""
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) + shift


def _reference(features: Tensor) -> ReferenceStats:
    return ReferenceStats(features, gaussian_stats(features), key="test")


def _direct_precision_recall(generated: Tensor, reference: Tensor, k: int) -> tuple[float, float]:
    """The definition, in float64 with explicit differences: no cdist, no kthvalue."""

    def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1))  # (A, B)

    def radii(x: np.ndarray) -> np.ndarray:
        d = distances(x, x)  # (N, N)
        np.fill_diagonal(d, np.inf)  # a feature is not its own neighbour
        return np.sort(d, axis=1)[:, k - 1]  # (N,) distance to the k-th nearest neighbour

    gen, ref = generated.double().numpy(), reference.double().numpy()
    d_gen_ref = distances(gen, ref)  # (G, R)
    precision = (d_gen_ref <= radii(ref)[None, :]).any(axis=1).mean()
    recall = (d_gen_ref.T <= radii(gen)[None, :]).any(axis=1).mean()
    return float(precision), float(recall)


def _precision_recall(generated: Tensor, reference: ReferenceStats, k: int = 3) -> tuple[float, float]:
    options = {"neighborhood": k}
    gen = Features(generated)
    return METRICS[PRECISION](gen, reference, options), METRICS[RECALL](gen, reference, options)


@PROPERTY
@given(seed=st.integers(0, 10_000), n_gen=SIZES, n_ref=SIZES, d=st.integers(2, 8), k=st.integers(1, 5))
def test_precision_recall_match_the_definition(seed: int, n_gen: int, n_ref: int, d: int, k: int) -> None:
    generated, reference = _features(seed, n_gen, d), _features(seed + 1, n_ref, d, shift=0.5)
    ours = _precision_recall(generated, _reference(reference), k)
    assert ours == pytest.approx(_direct_precision_recall(generated, reference, k), rel=1e-6)


@pytest.mark.parametrize(("n_gen", "n_ref", "d"), [(20, 24, 3), (150, 400, 16), (700, 300, 64)])
def test_precision_recall_equal_torch_fidelity_bit_for_bit(n_gen: int, n_ref: int, d: int) -> None:
    """The values the evaluator reported before its reference radii were cached."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    generated, reference = _features(n_gen, n_gen, d, shift=0.2), _features(n_ref, n_ref, d)
    theirs = prc_features_to_metric(
        generated, reference, prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=False, verbose=False
    )
    assert _precision_recall(generated, _reference(reference)) == (theirs[PRECISION], theirs[RECALL])


@PROPERTY
@given(seed=st.integers(0, 10_000), n=SIZES, d=st.integers(2, 8), k=st.integers(1, 5))
def test_a_set_against_itself_has_precision_and_recall_one(seed: int, n: int, d: int, k: int) -> None:
    features = _features(seed, n, d)
    assert _precision_recall(features, _reference(features), k) == (1.0, 1.0)


@PROPERTY
@given(seed=st.integers(0, 10_000), n_gen=SIZES, n_ref=SIZES, d=st.integers(2, 8))
def test_permuting_either_set_changes_nothing(seed: int, n_gen: int, n_ref: int, d: int) -> None:
    generated, reference = _features(seed, n_gen, d), _features(seed + 1, n_ref, d, shift=0.3)
    before = _precision_recall(generated, _reference(reference))
    rng = torch.Generator().manual_seed(seed)
    gen_perm, ref_perm = torch.randperm(n_gen, generator=rng), torch.randperm(n_ref, generator=rng)
    assert _precision_recall(generated[gen_perm], _reference(reference)) == before
    assert _precision_recall(generated, _reference(reference[ref_perm])) == before


# --- through the Evaluator and its cache ---------------------------------------------------------


class ProjectionExtractor(FeatureExtractor):
    """Features x W of the 64 pixels, W (64, 12) a fixed Gaussian draw: no training, no weights file."""

    name, resize_rule, feature_dim = "test-projection", "none", 12

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weight", torch.randn(64, 12, generator=torch.Generator().manual_seed(0)))
        self.weights_sha256 = sha256_tensors(self.state_dict())

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        return x.reshape(x.shape[0], -1) @ self.weight, None  # (B, 12)


N_REF, N_GEN = 300, 80
METRIC_KEYS = [FID, PRECISION, RECALL]


@pytest.fixture(scope="module")
def reference_set() -> ReferenceSet:
    data = torch.rand(N_REF, 1, 8, 8, generator=torch.Generator().manual_seed(1))  # (N, 1, 8, 8)
    return ReferenceSet("random/test", "digits", data)


@pytest.fixture(scope="module")
def samples() -> Tensor:
    return torch.rand(N_GEN, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 0.9  # (N, 1, 8, 8)


def _evaluate(reference: ReferenceSet, samples: Tensor, cache: Path) -> dict[str, float]:
    evaluator = Evaluator(reference, extractor=ProjectionExtractor(), metrics=METRIC_KEYS, cache_dir=cache)
    return {r.name: r.value for r in evaluator.evaluate(samples, sample_seed=0)}


def _entry(cache: Path) -> Path:
    (entry,) = (cache / "reference").glob("*.pt")
    return entry


@pytest.fixture
def filled(reference_set, samples, tmp_path) -> tuple[dict[str, float], Path, dict]:
    """A cache filled by one evaluation: the values it gave, its reference entry, what that holds."""
    expected = _evaluate(reference_set, samples, tmp_path)
    entry = _entry(tmp_path)
    return expected, entry, load_cached(entry, tmp_path)


def test_cached_and_uncached_evaluations_agree_exactly(reference_set, samples, tmp_path) -> None:
    cold = _evaluate(reference_set, samples, tmp_path)
    warm = _evaluate(reference_set, samples, tmp_path)
    extractor = ProjectionExtractor()
    features = extract_features(extractor, reference_set.data, 64).features  # (N_REF, 12)
    generated = extract_features(extractor, samples, 64)
    uncached = {key: METRICS[key](generated, _reference(features)) for key in METRIC_KEYS}
    assert cold == warm == uncached
    assert 0.0 < cold[PRECISION] < 1.0 and 0.0 < cold[RECALL] < 1.0  # a case that can tell them apart


@pytest.fixture
def cdist_shapes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The (rows, columns) of every torch.cdist call, recorded as it runs."""
    shapes: list[tuple[int, int]] = []
    cdist = torch.cdist

    def recording(x_1: Tensor, x_2: Tensor, *args, **kwargs) -> Tensor:
        shapes.append((x_1.shape[0], x_2.shape[0]))
        return cdist(x_1, x_2, *args, **kwargs)

    monkeypatch.setattr(torch, "cdist", recording)
    return shapes


def test_one_evaluation_runs_one_knn_pass_and_a_warm_one_no_reference_knn(
    reference_set, samples, tmp_path, cdist_shapes
) -> None:
    _evaluate(reference_set, samples, tmp_path)
    assert sorted(cdist_shapes) == sorted([(N_REF, N_REF), (N_GEN, N_GEN), (N_REF, N_GEN)])
    cdist_shapes.clear()
    _evaluate(reference_set, samples, tmp_path)
    assert sorted(cdist_shapes) == sorted([(N_GEN, N_GEN), (N_REF, N_GEN)])  # precision and recall share it


def test_bootstrap_resamples_share_their_knn_pass_too(reference_set, samples, tmp_path, cdist_shapes) -> None:
    _evaluate(reference_set, samples, tmp_path)
    evaluator = Evaluator(
        reference_set, extractor=ProjectionExtractor(), metrics=METRIC_KEYS, cache_dir=tmp_path
    )
    cdist_shapes.clear()
    evaluator.evaluate(samples, sample_seed=0, bootstrap=3)
    assert cdist_shapes.count((N_GEN, N_GEN)) == 1 + 3 and (N_REF, N_REF) not in cdist_shapes


def test_an_entry_without_radii_loads_and_gets_them_written_back(
    reference_set, samples, tmp_path, filled, cdist_shapes
) -> None:
    expected, entry, stored = filled
    save_torch({key: value for key, value in stored.items() if key != "radii"}, entry)  # as written before
    cdist_shapes.clear()
    assert _evaluate(reference_set, samples, tmp_path) == expected
    assert cdist_shapes.count((N_REF, N_REF)) == 1
    written = load_cached(entry, tmp_path, required=("features", "stats", "radii"))
    assert torch.equal(written["radii"][3], stored["radii"][3]) and torch.equal(
        written["features"], stored["features"]
    )
    cdist_shapes.clear()
    assert _evaluate(reference_set, samples, tmp_path) == expected
    assert (N_REF, N_REF) not in cdist_shapes
    assert not (tmp_path / "quarantine").exists()


def test_malformed_radii_are_recomputed_and_a_damaged_entry_is_quarantined(
    reference_set, samples, tmp_path, filled, capsys
) -> None:
    expected, entry, stored = filled
    save_torch({**stored, "radii": {3: stored["radii"][3][:-1]}}, entry)  # one radius short
    assert _evaluate(reference_set, samples, tmp_path) == expected
    assert load_cached(entry, tmp_path)["radii"][3].shape == (N_REF,)
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    assert _evaluate(reference_set, samples, tmp_path) == expected
    assert len(list((tmp_path / "quarantine" / "reference").iterdir())) == 1
    assert str(entry) in capsys.readouterr().err
    assert load_cached(entry, tmp_path, required=("radii",))["radii"][3].shape == (N_REF,)


def test_an_evaluator_without_precision_or_recall_caches_no_radii(reference_set, tmp_path) -> None:
    evaluator = Evaluator(reference_set, extractor=ProjectionExtractor(), metrics=[FID], cache_dir=tmp_path)
    assert evaluator.reference_stats.radii == {}
    assert load_cached(_entry(tmp_path), tmp_path)["radii"] == {}


def test_a_cache_that_cannot_take_the_radii_still_serves(
    filled, reference_set, samples, tmp_path, monkeypatch, capsys
):
    """An old entry in a cache that cannot be written (full, read-only) scores as it did, with a warning."""
    expected, entry, stored = filled
    save_torch({key: value for key, value in stored.items() if key != "radii"}, entry)
    before = entry.read_bytes()

    def full_disk(*args) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("harness.evaluation.reference.save_torch", full_disk)
    assert _evaluate(reference_set, samples, tmp_path) == expected
    assert entry.read_bytes() == before and "the k-NN radii were not cached" in capsys.readouterr().err


def test_an_entry_of_another_reference_at_this_path_is_quarantined_and_recomputed(
    filled, reference_set, samples, tmp_path
) -> None:
    """A file copied over the entry (another reference's statistics) must not be scored against."""
    expected, entry, _ = filled
    other = ReferenceSet("random/other", "digits", reference_set.data[: N_REF - 40])
    _evaluate(other, samples, tmp_path / "other")
    entry.write_bytes(_entry(tmp_path / "other").read_bytes())
    assert _evaluate(reference_set, samples, tmp_path) == expected
    assert len(list((tmp_path / "quarantine" / "reference").iterdir())) == 1


@pytest.mark.parametrize(
    "damage",
    [
        lambda e: {**e, "features": e["features"][:-10]},  # rows lost
        lambda e: {**e, "features": e["features"].double()},
        lambda e: {**e, "features": e["features"].tolist()},
        lambda e: {**e, "stats": {k: v for k, v in e["stats"].items() if k != "mu"}},
        lambda e: {**e, "stats": {**e["stats"], "mu": torch.zeros(5, dtype=torch.float64)}},
        lambda e: {**e, "key": "0" * 24},
    ],
    ids=["short", "float64", "list", "no-mu", "narrow-mu", "other-key"],
)
def test_an_entry_that_loads_but_does_not_fit_is_quarantined_and_recomputed(
    filled, reference_set, samples, tmp_path, damage
) -> None:
    expected, entry, stored = filled
    save_torch(damage(stored), entry)
    assert _evaluate(reference_set, samples, tmp_path) == expected
    assert len(list((tmp_path / "quarantine" / "reference").iterdir())) == 1
    assert load_cached(entry, tmp_path)["features"].shape == (N_REF, 12)


def test_radii_of_a_k_not_cached_are_computed_once_per_reference(cdist_shapes) -> None:
    reference = _reference(_features(0, 40, 4))
    generated = Features(_features(1, 30, 4))
    for _ in range(3):
        METRICS[PRECISION](generated, reference, {"neighborhood": 5}, passes={})
    assert cdist_shapes.count((40, 40)) == 1
