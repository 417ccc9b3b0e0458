"""Every entropy path at a real vocabulary (V = 151,936) and real logit scales, against float64.

Low-entropy rows with large logits are what entropy minimization produces, and where
``logsumexp(z) - sum softmax(z) z`` cancels (1e-3 nats off at logit std 30). The yardsticks are what a
plain float32 computation gets right anyway: the float32 ``log_softmax`` entropy for values and the
float32 ``softmax`` for gradients; each path must be within a small factor of them.
"""

import pytest
import torch

from emreason.em_inf import EMInfConfig, minimize_entropy
from emreason.entropy import entropy_from_hidden, log_softmax_entropy, token_entropy
from emreason.trainers.rollout import RolloutStatsRecorder

V = 151_936
# (logit std, offset): the spread of real LM heads, small to large, shifted both ways.
SCALES = [(1.0, 0.0), (5.0, 0.0), (20.0, 0.0), (30.0, 0.0), (30.0, 40.0), (10.0, -40.0)]


def logits32(std: float, offset: float, rows: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, V, generator=generator, dtype=torch.float64) * std + offset).float()


def reference(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float64 ``(H, dH/dz, log p)`` of the (float32-rounded) logits."""
    log_p = torch.log_softmax(z.double(), -1)
    p = log_p.exp()
    entropy = -(p * log_p).sum(-1)
    return entropy, -p * (log_p + entropy[:, None]), log_p


def yardsticks(z: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Per-row error of the float32 log_softmax entropy, and the float32 softmax's max error."""
    entropy, _, log_p = reference(z)
    log_p32 = torch.log_softmax(z, -1)
    value = (-(log_p32.exp() * log_p32).sum(-1).double() - entropy).abs()
    softmax = (torch.softmax(z, -1).double() - log_p.exp()).abs().max().item()
    return value, softmax


def check_value(got: torch.Tensor, z: torch.Tensor) -> None:
    entropy, _, _ = reference(z)
    value_yardstick, _ = yardsticks(z)
    error = (got.double() - entropy).abs()
    # Within 2x the float32 log_softmax entropy (plus a float32 ulp at 1), and relative 1e-6.
    assert (error <= 2 * value_yardstick + 1.2e-7).all(), (error, value_yardstick)
    assert (error <= 1e-6 * entropy + 1e-7).all(), (error, entropy)


def check_grad(got: torch.Tensor, z: torch.Tensor) -> None:
    _, grad, _ = reference(z)
    _, softmax_yardstick = yardsticks(z)
    error = (got.double() - grad).abs().max().item()
    assert error <= 4 * softmax_yardstick + 1e-8, (error, softmax_yardstick)


@pytest.mark.parametrize(("std", "offset"), SCALES)
def test_token_entropy_value_and_gradient(std, offset):
    z = logits32(std, offset).requires_grad_(True)
    entropy = token_entropy(z)
    check_value(entropy.detach(), z.detach())
    entropy.sum().backward()
    check_grad(z.grad, z.detach())


@pytest.mark.parametrize(("std", "offset"), SCALES)
def test_log_softmax_entropy_value_and_gradients(std, offset):
    z = logits32(std, offset, seed=1).requires_grad_(True)
    log_p, entropy = log_softmax_entropy(z)
    check_value(entropy.detach(), z.detach())
    _, _, log_p64 = reference(z.detach())
    # log p as accurate as torch's float32 log_softmax (2x its error, plus an ulp of |log p|).
    torch_error = (torch.log_softmax(z.detach(), -1).double() - log_p64).abs()
    ulp = torch.finfo(torch.float32).eps * log_p64.abs()
    assert ((log_p.detach().double() - log_p64).abs() <= 2 * torch_error + ulp + 1e-7).all()
    # Entropy gradient through this function: the closed form, checked like token_entropy's.
    entropy.sum().backward(retain_graph=True)
    check_grad(z.grad, z.detach())
    # Log-probability gradient: as close to float64 as torch's own float32 log_softmax backward.
    weights = torch.linspace(-1, 1, V, dtype=torch.float64)
    z.grad = None
    (log_p * weights.float()).sum().backward()
    ours = z.grad.double()
    z32 = z.detach().clone().requires_grad_(True)
    (torch.log_softmax(z32, -1) * weights.float()).sum().backward()
    z64 = z.detach().double().requires_grad_(True)
    (torch.log_softmax(z64, -1) * weights).sum().backward()
    torch_error = (z32.grad.double() - z64.grad).abs().max()
    assert (ours - z64.grad).abs().max() <= 2 * torch_error + 1e-7


def test_the_naive_formula_fails_these_checks():
    """The checks can fail: ``logsumexp - sum p z`` (the old token_entropy) misses them at std 30."""
    z = logits32(30.0, 40.0)
    naive = torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)
    with pytest.raises(AssertionError):
        check_value(naive, z)


@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize(("std", "offset"), [(5.0, 0.0), (30.0, 40.0)])
def test_entropy_from_hidden_values_and_gradients(std, offset, recompute):
    """The chunked hidden-state entropy and its closed-form backward (hidden, weight, bias), with the
    logits recomputed in backward or kept from the forward."""
    generator = torch.Generator().manual_seed(2)
    dim = 16
    hidden = torch.randn(6, dim, generator=generator, dtype=torch.float64)
    weight = torch.randn(V, dim, generator=generator, dtype=torch.float64) * (std / dim**0.5)
    bias = torch.full((V,), offset, dtype=torch.float64)
    h32, w32, b32 = (t.float().requires_grad_(True) for t in (hidden, weight, bias))
    entropy = entropy_from_hidden(h32, w32, chunk_size=4, bias=b32, recompute_logits=recompute)
    # The float32 logits as each chunk computes them (a matmul over fewer rows may round differently,
    # by an ulp of |z|, which would move the entropy by more than the tolerance).
    z = torch.cat(
        [torch.nn.functional.linear(h32[i : i + 4], w32, b32).detach() for i in range(0, hidden.shape[0], 4)]
    )
    check_value(entropy.detach(), z)
    entropy.sum().backward()
    # Reference gradients from the float64 logit gradient of the same float32 inputs.
    _, grad_z, _ = reference(z)
    _, softmax_yardstick = yardsticks(z)
    w64, h64 = w32.detach().double(), h32.detach().double()
    tol = 4 * softmax_yardstick + 1e-8
    assert (b32.grad.double() - grad_z.sum(0)).abs().max() <= tol * hidden.shape[0]
    assert (w32.grad.double() - grad_z.T @ h64).abs().max() <= tol * h64.abs().sum(0).max()
    # The hidden gradient is a V-long float32 dot product: compare with what float32 matmul (same chunk
    # shapes: its accumulation order, hence error, depends on them) gets from the exact logit gradient.
    grad_hidden = grad_z @ w64
    exact_chunks = [grad_z[i : i + 4].float() @ w32.detach() for i in range(0, hidden.shape[0], 4)]
    matmul_error = (torch.cat(exact_chunks).double() - grad_hidden).abs().max()
    assert (h32.grad.double() - grad_hidden).abs().max() <= 4 * matmul_error + 1e-7


@pytest.mark.parametrize(("std", "offset"), [(5.0, 0.0), (20.0, 0.0), (30.0, 40.0)])
def test_em_inf_core_stops_on_the_exact_entropy(std, offset):
    """EM-INF's stopping test uses an entropy accurate to 1e-5 relative: a threshold just above a row's
    float64 entropy stops it before any step, one just below lets it move."""
    z = logits32(std, offset, rows=4, seed=3)
    entropy, _, _ = reference(z)
    margin = 1e-5 * entropy + 2e-7
    for threshold, should_move in ((entropy + margin, False), ((entropy - margin).clamp_min(0), True)):
        out = minimize_entropy(z, EMInfConfig(steps=1), threshold=threshold.float())
        moved = (out != z).any(-1)
        assert torch.equal(moved, torch.full_like(moved, should_move)), (std, offset, threshold, entropy)


@pytest.mark.parametrize(("std", "offset"), [(5.0, 0.0), (20.0, 0.0), (30.0, 40.0)])
def test_em_inf_core_matches_float64(std, offset):
    """Three Adam steps from float32 logits against the same logits in float64."""
    z = logits32(std, offset, rows=4, seed=3)
    config = EMInfConfig(steps=3, threshold=0.0)
    out32 = minimize_entropy(z, config)
    out64 = minimize_entropy(z.double(), config)
    # The float32 run stores z + update in float32 after every step (an ulp of |z|, 1.5e-5 at 180),
    # which Adam's m / sqrt(v) can amplify a little; the update itself must agree to 2e-3.
    move64 = out64 - z.double()
    error = (out32.double() - out64).abs()
    ulp = torch.finfo(torch.float32).eps * (z.double().abs() + move64.abs())
    assert (error <= 4 * ulp + 2e-3 * move64.abs() + 1e-7).all()
    torch.testing.assert_close(token_entropy(out32).double(), token_entropy(out64), atol=2e-6, rtol=1e-4)


def test_rollout_recorder_entropy_and_logprob():
    """The EM-RL reward recorder's per-step entropies and sampled-token log-probs, at std 30 offset 40."""
    z = logits32(30.0, 40.0, rows=3, seed=4)
    recorder = RolloutStatsRecorder()
    prompt = torch.zeros(3, 2, dtype=torch.long)
    recorder(prompt, z)
    chosen = torch.tensor([[5], [17], [V - 1]])
    logprobs, entropies = recorder.finish(torch.cat([prompt, chosen], dim=1))
    check_value(entropies[:, 0], z)
    _, _, log_p64 = reference(z)
    expected = log_p64.gather(-1, chosen).squeeze(-1)
    assert (logprobs[:, 0].double() - expected).abs().max() <= 1e-6 * expected.abs().max()
