"""Tests for emreason.extras.ngvi: quadrature vs Monte Carlo, gradients, fixed points, projection."""

import numpy as np
import pytest
from emreason.extras.ngvi import LogisticRegressionVIProblem, MeanFieldGaussianVI
from scipy.optimize import minimize
from scipy.special import log_expit


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    X = np.column_stack([np.ones(120), rng.normal(size=(120, 4))])
    theta = np.array([0.5, 1.0, -1.0, 2.0, 0.0])
    y = (rng.random(120) < 1 / (1 + np.exp(-X @ theta))).astype(float)
    return LogisticRegressionVIProblem(X, y, prior_var=2.0)


@pytest.fixture(scope="module")
def optimum(problem):
    d = problem.dim

    def objective(params):
        m, v = params[:d], np.exp(params[d:])
        gm, gv = problem.loss_grads(m, v)
        return problem.loss(m, v), np.concatenate([gm, gv * v])

    result = minimize(objective, np.zeros(2 * d), jac=True, method="L-BFGS-B", options={"gtol": 1e-10})
    return result.fun, result.x[:d], np.exp(result.x[d:])


def test_quadrature_loss_matches_monte_carlo(problem):
    rng = np.random.default_rng(1)
    m, v = rng.normal(size=5) * 0.5, rng.uniform(0.1, 1.0, size=5)
    samples = m + np.sqrt(v) * rng.standard_normal((20_000, 5))
    per_sample = -log_expit(samples @ problem.signed_X.T).sum(axis=1)
    kl = 0.5 * np.sum(v / 2.0 + m**2 / 2.0 - 1 - np.log(v / 2.0))
    mc = per_sample.mean() + kl
    assert abs(problem.loss(m, v) - mc) < 5 * per_sample.std() / np.sqrt(len(per_sample))


def test_gradients_match_finite_differences(problem):
    rng = np.random.default_rng(2)
    m, v = rng.normal(size=5) * 0.3, rng.uniform(0.2, 1.0, size=5)
    grad_m, grad_v = problem.loss_grads(m, v)
    step = 1e-6
    for j in range(5):
        e = np.zeros(5)
        e[j] = step
        fd_m = (problem.loss(m + e, v) - problem.loss(m - e, v)) / (2 * step)
        fd_v = (problem.loss(m, v + e) - problem.loss(m, v - e)) / (2 * step)
        assert abs(fd_m - grad_m[j]) < 1e-5 * max(1, abs(fd_m))
        # The variance gradient is the exact derivative of the quadrature loss (Stein form): it matches too.
        assert abs(fd_v - grad_v[j]) < 1e-5 * max(1, abs(fd_v))


def test_variance_gradient_is_consistent_when_margins_are_wide():
    # Features x 20 make the margin std ~ 40 at the prior: Price's quadrature of sigmoid' (a bump of width ~2
    # between nodes ~10 apart) was off by far more than the finite-difference tolerance here.
    rng = np.random.default_rng(5)
    X = np.column_stack([np.ones(80), 20.0 * rng.normal(size=(80, 3))])
    y = (rng.random(80) < 0.5).astype(float)
    wide = LogisticRegressionVIProblem(X, y)
    m, v = np.full(4, 0.05), np.full(4, 0.8)
    grad_v = wide.loss_grads(m, v)[1]
    for j in range(4):
        e = np.zeros(4)
        e[j] = 1e-6
        fd_v = (wide.loss(m, v + e) - wide.loss(m, v - e)) / 2e-6
        assert abs(fd_v - grad_v[j]) < 1e-4 * max(1, abs(fd_v))


def test_minibatch_gradient_is_unbiased(problem):
    m, v = np.full(5, 0.1), np.full(5, 0.5)
    full = problem.likelihood_grads(m, v)[0]
    rng = np.random.default_rng(3)
    batches = [problem.likelihood_grads(m, v, rng.choice(120, 10, replace=False))[0] for _ in range(3000)]
    mean, se = np.mean(batches, axis=0), np.std(batches, axis=0) / np.sqrt(3000)
    assert np.all(np.abs(mean - full) < 5 * se + 1e-12)


@pytest.mark.parametrize("method", ["sngd", "proj_sngd"])
def test_full_batch_natural_gradient_reaches_the_lbfgs_optimum(problem, optimum, method):
    loss_star, m_star, v_star = optimum
    fit = MeanFieldGaussianVI(method, 0.5, n_iter=80, batch_size=None).fit(problem)
    assert fit.final_loss_ - loss_star < 1e-6
    np.testing.assert_allclose(fit.mean_, m_star, atol=1e-3)
    np.testing.assert_allclose(fit.var_, v_star, rtol=1e-3)


@pytest.mark.parametrize("method", ["prox_sgd", "proj_sgd"])
def test_full_batch_euclidean_methods_approach_the_optimum(problem, optimum, method):
    loss_star = optimum[0]
    fit = MeanFieldGaussianVI(method, 0.01, n_iter=400, batch_size=None).fit(problem)
    assert fit.final_loss_ - loss_star < 1e-4


def test_projection_keeps_iterates_valid_where_sngd_diverges(problem):
    sngd = MeanFieldGaussianVI("sngd", 2.5, n_iter=200, batch_size=8).fit(problem)
    proj = MeanFieldGaussianVI(
        "proj_sngd", 2.5, n_iter=200, batch_size=8, mean_bound=5.0, variance_bound=20.0
    )
    proj.fit(problem)
    assert sngd.diverged_ and not np.isfinite(sngd.final_loss_)
    assert not proj.diverged_ and np.isfinite(proj.final_loss_)
    assert np.all(np.abs(proj.mean_) <= 5.0) and np.all((proj.var_ >= 1 / 20.0) & (proj.var_ <= 20.0))


def test_decreasing_step_suboptimality_shrinks(problem, optimum):
    loss_star = optimum[0]
    gaps = []
    for horizon in (50, 800):
        runs = [
            MeanFieldGaussianVI(
                "proj_sngd", lambda t: 2.0 / (t + 40.0), n_iter=horizon, batch_size=10, random_state=s
            )
            .fit(problem)
            .final_loss_
            - loss_star
            for s in range(3)
        ]
        gaps.append(np.mean(runs))
    assert gaps[1] < gaps[0] / 4  # a 16x longer run must cut the gap by well over sqrt(16)


def test_bad_inputs_raise(problem):
    with pytest.raises(ValueError, match="method"):
        MeanFieldGaussianVI("adam").fit(problem)
    with pytest.raises(ValueError, match="step_size"):
        MeanFieldGaussianVI(step_size=-1.0).fit(problem)
    with pytest.raises(ValueError, match="batch_size"):
        MeanFieldGaussianVI(batch_size=1000).fit(problem)
    with pytest.raises(TypeError, match="LogisticRegressionVIProblem"):
        MeanFieldGaussianVI().fit("not a problem")
    with pytest.raises(ValueError, match="y must be"):
        LogisticRegressionVIProblem(np.zeros((3, 2)), np.array([0.0, 2.0, 1.0]))


def test_stationary_box_contains_the_optimum(problem, optimum):
    _, m_star, v_star = optimum
    upper_mean, v_lo, v_hi = problem.stationary_box()
    assert np.all(np.abs(m_star) <= upper_mean)
    assert np.all((v_lo <= v_star) & (v_star <= v_hi))
    # the box is informative: the variance interval is far narrower than [1/100, 100]
    assert np.all(v_hi == 2.0) and np.all(v_lo > 0.01)


def test_natural_gradient_is_invariant_to_rescaling_the_coordinates_and_euclidean_is_not(problem):
    scales = np.array([1.0, 30.0, 0.03, 5.0, 0.2])
    rescaled = LogisticRegressionVIProblem(problem.X * scales, problem.y, prior_var=2.0 / scales**2)
    for method, eta in (("sngd", 0.3), ("prox_sgd", 0.01)):
        fits = [
            MeanFieldGaussianVI(method, eta, n_iter=60, batch_size=None, record_every=20).fit(p)
            for p in (problem, rescaled)
        ]
        histories = [[x[1] for x in fit.loss_history_] for fit in fits]
        same = len(histories[0]) == len(histories[1]) and np.allclose(*histories, rtol=1e-8)
        assert same == (method == "sngd"), (method, histories)


def test_projection_puts_coordinates_that_leave_the_family_on_the_box_corner(problem):
    # eta > 1 makes lam2 <- (1 - eta) lam2 + ... positive from a small variance: the step leaves the family.
    fit = MeanFieldGaussianVI(
        "proj_sngd", 2.5, n_iter=1, batch_size=None, mean_bound=3.0, variance_bound=(1e-4, 2.0)
    ).fit(problem, init_var=np.full(5, 1e-3))
    assert fit.n_left_family_ == 1 and fit.n_projected_ == 1
    np.testing.assert_allclose(fit.var_, 2.0)  # every coordinate left: v = v_hi
    np.testing.assert_allclose(np.abs(fit.mean_)[fit.mean_ != 0], 3.0)  # m = sign(lam1) U


def test_reproduce_quick_writes_results_and_shows_the_invariance(tmp_path):
    import json

    from emreason.extras.reproduce import ngvi as reproduce

    payload = reproduce.main(["--quick", "--output", str(tmp_path)])
    assert (tmp_path / "step_size_robustness.png").stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    control, rescaled = saved["settings"]["standardised"], saved["settings"]["rescaled"]
    # the rescaled problem is a reparameterisation: same optimum, same natural-gradient runs
    assert abs(control["optimum"]["l_star"] - rescaled["optimum"]["l_star"]) < 1e-3
    for method in ("sngd", "proj_sngd"):
        for a, b in zip(control["sweeps"]["full_batch"][method], rescaled["sweeps"]["full_batch"][method]):
            assert (a["mean_final_loss"] is None) == (b["mean_final_loss"] is None)
            if a["mean_final_loss"] is not None and a["mean_final_loss"] < 1e4:
                assert abs(a["mean_final_loss"] - b["mean_final_loss"]) < 1e-3 * a["mean_final_loss"]
    # ... while the Euclidean stability limit shrinks with the condition number
    assert (
        rescaled["optimum"]["stable_step_euclidean_mean"]
        < control["optimum"]["stable_step_euclidean_mean"] / 30
    )
    assert payload["rate_proj_sngd_decreasing_step"]["loglog_slope"] < 0


@pytest.mark.parametrize("variance", [0.5, 0.0])
def test_mean_hessian_matches_finite_differences_of_the_mean_gradient(problem, variance):
    # variance 0: every margin std is 0, where the Stein form cannot divide and Price's form must take over.
    m, v = np.random.default_rng(3).normal(size=5) * 0.3, np.full(5, variance)
    likelihood_hessian = problem.mean_hessian(m, v) - np.eye(5) / problem.prior_var
    for j in range(5):
        e = np.zeros(5)
        e[j] = 1e-5
        column = (problem.likelihood_grads(m + e, v)[0] - problem.likelihood_grads(m - e, v)[0]) / 2e-5
        # Stein-form curvature vs the derivative of the quadrature gradient: equal up to quadrature error.
        np.testing.assert_allclose(likelihood_hessian[:, j], column, rtol=5e-3, atol=1e-3)
