"""Tests for emreason.extras.jala_em: exact marginal likelihood, gradients, log Z tracking, resampling."""

import numpy as np
import pytest
from emreason.extras.jala_em import (
    JALAEM,
    BatchedBayesianPolynomialRegression,
    BayesianPolynomialRegression,
    LinearGaussianRegression,
    NumpyAdam,
    systematic_resample,
)
from scipy.optimize import minimize, minimize_scalar
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
        JALAEM(ess_threshold=-0.1).fit(model, np.zeros(1))
    with pytest.raises(ValueError, match="weight_update"):
        JALAEM(weight_update="bogus").fit(model, np.zeros(1))
    with pytest.raises(ValueError, match="theta"):
        JALAEM().fit(model, np.zeros(3))
    with pytest.raises(ValueError, match="order"):
        LinearGaussianRegression(np.zeros(5), np.zeros(5), order=-1)


@pytest.fixture(scope="module")
def poly_model():
    rng = np.random.default_rng(4)
    inputs = rng.uniform(-2, 2, 80)
    targets = np.vander(inputs, 4, increasing=True) @ np.array([0.5, -1.0, 0.3, 0.8]) + 0.7 * rng.normal(
        size=80
    )
    return BayesianPolynomialRegression(inputs, targets, order=3)


def test_bayesian_polynomial_evidence_matches_scipy_gaussian(poly_model):
    for theta in ((0.0, 0.0), (-1.2, 0.7), (1.5, -0.4)):
        alpha, beta = np.exp(theta)
        covariance = np.eye(80) / beta + poly_model.features @ poly_model.features.T / alpha
        reference = multivariate_normal(np.zeros(80), covariance).logpdf(poly_model.targets)
        assert abs(poly_model.log_marginal(np.array(theta)) - reference) < 1e-7


def test_bayesian_polynomial_joint_minus_posterior_is_evidence(poly_model):
    theta = np.array([-0.5, 0.6])
    x = poly_model.sample_posterior(theta, 6, np.random.default_rng(5))
    alpha, beta = np.exp(theta)
    precision = alpha * np.eye(4) + beta * poly_model.features.T @ poly_model.features
    posterior = multivariate_normal(poly_model.posterior_mean(theta), np.linalg.inv(precision))
    np.testing.assert_allclose(
        poly_model.log_joint(theta, x) - posterior.logpdf(x), poly_model.log_marginal(theta), atol=1e-7
    )


def test_bayesian_polynomial_gradients_match_finite_differences(poly_model):
    theta = np.array([0.2, -0.3])
    x = np.random.default_rng(6).normal(size=(5, 4))
    step = 1e-6
    for j in range(4):
        e = np.zeros(4)
        e[j] = step
        fd = (poly_model.log_joint(theta, x + e) - poly_model.log_joint(theta, x - e)) / (2 * step)
        np.testing.assert_allclose(poly_model.grad_x_log_joint(theta, x)[:, j], fd, rtol=1e-5, atol=1e-4)
    for j in range(2):
        e = np.zeros(2)
        e[j] = step
        fd = (poly_model.log_joint(theta + e, x) - poly_model.log_joint(theta - e, x)) / (2 * step)
        np.testing.assert_allclose(poly_model.grad_theta_log_joint(theta, x)[:, j], fd, rtol=1e-5, atol=1e-4)


def test_bayesian_polynomial_log_z_tracks_and_theta_reaches_mmle(poly_model):
    theta0 = np.array([0.5, -0.5])
    sampler = JALAEM(n_particles=50, n_steps=400, langevin_step=1e-3, learning_rate=2e-2, random_state=0)
    sampler.fit(poly_model, theta0)
    exact = np.array([poly_model.log_marginal(theta) for theta in sampler.theta_path_])
    assert exact[-1] - exact[0] > 1.0
    assert np.max(np.abs(sampler.log_marginal_path_ - exact)) < 0.3
    best = minimize(lambda t: -poly_model.log_marginal(t), theta0, method="Nelder-Mead")
    np.testing.assert_allclose(sampler.theta_, best.x, atol=0.1)


def test_langevin_step_is_capped_by_the_model_bound(poly_model):
    theta = np.array([0.0, 2.0])
    bound = poly_model.langevin_step_bound(theta)
    gram = poly_model.features.T @ poly_model.features
    assert bound == pytest.approx(0.5 / (1.0 + np.exp(2.0) * np.linalg.eigvalsh(gram)[-1]))
    # with an uncapped step of 1.0 ULA would diverge (step >> 2 / L); the cap keeps it finite
    sampler = JALAEM(n_particles=10, n_steps=50, langevin_step=1.0, learning_rate=0.0).fit(poly_model, theta)
    assert np.all(np.isfinite(sampler.particles_))


def test_numpy_adam_matches_torch_adam():
    import torch

    rng = np.random.default_rng(7)
    grads = rng.normal(size=(30, 3))
    ours = NumpyAdam(np.array([0.1, -0.2, 0.3]), lr=0.05)
    tensor = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64, requires_grad=True)
    reference = torch.optim.Adam([tensor], lr=0.05)
    for grad in grads:
        params = ours.step(grad)
        tensor.grad = torch.from_numpy(grad.copy())
        reference.step()
    np.testing.assert_allclose(params, tensor.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.fixture(scope="module")
def batch_data():
    rng = np.random.default_rng(8)
    inputs = [rng.uniform(-2.5, 2.5, n) for n in (40, 70, 120)]
    targets = [
        np.vander(x, 3, increasing=True) @ rng.normal(size=3) + 2.0 * rng.normal(size=len(x)) for x in inputs
    ]
    return inputs, targets


def test_batched_model_matches_single_models(batch_data):
    inputs, targets = batch_data
    batched = BatchedBayesianPolynomialRegression.from_data(inputs, targets, order=4)
    theta = np.array([[0.3, -1.0], [-0.5, -1.5], [1.0, -0.2]])
    x = np.random.default_rng(9).normal(size=(3, 6, 5))
    log_joint, grad_x, grad_theta = batched.log_joint_and_grads(theta, x)
    for b, (inp, tar) in enumerate(zip(inputs, targets, strict=True)):
        single = BayesianPolynomialRegression(inp, tar, order=4)
        np.testing.assert_allclose(log_joint[b], single.log_joint(theta[b], x[b]), rtol=1e-10)
        np.testing.assert_allclose(grad_x[b], single.grad_x_log_joint(theta[b], x[b]), rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(grad_theta[b], single.grad_theta_log_joint(theta[b], x[b]), rtol=1e-10)
        assert batched.log_marginal(theta)[b] == pytest.approx(single.log_marginal(theta[b]), abs=1e-8)
        assert batched.langevin_step_bound(theta)[b] == pytest.approx(single.langevin_step_bound(theta[b]))


def test_batched_posterior_draws_have_the_posterior_moments(batch_data):
    inputs, targets = batch_data
    batched = BatchedBayesianPolynomialRegression.from_data(inputs, targets, order=2)
    theta = np.tile([0.0, -np.log(4.0)], (3, 1))
    draws = batched.sample_posterior(theta, 20000, np.random.default_rng(10))
    for b, (inp, tar) in enumerate(zip(inputs, targets, strict=True)):
        single = BayesianPolynomialRegression(inp, tar, order=2)
        precision = np.eye(3) + 0.25 * single.features.T @ single.features
        covariance = np.linalg.inv(precision)
        np.testing.assert_allclose(
            draws[b].mean(0), single.posterior_mean(theta[b]), atol=5 * np.sqrt(covariance.max() / 2e4)
        )
        np.testing.assert_allclose(np.cov(draws[b].T), covariance, rtol=0.1, atol=0.05 * covariance.max())


def test_type2_ml_maximises_the_evidence(batch_data):
    inputs, targets = batch_data
    batched = BatchedBayesianPolynomialRegression.from_data(inputs, targets, order=3)
    theta = batched.type2_ml(np.zeros((3, 2)))
    for b, (inp, tar) in enumerate(zip(inputs, targets, strict=True)):
        single = BayesianPolynomialRegression(inp, tar, order=3)
        best = minimize(lambda t, m=single: -m.log_marginal(t), theta[b] + 0.3, method="Nelder-Mead")
        assert single.log_marginal(theta[b]) >= -best.fun - 1e-5


def test_fit_batch_tracks_the_exact_evidence_for_every_problem(batch_data):
    inputs, targets = batch_data
    batched = BatchedBayesianPolynomialRegression.from_data(inputs, targets, order=2)
    sampler = JALAEM(n_particles=100, n_steps=150, langevin_step=1e-2, learning_rate=2e-2, ess_threshold=0.5)
    sampler.fit_batch(batched, np.tile([1.0, 0.0], (3, 1)))
    assert sampler.theta_path_.shape == (151, 3, 2) and sampler.log_marginal_path_.shape == (151, 3)
    exact = np.stack([batched.log_marginal(theta) for theta in sampler.theta_path_])
    assert np.all(exact[-1] - exact[0] > 1.0)  # every problem moved uphill
    assert np.max(np.abs(sampler.log_marginal_path_ - exact)) < 0.3
    assert sampler.n_resamples_.shape == (3,)


def test_crooks_weights_stay_unbiased_where_plain_reweighting_is_biased(poly_model):
    """With a large ULA step (the stability cap binds) the ULA kernel is far from invariant: reweighting
    at fixed particles then drifts away from the exact evidence, the paper's Crooks weights do not."""
    errors = {"crooks": [], "reweight": []}
    for seed in range(6):
        for update in errors:
            sampler = JALAEM(n_particles=200, n_steps=60, langevin_step=1.0, learning_rate=2e-2,
                             ess_threshold=0.0, random_state=seed, weight_update=update)  # fmt: skip
            sampler.fit(poly_model, np.array([1.0, -1.5]))
            errors[update].append(sampler.log_marginal_ - poly_model.log_marginal(sampler.theta_))
    assert abs(np.mean(errors["crooks"])) < 0.15
    assert abs(np.mean(errors["reweight"])) > 2 * abs(np.mean(errors["crooks"]))
