"""Gaussian statistics of features and the Frechet distance between two Gaussians.

    d^2(N(mu_1, S_1), N(mu_2, S_2)) = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})

FID is this distance between Inception (or domain-network) features of samples and of the
reference set; FVD is the same distance on video features. All arithmetic is float64.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

DEFAULT_EPS = 1e-6
_IMAG_TOL = 1e-3


@dataclass(frozen=True)
class GaussianStats:
    """mu (D,) and sigma (D, D) in float64, estimated from n feature vectors."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int


def gaussian_stats(features: Tensor | np.ndarray) -> GaussianStats:
    """Sample mean and unbiased covariance (divides by n - 1) of features (N, D)."""
    x = features.detach().cpu().double().numpy() if isinstance(features, Tensor) else np.asarray(features)
    x = x.astype(np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2; got shape {x.shape}")
    return GaussianStats(
        mu=x.mean(axis=0), sigma=np.cov(x, rowvar=False).reshape(x.shape[1], -1), n=x.shape[0]
    )


def _sqrtm_trace(sigma_1: np.ndarray, sigma_2: np.ndarray) -> tuple[float | None, bool]:
    """(Tr((S_1 S_2)^{1/2}) or None if the root is non-finite or clearly complex, whether it was singular)."""
    import scipy.linalg  # here, not at import: checking a study needs no scipy

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma_1 @ sigma_2)
    singular = any("singular" in str(w.message) for w in caught)
    if not np.isfinite(covmean).all():
        return None, singular
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=_IMAG_TOL):
            return None, singular
        covmean = covmean.real
    return float(np.trace(covmean)), singular


def is_singular(stats: GaussianStats) -> bool:
    """Certainly singular: fewer samples than dimensions, or a zero-variance (dead) feature."""
    return stats.n <= stats.mu.shape[0] or bool(np.any(np.diagonal(stats.sigma) <= 0))


def frechet_distance(stats_1: GaussianStats, stats_2: GaussianStats, eps: float = DEFAULT_EPS) -> float:
    """||mu_1 - mu_2||^2 + Tr(S_1) + Tr(S_2) - 2 Tr((S_1 S_2)^{1/2}).

    When S_1 S_2 is singular (N <= D, or dead ReLU units giving zero-variance features) its
    root is inaccurate or non-finite; then the distance between the regularised Gaussians
    N(mu, S + eps I) is returned (so FD(x, x) stays 0). clean-fid offsets only the root, and only
    when it is non-finite; both agree whenever S_1 S_2 is nonsingular. If even the regularised
    root fails, Tr(A^{1/2}) = sum_i sqrt(lambda_i(A)) is used.
    """
    mu_1, mu_2 = stats_1.mu, stats_2.mu
    if mu_1.shape != mu_2.shape:
        raise ValueError(f"feature sizes differ: {mu_1.shape} vs {mu_2.shape}")
    sigma_1, sigma_2 = stats_1.sigma, stats_2.sigma
    tr_covmean, singular = None, is_singular(stats_1) or is_singular(stats_2)
    if not singular:
        tr_covmean, singular = _sqrtm_trace(sigma_1, sigma_2)
    if tr_covmean is None or singular:
        offset = np.eye(sigma_1.shape[0]) * eps
        sigma_1, sigma_2 = sigma_1 + offset, sigma_2 + offset
        tr_covmean, _ = _sqrtm_trace(sigma_1, sigma_2)
    if tr_covmean is None:
        eigenvalues = np.linalg.eigvals(sigma_1 @ sigma_2).astype(np.complex128)
        tr_covmean = float(np.sqrt(eigenvalues).real.sum())
    diff = mu_1 - mu_2
    return float(diff @ diff + np.trace(sigma_1) + np.trace(sigma_2) - 2.0 * tr_covmean)


def frechet_distance_from_features(features_1: Tensor, features_2: Tensor, eps: float = DEFAULT_EPS) -> float:
    """Frechet distance between the Gaussians fitted to features_1 (N1, D) and features_2 (N2, D)."""
    return frechet_distance(gaussian_stats(features_1), gaussian_stats(features_2), eps)


def stats_to_tensors(stats: GaussianStats) -> dict[str, Tensor]:
    """Tensors for a cache file: mu (D,), sigma (D, D) float64, n."""
    return {
        "mu": torch.from_numpy(stats.mu),
        "sigma": torch.from_numpy(stats.sigma),
        "n": torch.tensor(stats.n),
    }


def stats_from_tensors(d: dict[str, Tensor]) -> GaussianStats:
    """Inverse of :func:`stats_to_tensors`."""
    return GaussianStats(mu=d["mu"].numpy(), sigma=d["sigma"].numpy(), n=int(d["n"]))
