"""Image metrics: FID and IS against closed forms, diagnostics, the patch encoder and head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from gram_bench.metrics.images import (MnistNet, fid, frechet_distance, gaussian_stats, grouped_bootstrap,
                                       inception_score, mean_pairwise_hamming, net_from_arrays, net_state_arrays)
from gram_bench.models.layers import PatchEncoder, PatchHead


def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_fid_of_a_sample_set_against_itself_is_zero():
    feats = np.random.default_rng(0).normal(size=(500, 16))
    mu, cov = gaussian_stats(feats)
    assert fid(feats, mu, cov) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_matches_the_closed_form_for_known_gaussians():
    rng = np.random.default_rng(1)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    c1, c2 = _spd(rng, d), _spd(rng, d)
    # the textbook expression with a general matrix square root
    closed = ((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * linalg.sqrtm(c1 @ c2).real)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(closed, rel=1e-8)
    # diagonal covariances: ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    diag = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(diag, rel=1e-10)


def test_fid_of_samples_converges_to_the_closed_form():
    rng = np.random.default_rng(2)
    d = 4
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    c1, c2 = _spd(rng, d), _spd(rng, d)
    x = rng.multivariate_normal(mu2, c2, size=200_000)
    assert fid(x, mu1, c1) == pytest.approx(frechet_distance(mu1, c1, mu2, c2), rel=0.02)


@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_inception_score_of_one_hot_predictions_over_k_balanced_classes_is_k(k):
    probs = np.eye(10)[np.repeat(np.arange(k), 7)]
    assert inception_score(probs) == pytest.approx(k)


def test_inception_score_of_uninformative_predictions_is_one():
    assert inception_score(np.full((50, 10), 0.1)) == pytest.approx(1.0)


def test_mean_pairwise_hamming():
    same = np.ones((5, 784), dtype=np.uint8)
    assert mean_pairwise_hamming(same) == 0.0
    two = np.stack([np.zeros(784), np.ones(784)]).astype(np.uint8)
    assert mean_pairwise_hamming(two) == 784.0
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, (20, 50)).astype(np.uint8)
    brute = np.mean([(x[i] != x[j]).sum() for i in range(20) for j in range(20) if i != j])
    assert mean_pairwise_hamming(x) == pytest.approx(brute)


def test_grouped_bootstrap_interval_holds_the_value():
    rng = np.random.default_rng(0)
    groups = [rng.normal(size=(5, 3)) for _ in range(30)]
    v, lo, hi = grouped_bootstrap(groups, lambda a: float(a.mean()), resamples=100)
    assert lo <= v <= hi and lo < hi
    assert v == pytest.approx(np.concatenate(groups).mean())


def test_feature_network_round_trips_through_plain_arrays():
    torch.manual_seed(0)
    net = MnistNet().eval()
    x = torch.rand(3, 1, 28, 28)
    back = net_from_arrays(net_state_arrays(net))
    assert torch.equal(net(x)[0], back(x)[0])


def test_patch_head_puts_each_patch_back_in_place():
    H, W, P, V = 6, 4, 2, 3
    head = PatchHead(P * P * V, V, H, W, P)
    with torch.no_grad():  # the identity map: feature k of a patch is logit k of its pixels
        head.out.weight.copy_(torch.eye(P * P * V))
        head.out.bias.zero_()
    img = torch.randn(1, H, W, V)
    patches = torch.stack([img[0, r:r + P, c:c + P].reshape(-1) for r in range(0, H, P) for c in range(0, W, P)])
    out = head(patches.unsqueeze(0))
    assert torch.equal(out, img.view(1, H * W, V))


def test_patch_encoder_sees_only_its_neighbourhood():
    enc = PatchEncoder(3, 8, 28, 28, 2, channels=4).eval()
    x = torch.ones(1, 784, dtype=torch.long)
    y = x.clone()
    y[0, 27 * 28 + 27] = 2  # the bottom-right pixel
    a, b = enc(x), enc(y)
    assert a.shape == (1, 196, 8)
    changed = (a - b).abs().sum(-1)[0] > 0
    # two 5x5 convs reach 4 pixels: patches (rows, cols) 11-13 of 14 at most; GroupNorm spreads a
    # small global shift, so compare the nearest patch with a far one
    assert changed[195] and (a - b)[0, 195].abs().sum() > 10 * (a - b)[0, 0].abs().sum()
