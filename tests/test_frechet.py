"""Fréchet distance on Gaussians with known distances, both protocols."""

import numpy as np
import pytest

from videopoet.errors import InputError
from videopoet.eval.frechet import frechet_distance, frechet_distance_features, gaussian_stats


@pytest.mark.parametrize("protocol", ["stylegan_v", "tats"])
def test_known_distances(protocol):
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = np.diag(rng.uniform(0.5, 2, d)), np.diag(rng.uniform(0.5, 2, d))
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(np.diag(s1)) - np.sqrt(np.diag(s2))) ** 2)
    assert frechet_distance(mu1, s1, mu2, s2, protocol) == pytest.approx(want, rel=1e-9)
    # identical Gaussians: 0; a shift alone: its squared length (full covariance)
    a = rng.standard_normal((d, d))
    s = a @ a.T + np.eye(d)
    assert frechet_distance(mu1, s, mu1, s, protocol) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(mu1, s, mu1 + 3.0, s, protocol) == pytest.approx(9.0 * d, rel=1e-8)
    # a rotation of the same covariance (non-commuting matrices): the two square roots agree
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    s_rot = q @ s @ q.T
    other = "tats" if protocol == "stylegan_v" else "stylegan_v"
    assert frechet_distance(mu1, s, mu2, s_rot, protocol) == pytest.approx(frechet_distance(mu1, s, mu2, s_rot, other), rel=1e-7)


def test_features_and_protocol_rules():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4096, 3))
    y = rng.standard_normal((4096, 3)) * 2 + 1
    # samples of N(0, I) and N(1, 4I): 3 * 1 + 3 * (2 - 1)^2 = 6
    assert frechet_distance_features(x, y) == pytest.approx(6.0, rel=0.05)
    mu, cov = gaussian_stats(x[:10])
    _, cov_u = gaussian_stats(x[:10], unbiased=True)
    np.testing.assert_allclose(cov_u, cov * 10 / 9)
    with pytest.raises(InputError, match="multiples of 16"):
        frechet_distance_features(x[:100], y[:96], "tats")
    with pytest.raises(InputError, match="NaN"):
        gaussian_stats(np.full((4, 2), np.nan))
