"""EM-INF core: parity with an autograd run of the authors' loop, masks, broken rows, and the baseline."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from emreason.em_inf import (
    AdaptiveTemperatureConfig,
    EMInfConfig,
    adaptive_temperature,
    minimize_entropy,
    valid_rows,
)


def authors_loop(
    row: torch.Tensor, steps: int, lr: float, threshold: float, kl_weight: float
) -> torch.Tensor:
    """The authors' EM-INF loop at batch size 1, with autograd and torch.optim.Adam (the reference)."""
    z = torch.nn.Parameter(row.detach().clone().unsqueeze(0))
    p0 = torch.softmax(row.detach(), dim=-1).unsqueeze(0)
    optimizer = torch.optim.Adam([z], lr=lr, betas=(0.9, 0.999), eps=1e-8)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            log_p = torch.log_softmax(z, dim=-1)
            entropy = -(log_p.exp() * log_p).sum()
            if entropy < threshold:
                break
            kl = F.kl_div(log_p, p0, reduction="batchmean")
            (entropy + kl_weight * kl).backward()
            optimizer.step()
    return z.detach().squeeze(0)


def random_logits(batch: int, vocab: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Rows spanning peaked to near-uniform distributions (scales 0.05 .. 8)."""
    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(math.log10(0.05), math.log10(8.0), batch, dtype=torch.float64).unsqueeze(-1)
    return (torch.randn(batch, vocab, generator=gen, dtype=torch.float64) * scales).to(dtype)


def total_variation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.softmax(a.double(), -1) - torch.softmax(b.double(), -1)).abs().sum(-1)


def reference_batch(logits: torch.Tensor, config: EMInfConfig) -> torch.Tensor:
    return torch.stack(
        [authors_loop(row, config.steps, config.lr, config.threshold, config.kl_weight) for row in logits]
    )


@pytest.mark.parametrize(
    "config", [EMInfConfig(), EMInfConfig(steps=15, threshold=0.0)], ids=["defaults", "15"]
)
def test_float64_matches_autograd_reference(config):
    logits = random_logits(12, 500, torch.float64)
    with torch.inference_mode():  # closed-form gradients must work where autograd cannot
        ours = minimize_entropy(logits, config)
    ref = reference_batch(logits, config)
    assert ours.dtype == torch.float64
    assert (ours - ref).abs().max().item() < 1e-9
    assert not torch.equal(ours, logits), "some rows must have moved"


@pytest.mark.parametrize(
    "config", [EMInfConfig(), EMInfConfig(steps=15, threshold=0.0)], ids=["defaults", "15"]
)
def test_float32_matches_reference_as_distributions(config):
    logits = random_logits(12, 2000, torch.float32, seed=1)
    ours = minimize_entropy(logits, config)
    ref = reference_batch(logits, config)
    assert ours.dtype == torch.float32
    assert total_variation(ours, ref).max().item() <= 1e-4


def test_entropy_goes_down_and_threshold_stops_rows():
    logits = random_logits(16, 300, torch.float64, seed=2)
    config = EMInfConfig(steps=15, threshold=0.3)
    out = minimize_entropy(logits, config)
    h_in, h_out = entropy64(logits), entropy64(out)
    below = h_in < config.threshold
    assert torch.equal(out[below], logits[below]), "rows already below the threshold never move"
    assert (h_out[~below] < h_in[~below]).all()


def test_per_row_parameters_equal_separate_calls():
    logits = random_logits(6, 400, torch.float64, seed=3)
    steps = torch.tensor([0, 1, 3, 5, 15, 2])
    lr = torch.tensor([0.1, 0.05, 0.2, 0.1, 0.3, 0.01], dtype=torch.float64)
    threshold = torch.tensor([0.3, 0.0, 0.5, 0.1, 0.2, 0.0], dtype=torch.float64)
    kl_weight = torch.tensor([0.05, 0.0, 0.5, 1.0, 0.05, 0.1], dtype=torch.float64)
    out = minimize_entropy(logits, steps=steps, lr=lr, threshold=threshold, kl_weight=kl_weight)
    for i in range(6):
        row_cfg = EMInfConfig(int(steps[i]), float(lr[i]), float(threshold[i]), float(kl_weight[i]))
        alone = authors_loop(logits[i], row_cfg.steps, row_cfg.lr, row_cfg.threshold, row_cfg.kl_weight)
        assert (out[i] - alone).abs().max().item() < 1e-9, f"row {i}"
    assert torch.equal(out[0], logits[0]), "steps=0 leaves a row untouched"


@pytest.mark.parametrize("steps", [3, 15])
def test_argmax_is_preserved(steps):
    logits = random_logits(64, 1000, torch.float32, seed=4)
    # Near-ties at the top: the runner-up is a hair below the argmax.
    top = logits.argmax(-1)
    runner_up = (top + 1) % logits.shape[1]
    logits[torch.arange(64), runner_up] = logits[torch.arange(64), top] - 1e-3
    out = minimize_entropy(logits, EMInfConfig(steps=steps, threshold=0.0))
    assert torch.equal(out.argmax(-1), top)


def test_masked_tokens_stay_masked_and_match_the_unmasked_problem():
    logits = random_logits(4, 200, torch.float64, seed=5)
    keep = torch.rand(200, generator=torch.Generator().manual_seed(0)) > 0.3
    masked = logits.masked_fill(~keep, float("-inf"))
    out = minimize_entropy(masked, EMInfConfig(steps=10, threshold=0.0))
    assert torch.isneginf(out[:, ~keep]).all()
    assert torch.isfinite(out[:, keep]).all()
    # A masked vocabulary is the same problem as the smaller vocabulary of the kept tokens.
    for i in range(4):
        alone = authors_loop(logits[i, keep], 10, 0.1, 0.0, 0.05)
        assert (out[i, keep] - alone).abs().max().item() < 1e-9


def test_broken_rows_are_returned_unchanged_and_do_not_spoil_the_batch():
    logits = random_logits(5, 50, torch.float32, seed=6)
    logits[1, 3] = float("nan")
    logits[2] = float("-inf")
    logits[3, 7] = float("inf")
    config = EMInfConfig(steps=5, threshold=0.0)
    out = minimize_entropy(logits, config)
    assert valid_rows(logits).tolist() == [True, False, False, False, True]
    for i in (1, 2, 3):
        assert torch.equal(out[i].nan_to_num(), logits[i].nan_to_num()), f"row {i} changed"
    for i in (0, 4):
        ref = authors_loop(logits[i], 5, config.lr, 0.0, config.kl_weight)
        assert total_variation(out[i : i + 1], ref.unsqueeze(0)).item() <= 1e-4


def test_half_precision_input_is_upcast_and_input_is_not_modified():
    logits = random_logits(3, 100, torch.bfloat16, seed=7)
    before = logits.clone()
    out = minimize_entropy(logits)
    assert out.dtype == torch.float32
    assert torch.equal(logits, before)
    expected = minimize_entropy(logits.float())
    assert torch.equal(out, expected)


def test_empty_batch_and_zero_steps():
    assert minimize_entropy(torch.zeros(0, 10)).shape == (0, 10)
    x = random_logits(2, 10, torch.float32)
    assert torch.equal(minimize_entropy(x, steps=0), x)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"steps": -1}, ValueError),
        ({"steps": 2.5}, TypeError),
        ({"steps": True}, TypeError),
        ({"lr": 0.0}, ValueError),
        ({"lr": float("nan")}, ValueError),
        ({"threshold": -0.1}, ValueError),
        ({"kl_weight": "0.1"}, TypeError),
    ],
)
def test_config_rejects_bad_values(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        EMInfConfig(**kwargs)


def test_bad_inputs_raise_early():
    with pytest.raises(ValueError, match=r"\[B, V\]"):
        minimize_entropy(torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="floating"):
        minimize_entropy(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="Tensor"):
        minimize_entropy([[0.0, 1.0]])
    with pytest.raises(ValueError, match="lr"):
        minimize_entropy(torch.zeros(2, 3), lr=torch.tensor([0.1, -1.0]))
    with pytest.raises(ValueError, match="steps"):
        minimize_entropy(torch.zeros(2, 3), steps=torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="unknown"):
        EMInfConfig().replace(step=3)


def entropy64(logits: torch.Tensor) -> torch.Tensor:
    return -(torch.softmax(logits.double(), -1) * torch.log_softmax(logits.double(), -1)).nan_to_num().sum(-1)


def test_adaptive_temperature_reaches_its_target():
    logits = random_logits(10, 500, torch.float64, seed=8)
    config = AdaptiveTemperatureConfig(alpha=0.5, delta=0.3, tol=1e-3)
    out, tau = adaptive_temperature(logits, config, return_tau=True)
    h0 = entropy64(logits)
    h = entropy64(out)
    searched = h0 > config.delta
    target = torch.clamp(config.alpha * h0, min=config.delta)
    assert ((h - target).abs()[searched] < config.tol).all()
    assert (tau[~searched] == 1).all() and torch.equal(out[~searched], logits[~searched])
    assert torch.allclose(out, logits / tau.unsqueeze(-1))
    # Entropy increases with temperature, so the root is unique: check it against scipy's brentq.
    scipy_optimize = pytest.importorskip("scipy.optimize")
    for i in torch.nonzero(searched).flatten().tolist():
        root = scipy_optimize.brentq(
            lambda t, i=i: entropy64(logits[i] / t).item() - target[i].item(), 0.01, 1.0
        )
        assert abs(tau[i].item() - root) < 0.02


def test_adaptive_temperature_masks_broken_rows_and_validation():
    logits = random_logits(3, 20, torch.float32)
    logits[0, :5] = float("-inf")
    logits[1, 2] = float("nan")
    out, tau = adaptive_temperature(logits, return_tau=True)
    assert torch.isneginf(out[0, :5]).all() and tau[1] == 1
    assert torch.isnan(out[1, 2])
    for bad in ({"alpha": 0.0}, {"tau_min": 2.0}, {"tol": 0.0}, {"max_iter": 0}, {"delta": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            AdaptiveTemperatureConfig(**bad)


def mixed_batch(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, dict]:
    """Rows of every kind (masked, NaN, +inf, all -inf, plain) and per-row parameters."""
    logits = random_logits(8, 97, dtype, seed=5)
    logits[1, :30] = float("-inf")
    logits[2, 4] = float("nan")
    logits[3, 7] = float("inf")
    logits[4] = float("-inf")
    params = {
        "steps": torch.tensor([3, 15, 2, 5, 4, 0, 9, 15]),
        "lr": torch.tensor([0.1, 0.3, 0.1, 0.1, 0.1, 0.1, 0.05, 0.2], dtype=dtype),
        "threshold": torch.tensor([0.3, 0.0, 0.1, 0.1, 0.1, 0.1, 1.0, 0.0], dtype=dtype),
        "kl_weight": torch.tensor([0.05, 0.0, 0.1, 0.1, 0.1, 0.1, 0.2, 0.5], dtype=dtype),
    }
    return logits, params


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fixed_step_count_matches_early_exit(dtype):
    """early_exit=False (masks, no reads from the device) and max_steps give the same result."""
    logits, params = mixed_batch(dtype)
    expected = minimize_entropy(logits, **params)
    fixed = minimize_entropy(logits, **params, early_exit=False, max_steps=15)
    torch.testing.assert_close(fixed, expected, rtol=0, atol=0, equal_nan=True)
    # A bound below some rows' steps truncates them, like asking fewer steps.
    truncated = minimize_entropy(logits, **params, max_steps=2, early_exit=False)
    expected_2 = minimize_entropy(logits, **{**params, "steps": params["steps"].clamp(max=2)})
    torch.testing.assert_close(truncated, expected_2, rtol=0, atol=0, equal_nan=True)
    out = torch.empty_like(expected)
    assert minimize_entropy(logits, **params, out=out) is out
    torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)
    with pytest.raises(ValueError, match="out must not be logits"):
        minimize_entropy(expected, out=expected)
    with pytest.raises(ValueError, match="max_steps"):
        minimize_entropy(logits, max_steps=-1)


@pytest.mark.parametrize("early_exit", [True, False])
def test_skip_leaves_rows_with_invalid_parameters_unchanged(early_exit):
    logits, params = mixed_batch(torch.float32)
    good = minimize_entropy(logits, **params)
    bad = {k: v.clone() for k, v in params.items()}
    bad["lr"][0] = float("inf")
    bad["threshold"][6] = float("nan")
    bad["kl_weight"][7] = -1.0
    bad["steps"][1] = float("nan") if bad["steps"].is_floating_point() else -4
    with pytest.raises(ValueError, match="steps must be finite and >= 0"):
        minimize_entropy(logits, **bad)
    out = minimize_entropy(logits, **bad, invalid_params="skip", early_exit=early_exit, max_steps=15)
    for row in (0, 1, 6, 7):
        torch.testing.assert_close(out[row], logits[row], rtol=0, atol=0, equal_nan=True)
    for row in (2, 3, 4, 5):  # the other rows are as without the bad ones
        torch.testing.assert_close(out[row], good[row], rtol=0, atol=0, equal_nan=True)
    # The largest float32 learning rate still gives finite logits (an extreme but valid result).
    huge = minimize_entropy(
        logits[:1], steps=5, lr=3e38, threshold=0.0, invalid_params="skip", early_exit=early_exit
    )
    assert torch.isfinite(huge).all()
    # Bad scalars skip every row instead of raising.
    torch.testing.assert_close(
        minimize_entropy(logits, lr=float("nan"), invalid_params="skip"),
        logits,
        rtol=0,
        atol=0,
        equal_nan=True,
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_adaptive_temperature_fixed_iterations_match_early_exit(dtype):
    from emreason.em_inf import bisection_iterations

    logits = random_logits(16, 97, dtype, seed=9)
    logits[3, :50] = float("-inf")
    logits[5, 2] = float("nan")
    alpha = torch.linspace(0.05, 1.0, 16, dtype=dtype)
    # tol=1e-9 never converges, so every row bisects until its bracket is one float wide.
    for config in (AdaptiveTemperatureConfig(), AdaptiveTemperatureConfig(tol=1e-9, max_iter=200)):
        expected, tau = adaptive_temperature(logits, config, alpha=alpha, return_tau=True)
        fixed, tau_fixed = adaptive_temperature(
            logits, config, alpha=alpha, return_tau=True, early_exit=False
        )
        torch.testing.assert_close(tau_fixed, tau, rtol=0, atol=0)
        torch.testing.assert_close(fixed, expected, rtol=0, atol=0, equal_nan=True)
    assert bisection_iterations(AdaptiveTemperatureConfig(), torch.float32) < 40
    bad_alpha = alpha.clone()
    bad_alpha[0], bad_alpha[1] = 1.5, float("nan")
    with pytest.raises(ValueError, match="alpha"):
        adaptive_temperature(logits, alpha=bad_alpha)
    out, tau = adaptive_temperature(logits, alpha=bad_alpha, invalid_params="skip", return_tau=True)
    assert tau[0] == 1 and tau[1] == 1
    torch.testing.assert_close(
        out[2:], adaptive_temperature(logits[2:], alpha=alpha[2:]), rtol=0, atol=0, equal_nan=True
    )


def test_no_reads_from_the_device_without_early_exit():
    from emreason.integrations.host_syncs import count_host_syncs

    logits, params = mixed_batch(torch.float32)
    with count_host_syncs() as counter:
        minimize_entropy(logits, **params, early_exit=False, max_steps=15, invalid_params="skip")
        adaptive_temperature(logits, alpha=torch.full((8,), 0.3), early_exit=False, invalid_params="skip")
    assert counter.count == 0, counter.calls
    with count_host_syncs() as counter:
        minimize_entropy(logits, **params)
    assert counter.count > 3, counter.calls  # the counter sees the default path's reads
    with count_host_syncs() as counter:  # at most the checks allowed
        adaptive_temperature(logits, early_exit=False, exit_checks=2)
    assert 1 <= counter.count <= 2, counter.calls
