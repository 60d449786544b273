"""Fréchet distance between Gaussians fitted to features (FVD, FAD, an in-domain FVD on probe features).

    d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))

Two protocols, as the literature computes them (DESIGN.md, "Evaluation"):
- `stylegan_v`: statistics accumulated in float64, biased covariance (divide by N), the matrix
  square root by `scipy.linalg.sqrtm` (its tiny imaginary part dropped; a failed or non-finite
  root retried with eps * I added to both covariances, as pytorch-fid does);
- `tats`: unbiased covariance (divide by N - 1) and the square root from an SVD / eigen
  decomposition of the symmetric product S1^(1/2) S2 S1^(1/2), which is what its trace needs.
Both in float64. Inputs are (N, D) feature arrays.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from videopoet.errors import InputError

Protocol = Literal["stylegan_v", "tats"]


def gaussian_stats(features: np.ndarray, *, unbiased: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> (mean (D,), covariance (D, D)) in float64."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise InputError(f"features: expected (N >= 2, D), got {x.shape}")
    if not np.isfinite(x).all():
        raise InputError("features: contain NaN or Inf")
    mu = x.mean(0)
    d = x - mu
    return mu, d.T @ d / (x.shape[0] - (1 if unbiased else 0))


def _sqrtm_trace(s1: np.ndarray, s2: np.ndarray, protocol: Protocol, eps: float = 1e-6) -> float:
    """tr((S1 S2)^(1/2))."""
    if protocol == "tats":
        w, v = np.linalg.eigh(s1)
        r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S1^(1/2), symmetric
        m = r1 @ s2 @ r1  # symmetric PSD, same eigenvalues as S1 S2
        return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())
    from scipy import linalg

    root = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(root).all():
        off = np.eye(s1.shape[0]) * eps
        root = linalg.sqrtm((s1 + off) @ (s2 + off))
    return float(np.real(np.trace(root)))


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray,
                     protocol: Protocol = "stylegan_v") -> float:
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise InputError(f"frechet_distance: shapes differ (mu {mu1.shape} / {mu2.shape}, cov {s1.shape} / {s2.shape})")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * _sqrtm_trace(s1, s2, protocol))


def frechet_distance_features(a: np.ndarray, b: np.ndarray, protocol: Protocol = "stylegan_v") -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets under `protocol`
    (tats needs N % 16 == 0 for both sets, as its evaluation does)."""
    if protocol == "tats" and (len(a) % 16 or len(b) % 16):
        raise InputError(f"tats protocol: sample counts must be multiples of 16 (got {len(a)}, {len(b)})")
    unbiased = protocol == "tats"
    return frechet_distance(*gaussian_stats(a, unbiased=unbiased), *gaussian_stats(b, unbiased=unbiased), protocol)
