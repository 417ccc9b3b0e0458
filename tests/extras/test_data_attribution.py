"""Tests for emreason.extras.data_attribution (tiny models; dattri wrappers checked against autograd)."""

import warnings

import numpy as np
import pytest
import torch
from emreason.extras.data_attribution import (
    FurtherTrainingGoldStandard,
    GaussNewtonInfluence,
    agreement,
    attribution_scores,
    energy_like_regression,
    make_mlp,
    sharpness,
    train_final_model,
)

warnings.filterwarnings("ignore", message=".*full training data loader.*")


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -0.5, 0.3, 0.0]) + 0.2 * np.sin(3 * x[:, 0])).astype(np.float32)
    x_test = rng.standard_normal((6, 4)).astype(np.float32)
    y_test = (x_test @ np.array([1.0, -0.5, 0.3, 0.0])).astype(np.float32)
    model = train_final_model(make_mlp(4, hidden=8, seed=1), x, y, epochs=60, lr=3e-2, batch_size=16)
    return model, x, y, x_test, y_test, np.array([0, 7, 13, 39])


def _reference_run(model, x, y, x_test, y_test, order_per_epoch, lr, batch_size):
    """Plain per-run SGD with a DataLoader-like chunking of a given order (independent of the vmap code)."""
    clone = make_mlp(4, hidden=8)
    clone.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(clone.parameters(), lr=lr)
    xt, yt = torch.tensor(x), torch.tensor(y)
    for order in order_per_epoch:
        for start in range(0, len(order), batch_size):
            idx = torch.tensor(order[start : start + batch_size])
            loss = ((clone(xt[idx]).reshape(-1) - yt[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return ((clone(torch.tensor(x_test)).reshape(-1) - torch.tensor(y_test)) ** 2).numpy()


class _NotSequential(torch.nn.Module):
    """Same MLP behind a non-Sequential module, to exercise the generic vmap path of the gold standard."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("path", ["batched", "vmap"])
def test_gold_standard_matches_loop_reference(problem, path):
    model, x, y, x_test, y_test, leave_out = problem
    gs = FurtherTrainingGoldStandard(
        checkpoints=(1, 3), n_seeds=1, lr=3e-2, batch_size=16, random_state=5, subtract_mean=False
    )
    gs.fit(model if path == "batched" else _NotSequential(model), x, y, x_test, y_test, leave_out)
    rng = np.random.default_rng([5, 0])
    perms = [rng.permutation(len(x)) for _ in range(3)]
    for c, epochs in enumerate((1, 3)):
        full = _reference_run(model, x, y, x_test, y_test, perms[:epochs], 3e-2, 16)
        for j, i in enumerate(leave_out):
            loo = _reference_run(model, x, y, x_test, y_test, [p[p != i] for p in perms[:epochs]], 3e-2, 16)
            np.testing.assert_allclose(gs.gold_[c, j], loo - full, atol=2e-6)
        np.testing.assert_allclose(gs.full_test_loss_[c], full, rtol=1e-4)  # float32, other op order


def test_subtract_mean_centres_each_seed(problem):
    model, x, y, x_test, y_test, leave_out = problem
    kwargs = dict(checkpoints=(2,), n_seeds=3, batch_size=16, random_state=1)
    raw = FurtherTrainingGoldStandard(subtract_mean=False, **kwargs).fit(
        model, x, y, x_test, y_test, leave_out
    )
    ctr = FurtherTrainingGoldStandard(subtract_mean=True, **kwargs).fit(
        model, x, y, x_test, y_test, leave_out
    )
    expected = raw.effects_ - raw.effects_.mean(axis=2, keepdims=True)
    np.testing.assert_allclose(ctr.effects_, expected, atol=1e-9)
    np.testing.assert_allclose(ctr.gold_.sum(axis=1), 0.0, atol=1e-9)
    assert ctr.snr_.shape == (1,) and np.all(ctr.snr_ > 0)


def test_paired_seeds_have_lower_variance_than_unpaired(problem):
    """Common random numbers: with the same order for the full and the left-out runs, the per-seed effect
    varies far less across seeds than with independent orders (the reason fimoda pairs the runs)."""
    model, x, y, x_test, y_test, leave_out = problem
    kwargs = dict(checkpoints=(10,), n_seeds=6, lr=3e-2, batch_size=8, random_state=2)
    paired = FurtherTrainingGoldStandard(paired=True, **kwargs).fit(model, x, y, x_test, y_test, leave_out)
    unpaired = FurtherTrainingGoldStandard(paired=False, **kwargs).fit(model, x, y, x_test, y_test, leave_out)
    # measured: standard errors 2.0e-4 vs 1.5e-3, signal-to-noise 3.4 vs 0.9
    assert paired.gold_se_.mean() < 0.3 * unpaired.gold_se_.mean()
    assert paired.snr_[0] > 2 * unpaired.snr_[0]


def test_unpaired_orders_differ_between_runs():
    gs = FurtherTrainingGoldStandard(paired=False)
    perms = np.array([[4, 2, 0, 3, 1], [0, 1, 2, 3, 4], [3, 1, 4, 0, 2]])
    idx, mask = gs._orders(perms, np.array([0, 1]))
    np.testing.assert_array_equal(idx[0], perms[0])
    np.testing.assert_array_equal(idx[1][mask[1]], [1, 2, 3, 4])
    np.testing.assert_array_equal(idx[2][mask[2]], [3, 4, 0, 2])


def test_sharpness_matches_explicit_hessian(problem):
    model, x, y, _, _, _ = problem
    params = {k: v.detach() for k, v in model.named_parameters()}
    names, shapes = list(params), [v.shape for v in params.values()]
    flat = torch.cat([v.reshape(-1) for v in params.values()]).double()

    def loss(theta):
        parts, offset = {}, 0
        for name, shape in zip(names, shapes):
            size = int(np.prod(shape))
            parts[name] = theta[offset : offset + size].reshape(shape)
            offset += size
        pred = torch.func.functional_call(model.double(), parts, (torch.tensor(x).double(),)).reshape(-1)
        return ((pred - torch.tensor(y).double()) ** 2).mean()

    hessian = torch.autograd.functional.hessian(loss, flat)
    model.float()
    top = torch.linalg.eigvalsh(hessian)[-1].item()
    assert sharpness(model, x, y, iterations=300) == pytest.approx(top, rel=1e-3)


def test_removal_order_keeps_the_permutation():
    gs = FurtherTrainingGoldStandard()
    perm = np.array([4, 2, 0, 3, 1])
    idx, mask = gs._orders(perm, np.array([0, 1]))
    np.testing.assert_array_equal(idx[0], perm)
    np.testing.assert_array_equal(idx[1][mask[1]], [4, 2, 3, 1])
    np.testing.assert_array_equal(idx[2][mask[2]], [4, 2, 0, 3])
    assert mask[0].all() and mask[1:].sum(1).tolist() == [4, 4]


def _per_sample_grads(model, x, y, params=None):
    names = [n for n, _ in model.named_parameters()] if params is None else params
    out = []
    for xi, yi in zip(torch.tensor(x), torch.tensor(y)):
        model.zero_grad()
        ((model(xi[None]).reshape(-1) - yi) ** 2).sum().backward()
        out.append(torch.cat([p.grad.reshape(-1) for n, p in model.named_parameters() if n in names]))
    return torch.stack(out)


def test_grad_dot_and_grad_cos_match_autograd(problem):
    model, x, y, x_test, y_test, leave_out = problem
    g_train = _per_sample_grads(model, x[leave_out], y[leave_out])
    g_test = _per_sample_grads(model, x_test, y_test)
    dot = attribution_scores("grad_dot", model, x, y, x_test, y_test, leave_out)
    np.testing.assert_allclose(dot, (g_train @ g_test.T).numpy(), rtol=1e-4, atol=1e-5)
    cos = attribution_scores("grad_cos", model, x, y, x_test, y_test, leave_out)
    normed = (g_train / g_train.norm(dim=1, keepdim=True)) @ (g_test / g_test.norm(dim=1, keepdim=True)).T
    np.testing.assert_allclose(cos, normed.numpy(), atol=1e-5)


def test_explicit_influence_matches_last_layer_hessian(problem):
    model, x, y, x_test, y_test, leave_out = problem
    names = [n for n, _ in model.named_parameters()][-2:]
    last = model[-1]
    feats = model[:-1](torch.tensor(x)).detach().double()
    design = torch.cat([feats, torch.ones(len(x), 1, dtype=torch.float64)], 1)
    # Hessian of the mean squared error w.r.t. (weight, bias) of a linear head: 2 Z^T Z / n
    hessian = 2 * design.T @ design / len(x) + 1e-3 * torch.eye(design.shape[1], dtype=torch.float64)
    g_train = _per_sample_grads(model, x[leave_out], y[leave_out], names).double()
    g_test = _per_sample_grads(model, x_test, y_test, names).double()
    expected = g_train @ torch.linalg.solve(hessian, g_test.T)
    scores = attribution_scores("if_explicit", model, x, y, x_test, y_test, leave_out, damping=1e-3)
    assert last.weight.numel() + last.bias.numel() == design.shape[1]
    np.testing.assert_allclose(scores, expected.numpy(), rtol=2e-3, atol=1e-3 * expected.abs().max().item())


@pytest.mark.parametrize("method", ["if_cg", "if_lissa", "datainf", "trak"])
def test_other_methods_run_and_return_finite_scores(problem, method):
    model, x, y, x_test, y_test, leave_out = problem
    scores = attribution_scores(method, model, x, y, x_test, y_test, leave_out, lissa_depth=50, trak_dim=16)
    assert scores.shape == (len(leave_out), len(x_test))
    assert np.all(np.isfinite(scores)) and np.abs(scores).max() > 0


def test_agreement_cosine_and_spearman():
    rng = np.random.default_rng(1)
    gold = rng.standard_normal((10, 3))
    same = agreement(2 * gold, gold)
    assert same["cosine"] == pytest.approx(1.0) and same["spearman"] == pytest.approx(1.0)
    assert agreement(-gold, gold)["cosine"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="equal shape"):
        agreement(gold[:5], gold)


def test_bad_inputs_raise(problem):
    model, x, y, x_test, y_test, _ = problem
    with pytest.raises(ValueError, match="checkpoints"):
        FurtherTrainingGoldStandard(checkpoints=(3, 1))
    with pytest.raises(ValueError, match="leave_out"):
        FurtherTrainingGoldStandard(n_seeds=1).fit(model, x, y, x_test, y_test, [0, 400])
    with pytest.raises(ValueError, match="unknown method"):
        attribution_scores("tracin", model, x, y, x_test, y_test, [0])
    with pytest.raises(ValueError, match="2-D"):
        train_final_model(model, x[:, 0], y)


def _gauss_newton_reference(model, x, y, x_test, y_test):
    """Per-sample training / test gradients and the explicit p x p Gauss-Newton Hessian (2/n) J^T J."""
    g_train = _per_sample_grads(model, x, y).double()
    g_test = _per_sample_grads(model, x_test, y_test).double()
    jac = []
    for xi in torch.tensor(x):
        model.zero_grad()
        model(xi[None]).sum().backward()
        jac.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    jac = torch.stack(jac).double()
    return g_train, g_test, 2.0 * jac.T @ jac / len(x)


# LiSSA needs ~scale / damping steps to converge, so it is checked at the larger damping only
@pytest.mark.parametrize(
    "solver, damping", [("explicit", 1e-3), ("explicit", 1e-1), ("cg", 1e-3), ("cg", 1e-1), ("lissa", 1e-1)]
)
def test_gauss_newton_influence_matches_explicit_inverse(problem, solver, damping):
    model, x, y, x_test, y_test, leave_out = problem
    g_train, g_test, gn = _gauss_newton_reference(model, x, y, x_test, y_test)
    eye = torch.eye(gn.shape[0], dtype=torch.float64)
    expected = (g_train[leave_out] @ torch.linalg.solve(gn + damping * eye, g_test.T)).numpy()
    kwargs = {"lissa_depth": 3000, "lissa_scale": 20.0, "lissa_batch": None} if solver == "lissa" else {}
    est = GaussNewtonInfluence(damping=damping, solver=solver, **kwargs).fit(model, x, y)
    scores = est.scores(x_test, y_test, leave_out)
    # float32 Jacobians (vmap vs per-sample autograd) differ by ~1e-7, amplified by 1 / damping
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    if solver == "cg":
        # reached the tolerance before the cap (n = 40 steps in exact arithmetic; round-off costs a few more)
        assert 1 <= est.n_iter_ < est.cg_max_iter


def test_minibatch_lissa_is_close_to_the_solve(problem):
    """Mini-batch GN products make LiSSA stochastic; on average it still solves the damped system."""
    model, x, y, x_test, y_test, leave_out = problem
    exact = GaussNewtonInfluence(damping=0.1).fit(model, x, y).scores(x_test, y_test, leave_out)
    lissa = GaussNewtonInfluence(
        damping=0.1, solver="lissa", lissa_depth=3000, lissa_scale=20.0, lissa_batch=16, random_state=3
    )
    scores = lissa.fit(model, x, y).scores(x_test, y_test, leave_out)
    assert agreement(scores, exact)["cosine"] > 0.95
    assert not np.allclose(scores, exact, rtol=1e-3)  # really stochastic


def test_gauss_newton_default_damping_is_1000x_mean_squared_gradient(problem):
    model, x, y, x_test, y_test, leave_out = problem
    g_train, _, _ = _gauss_newton_reference(model, x, y, x_test, y_test)
    est = GaussNewtonInfluence().fit(model, x, y)
    assert est.mean_squared_gradient_ == pytest.approx(float((g_train**2).mean()), rel=1e-4)
    assert est.damping_ == pytest.approx(1000 * est.mean_squared_gradient_)
    via_api = attribution_scores("gn_cg", model, x, y, x_test, y_test, leave_out)
    np.testing.assert_allclose(via_api, est.scores(x_test, y_test, leave_out), rtol=1e-6, atol=1e-12)


def test_linearised_further_training_limits(problem):
    """H^{-1}(I - exp(-tH)) against an explicit matrix function; Grad-Dot for small t, IF for large t."""
    model, x, y, x_test, y_test, leave_out = problem
    g_train, g_test, gn = _gauss_newton_reference(model, x, y, x_test, y_test)
    est = GaussNewtonInfluence().fit(model, x, y)
    eigvals, eigvecs = torch.linalg.eigh(gn)
    eigvals = eigvals.clamp_min(0.0)
    for t in (0.5, 20.0):
        filt = torch.where(eigvals * t > 1e-12, -torch.expm1(-t * eigvals) / eigvals.clamp_min(1e-300), t)
        expected = (g_train[leave_out] @ (eigvecs * filt) @ eigvecs.T @ g_test.T).numpy()
        got = est.further_training_scores(x_test, y_test, leave_out, t)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    grad_dot = (g_train[leave_out] @ g_test.T).numpy()
    small = est.further_training_scores(x_test, y_test, leave_out, 1e-6) / 1e-6
    np.testing.assert_allclose(small, grad_dot, rtol=1e-4, atol=1e-6 * np.abs(grad_dot).max())
    est.damping_ = 1e-9
    long_run = est.further_training_scores(x_test, y_test, leave_out, 1e9)
    assert agreement(long_run, est.scores(x_test, y_test, leave_out))["cosine"] > 0.999
    with pytest.raises(ValueError, match="time"):
        est.further_training_scores(x_test, y_test, leave_out, 0.0)


def test_energy_like_regression_is_standardised_and_reproducible():
    x_tr, y_tr, x_te, y_te = energy_like_regression(n_train=300, n_test=50, seed=1)
    assert x_tr.shape == (300, 8) and x_te.shape == (50, 8) and y_tr.shape == (300,) and y_te.shape == (50,)
    assert x_tr.dtype == np.float32
    np.testing.assert_allclose(x_tr.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x_tr.std(0), 1.0, atol=1e-4)
    assert abs(y_tr.mean()) < 1e-5 and abs(y_tr.std() - 1.0) < 1e-4
    again = energy_like_regression(n_train=300, n_test=50, seed=1)
    np.testing.assert_array_equal(again[0], x_tr)
    assert np.unique(x_tr[:, 5]).size == 4  # four orientations, as in Energy
    # near duplicates: designs that differ only in orientation have almost the same (standardised) target
    keys = np.round(np.delete(x_tr, 5, axis=1), 4)
    _, group, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    spread = [y_tr[group.ravel() == g].std() for g in np.flatnonzero(counts >= 2)]
    assert len(spread) > 20 and np.median(spread) < 0.05
    with pytest.raises(ValueError):
        energy_like_regression(n_train=700, n_test=100)


def test_gauss_newton_bad_inputs(problem):
    model, x, y, x_test, y_test, _ = problem
    with pytest.raises(ValueError, match="solver"):
        GaussNewtonInfluence(solver="svd")
    with pytest.raises(ValueError, match="damping"):
        GaussNewtonInfluence(damping=-1.0)
    with pytest.raises(ValueError, match="leave_out"):
        GaussNewtonInfluence().fit(model, x, y).scores(x_test, y_test, [0, 400])
