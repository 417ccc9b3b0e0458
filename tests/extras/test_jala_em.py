"""Tests for emreason.extras.jala_em: exact marginal likelihood, gradients, log Z tracking, resampling."""

import numpy as np
import pytest
from emreason.extras.jala_em import JALAEM, LinearGaussianRegression, systematic_resample
from scipy.optimize import minimize_scalar
from scipy.stats import multivariate_normal


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    inputs = rng.uniform(-1, 1, 60)
    targets = np.vander(inputs, 3, increasing=True) @ np.array([1.0, -0.5, 0.8]) + rng.normal(size=60)
    return LinearGaussianRegression(inputs, targets, order=2)


def test_log_marginal_matches_scipy_gaussian(model):
    for theta in (0.0, 0.7, -1.3):
        mean = model.features.sum(axis=1) * theta
        covariance = np.eye(60) + model.features @ model.features.T
        reference = multivariate_normal(mean, covariance).logpdf(model.targets)
        assert abs(model.log_marginal(np.array([theta])) - reference) < 1e-8


def test_log_joint_integrates_to_log_marginal(model):
    """log p(x, y) - log p(x | y) is constant in x and equals log p(y)."""
    theta = np.array([0.4])
    rng = np.random.default_rng(1)
    x = model.sample_posterior(theta, 5, rng)
    posterior = multivariate_normal(model.posterior_mean(theta), model._posterior_cov)
    differences = model.log_joint(theta, x) - posterior.logpdf(x)
    np.testing.assert_allclose(differences, model.log_marginal(theta), atol=1e-8)


def test_gradients_match_finite_differences(model):
    theta = np.array([0.3])
    x = np.random.default_rng(2).normal(size=(4, 3))
    step = 1e-6
    grad_x = model.grad_x_log_joint(theta, x)
    for j in range(3):
        e = np.zeros(3)
        e[j] = step
        fd = (model.log_joint(theta, x + e) - model.log_joint(theta, x - e)) / (2 * step)
        np.testing.assert_allclose(grad_x[:, j], fd, rtol=1e-5, atol=1e-5)
    fd_theta = (model.log_joint(theta + step, x) - model.log_joint(theta - step, x)) / (2 * step)
    np.testing.assert_allclose(model.grad_theta_log_joint(theta, x)[:, 0], fd_theta, rtol=1e-5, atol=1e-5)


def test_mmle_matches_numerical_maximiser(model):
    numeric = minimize_scalar(lambda t: -model.log_marginal(np.array([t])), bounds=(-5, 5), method="bounded")
    assert abs(model.mmle()[0] - numeric.x) < 1e-4


def test_log_z_hat_tracks_analytic_marginal_along_the_path(model):
    sampler = JALAEM(n_particles=50, n_steps=200, langevin_step=1e-3, learning_rate=5e-2, random_state=0)
    sampler.fit(model, np.array([-1.0]))
    exact = np.array([model.log_marginal(theta) for theta in sampler.theta_path_])
    assert exact[-1] - exact[0] > 2.0  # the parameter really moved uphill
    assert np.max(np.abs(sampler.log_marginal_path_ - exact)) < 0.1
    assert sampler.log_marginal_path_[0] == exact[0]  # exact Z0 at the start


def test_theta_converges_to_mmle(model):
    sampler = JALAEM(n_particles=50, n_steps=400, langevin_step=1e-3, learning_rate=5e-2, random_state=1)
    sampler.fit(model, np.array([-1.0]))
    assert abs(sampler.theta_[0] - model.mmle()[0]) < 0.05


def test_resampling_is_triggered_and_preserves_the_estimate(model):
    sampler = JALAEM(n_particles=30, n_steps=60, langevin_step=1e-3, learning_rate=0.3, ess_threshold=0.99)
    sampler.fit(model, np.array([-3.0]))
    assert sampler.n_resamples_ > 0
    exact = np.array([model.log_marginal(theta) for theta in sampler.theta_path_])
    assert np.max(np.abs(sampler.log_marginal_path_ - exact)) < 0.5


def test_systematic_resample_counts_are_floor_or_ceil():
    rng = np.random.default_rng(3)
    weights = rng.random(20)
    weights /= weights.sum()
    counts = np.bincount(systematic_resample(weights, rng), minlength=20)
    assert counts.sum() == 20
    assert np.all(counts >= np.floor(20 * weights)) and np.all(counts <= np.ceil(20 * weights))


def test_bad_inputs_raise(model):
    with pytest.raises(ValueError, match="n_particles"):
        JALAEM(n_particles=1).fit(model, np.zeros(1))
    with pytest.raises(ValueError, match="ess_threshold"):
        JALAEM(ess_threshold=0).fit(model, np.zeros(1))
    with pytest.raises(ValueError, match="theta"):
        JALAEM().fit(model, np.zeros(3))
    with pytest.raises(ValueError, match="order"):
        LinearGaussianRegression(np.zeros(5), np.zeros(5), order=-1)
