"""Tests for emreason.extras.diffusion_molrg against independent float64 computations."""

import numpy as np
import pytest
from emreason.extras.diffusion_molrg import (
    EmpiricalDenoiser,
    MoLRG,
    representation_curve,
    subspace_snr,
)
from scipy.stats import multivariate_normal


def _class_covariances(model: MoLRG) -> list[np.ndarray]:
    eye = np.eye(model.n_dim)
    covs = []
    for basis in model.bases_:
        proj = basis @ basis.T
        covs.append(proj + model.delta**2 * (eye - proj))
    return covs


def test_bases_are_orthonormal_and_mutually_orthogonal():
    model = MoLRG(n_dim=20, n_classes=3, subspace_dim=4, random_state=1)
    stacked = np.concatenate(list(model.bases_), axis=1)
    np.testing.assert_allclose(stacked.T @ stacked, np.eye(12), atol=1e-12)


def test_sample_covariance_matches_model():
    model = MoLRG(n_dim=10, n_classes=2, subspace_dim=3, delta=0.3, random_state=2)
    x, y = model.sample(40_000, np.random.default_rng(0))
    for k, cov in enumerate(_class_covariances(model)):
        empirical = np.cov(x[y == k].T)
        np.testing.assert_allclose(empirical, cov, atol=0.04)


@pytest.mark.parametrize("sigma", [0.05, 0.4, 2.0])
def test_posterior_mean_matches_generic_gaussian_mixture(sigma):
    model = MoLRG(n_dim=12, n_classes=3, subspace_dim=3, delta=0.25, random_state=3)
    rng = np.random.default_rng(1)
    x0, _ = model.sample(20, rng)
    x = x0 + sigma * rng.standard_normal(x0.shape)
    covs = _class_covariances(model)
    noisy_covs = [c + sigma**2 * np.eye(model.n_dim) for c in covs]
    log_lik = np.stack([multivariate_normal(np.zeros(model.n_dim), c).logpdf(x) for c in noisy_covs], 1)
    weights = np.exp(log_lik - log_lik.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    cond_means = np.stack([x @ np.linalg.solve(nc, c).T for c, nc in zip(covs, noisy_covs)], 1)
    expected = np.einsum("bk,bkn->bn", weights, cond_means)
    np.testing.assert_allclose(model.class_posterior(x, sigma), weights, atol=1e-10)
    np.testing.assert_allclose(model.posterior_mean(x, sigma), expected, atol=1e-10)


def test_empirical_denoiser_matches_direct_softmax_and_snaps_at_small_noise():
    rng = np.random.default_rng(4)
    points = rng.standard_normal((5, 6))
    x = rng.standard_normal((7, 6))
    sigma = 0.8
    weights = np.array([[np.exp(-np.sum((xi - p) ** 2) / (2 * sigma**2)) for p in points] for xi in x])
    weights /= weights.sum(1, keepdims=True)
    den = EmpiricalDenoiser(points)
    np.testing.assert_allclose(den.posterior_mean(x, sigma), weights @ points, atol=1e-12)
    nearest = points[np.argmin(((x[:, None] - points[None]) ** 2).sum(-1), axis=1)]
    np.testing.assert_allclose(den.posterior_mean(x, 1e-3), nearest, atol=1e-9)


def test_snr_of_clean_data_matches_closed_form():
    model = MoLRG(n_dim=30, n_classes=3, subspace_dim=5, delta=0.3, random_state=5)
    x0, y = model.sample(20_000, np.random.default_rng(2))
    # own-subspace energy d, other subspaces (K-1) d delta^2
    expected = 1.0 / ((model.n_classes - 1) * model.delta**2)
    assert subspace_snr(x0, y, model.bases_) == pytest.approx(expected, rel=0.04)


def test_true_denoiser_snr_is_unimodal_and_memorizer_is_not():
    model = MoLRG(n_dim=48, n_classes=3, subspace_dim=8, delta=0.2, random_state=0)
    sigmas = np.geomspace(0.03, 10.0, 10)
    true_curve = np.array(representation_curve(model, model, sigmas, n_eval=600, with_probe=False)["snr"])
    peak = int(np.argmax(true_curve))
    assert 0 < peak < len(sigmas) - 1
    assert true_curve[peak] > 2.5 * true_curve[0] and true_curve[peak] > 10 * true_curve[-1]
    few_points, _ = model.sample(8, np.random.default_rng(9))
    memo = np.array(
        representation_curve(model, EmpiricalDenoiser(few_points), sigmas, n_eval=600, with_probe=False)[
            "snr"
        ]
    )
    assert memo.max() < 1.2 * memo[0]
    assert memo[-1] < 0.5 * memo[0]


def test_probe_accuracy_is_high_at_low_noise_and_chance_at_high_noise():
    model = MoLRG(n_dim=24, n_classes=3, subspace_dim=6, delta=0.2, random_state=0)
    curve = representation_curve(model, model, [0.05, 20.0], n_eval=300, n_probe_train=600)
    assert curve["probe_accuracy"][0] > 0.95
    assert curve["probe_accuracy"][1] < 0.6


@pytest.mark.parametrize(
    "kwargs",
    [dict(n_classes=4, subspace_dim=13, n_dim=48), dict(delta=1.5), dict(n_classes=1), dict(n_dim=0)],
)
def test_bad_model_parameters_raise(kwargs):
    with pytest.raises(ValueError):
        MoLRG(**kwargs)


def test_bad_inputs_raise():
    model = MoLRG(n_dim=12, n_classes=2, subspace_dim=3)
    with pytest.raises(ValueError, match="sigma"):
        model.posterior_mean(np.zeros((2, 12)), 0.0)
    with pytest.raises(ValueError, match="shape"):
        model.posterior_mean(np.zeros((2, 11)), 1.0)
    with pytest.raises(ValueError, match="labels"):
        subspace_snr(np.zeros((3, 12)), np.array([0, 1, 5]), model.bases_)


# --- trained denoiser ------------------------------------------------------------------------------------

from emreason.extras.diffusion_molrg import (  # noqa: E402
    TrainedDenoiser,
    copy_fraction,
    feature_probe_curve,
    linear_probe_accuracy,
)


@pytest.fixture(scope="module")
def small_data():
    model = MoLRG(n_dim=12, n_classes=3, subspace_dim=2, delta=0.5, random_state=0)
    rng = np.random.default_rng(0)
    big, _ = model.sample(2048, rng)
    few, _ = model.sample(6, rng)
    fresh, _ = model.sample(400, rng)
    gen = TrainedDenoiser(width=64, n_layers=2, steps=600, lr=5e-3, random_state=0).fit(big)
    memo = TrainedDenoiser(width=64, n_layers=2, steps=600, lr=5e-3, random_state=0).fit(few)
    return model, big, few, fresh, gen, memo


def test_trained_denoiser_loss_decreases_and_beats_identity(small_data):
    model, big, _, fresh, gen, _ = small_data
    assert gen.loss_history_[-1] < gen.loss_history_[0]
    sigmas = [0.3, 1.0]
    mse = gen.denoising_loss(fresh, sigmas)
    # identity denoiser D(x) = x has MSE sigma^2 per coordinate; a trained one must do much better
    assert np.all(mse < 0.85 * np.square(sigmas))
    # and it cannot beat the exact MMSE denoiser by more than evaluation noise
    rng = np.random.default_rng(0)
    exact = [
        ((model.posterior_mean(fresh + s * rng.standard_normal(fresh.shape), s) - fresh) ** 2).mean()
        for s in sigmas
    ]
    print(mse, exact)
    assert np.all(mse > 0.9 * np.array(exact))
    assert np.all(mse < 1.5 * np.array(exact))


def test_memorization_measures_separate_small_from_large_training_set(small_data):
    _, big, few, fresh, gen, memo = small_data
    ratio = lambda den, train: den.denoising_loss(fresh, [1.0])[0] / den.denoising_loss(train, [1.0])[0]  # noqa: E731
    assert ratio(gen, big) < 1.2
    assert ratio(memo, few) > 3.0
    assert copy_fraction(memo, few, fresh, 1.0) > copy_fraction(gen, big, fresh, 1.0) + 0.02


def test_features_shape_and_probe_curve(small_data):
    model, _, _, fresh, gen, _ = small_data
    assert gen.features(fresh[:5], 0.5).shape == (5, 64)
    assert gen.posterior_mean(fresh[:5], 0.5).shape == (5, 12)
    curve = feature_probe_curve(model, gen, [0.05, 30.0], n_eval=300, n_probe_train=300)
    assert curve["probe_accuracy"][0] > 0.5  # well above chance 1/3 at low noise
    assert curve["probe_accuracy"][1] < 0.45  # near chance at very high noise


def test_feature_layers_match_a_manual_forward_pass(small_data):
    import torch

    model, _, _, fresh, gen, _ = small_data
    x, sigma = fresh[:7], 0.7
    net = gen.net_
    # independent forward pass through the stored modules: c_in x -> SiLU layers with the sigma embedding
    c_in = 1.0 / np.sqrt(gen.data_scale_**2 + sigma**2)
    with torch.no_grad():
        log_s = torch.full((7,), float(np.log(sigma)))
        angles = log_s[:, None] * net.freqs[None]
        emb = net.emb(torch.cat([angles.sin(), angles.cos()], 1)).view(7, 2, 64)
        h0 = torch.nn.functional.silu(net.inp(torch.as_tensor(c_in * x, dtype=torch.float32)) + emb[:, 0])
        h1 = torch.nn.functional.silu(net.hidden[0](h0) + emb[:, 1])
        out = net.out(h1).double().numpy()
    np.testing.assert_allclose(gen.features(x, sigma, layer=0), h0.double().numpy(), atol=1e-5)
    np.testing.assert_allclose(gen.features(x, sigma, layer=1), h1.double().numpy(), atol=1e-5)
    np.testing.assert_allclose(gen.features(x, sigma), gen.features(x, sigma, layer=-1))
    np.testing.assert_allclose(gen.features(x, sigma, layer=-2), gen.features(x, sigma, layer=0))
    # the denoiser output is c_skip x + c_out F
    s2 = gen.data_scale_**2
    expected = s2 / (s2 + sigma**2) * x + sigma * gen.data_scale_ / np.sqrt(s2 + sigma**2) * out
    np.testing.assert_allclose(gen.posterior_mean(x, sigma), expected, atol=1e-4)
    with pytest.raises(ValueError, match="layer"):
        gen.features(x, sigma, layer=2)
    curve = feature_probe_curve(model, gen, [0.05], n_eval=200, n_probe_train=200, layer=0)
    assert curve["probe_accuracy"][0] > 0.45  # chance is 1/3


def test_linear_probe_on_separable_features():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    feats = rng.standard_normal((200, 3)) + 4.0 * y[:, None]
    assert linear_probe_accuracy(feats[:100], y[:100], feats[100:], y[100:]) > 0.97
    with pytest.raises(ValueError, match="features"):
        linear_probe_accuracy(feats[:, :2], y, feats, y)


def test_trained_denoiser_bad_inputs(small_data):
    *_, gen, _ = small_data
    with pytest.raises(RuntimeError, match="not fitted"):
        TrainedDenoiser().posterior_mean(np.zeros((2, 12)), 1.0)
    with pytest.raises(ValueError, match="shape"):
        gen.features(np.zeros((2, 11)), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        gen.posterior_mean(np.zeros((2, 12)), -1.0)
    with pytest.raises(ValueError, match="x0"):
        TrainedDenoiser(steps=1).fit(np.zeros(5))
    with pytest.raises(ValueError, match="width"):
        TrainedDenoiser(width=0)
    with pytest.raises(ValueError, match="ratio"):
        copy_fraction(gen, np.zeros((3, 12)), np.zeros((2, 12)), 1.0, ratio=2.0)


def test_probe_shape_rule_separates_bump_from_monotone_curves():
    from emreason.extras.reproduce.diffusion_molrg import probe_shape

    bump = probe_shape([0.75, 0.81, 0.86, 0.80, 0.40, 0.33], tol=0.03)
    assert bump["unimodal"] and not bump["monotone_decreasing_within_tol"] and bump["peak_index"] == 2
    assert bump["peak_minus_lowest_noise"] == pytest.approx(0.11)
    flat_then_down = probe_shape([0.44, 0.45, 0.44, 0.40, 0.34, 0.33], tol=0.03)
    assert flat_then_down["monotone_decreasing_within_tol"] and not flat_then_down["unimodal"]
    # a late rise above the running maximum by more than tol: not monotone; a peak at the end: not unimodal
    late = probe_shape([0.50, 0.45, 0.40, 0.56], tol=0.03)
    assert not late["monotone_decreasing_within_tol"] and not late["unimodal"]
