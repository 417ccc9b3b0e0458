import pytest
import torch

from emreason.spectral import STU, distill_lds, spectral_filters


def _naive_stu(stu: STU, u: torch.Tensor) -> torch.Tensor:
    """The STU definition with explicit sums over lags, in float64."""
    phi = stu.filters.double()
    u = u.double()
    batch, seq_len, dim = u.shape
    y = torch.zeros(batch, seq_len, dim, dtype=torch.float64)
    for t in range(seq_len):
        for s in range(t + 1):
            if stu.use_tensordot:
                m_minus = stu.M_filters if stu.share_filter_projection else stu.M_filters_minus
                k = phi[s] @ stu.M_filters.double() + (-1) ** s * (phi[s] @ m_minus.double())
                y[:, t] += k * (u[:, t - s] @ stu.M_inputs.double())
            else:
                for f in range(stu.num_filters):
                    y[:, t] += phi[s, f] * (u[:, t - s] @ stu.M_plus[f].double())
                    y[:, t] += (-1) ** s * phi[s, f] * (u[:, t - s] @ stu.M_minus[f].double())
    return y


@pytest.mark.parametrize(("tensordot", "shared"), [(True, True), (True, False), (False, True)])
def test_stu_fft_matches_direct_definition(tensordot, shared):
    stu = STU(4, spectral_filters(32, 5), use_tensordot=tensordot, share_filter_projection=shared)
    u = torch.randn(2, 20, 4)
    torch.testing.assert_close(stu(u).double(), _naive_stu(stu, u), rtol=1e-4, atol=1e-5)


def test_shared_projection_kernel_vanishes_at_odd_lags():
    stu = STU(4, spectral_filters(32, 5))
    kernel = stu.depthwise_kernel()
    assert kernel[1::2].abs().max() == 0 and kernel[0::2].abs().max() > 0


def test_lds_form_matches_stu_within_distillation_error():
    stu = STU(8, spectral_filters(256, 12), share_filter_projection=False)
    filter_lds = distill_lds(stu.filters.double().numpy(), 16, refine_steps=0)
    layer = stu.to_lds(filter_lds=filter_lds)
    u = torch.randn(2, 256, 8)
    y_stu = stu(u)
    y_pre, final = layer(u)
    # |dy| <= sum_s |dk(s)| |u_proj|: bound via the filter error and the projections
    u_proj = (u @ stu.M_inputs).abs().max()
    dk = filter_lds.error.max_abs * (stu.M_filters.abs().sum(0) + stu.M_filters_minus.abs().sum(0)).max()
    bound = 256 * dk * u_proj + 1e-4
    assert (y_pre - y_stu).abs().max() <= bound
    assert (y_pre - y_stu).abs().max() < 1e-3 * y_stu.abs().max()
    state = layer.initial_state(2)
    for t in range(256):
        y_t, state = layer.step(u[:, t], state)
    torch.testing.assert_close(y_t, y_pre[:, -1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state, final, rtol=1e-4, atol=1e-4)


def test_stu_errors():
    stu = STU(4, spectral_filters(32, 5))
    with pytest.raises(ValueError, match="exceeds the filter length 32"):
        stu(torch.randn(1, 33, 4))
    with pytest.raises(ValueError, match=r"\(B, T, 4\)"):
        stu(torch.randn(1, 8, 5))
    with pytest.raises(ValueError, match="positive"):
        stu.to_lds(state_dim=0)
    with pytest.raises(ValueError, match="tensordot"):
        STU(4, spectral_filters(32, 5), use_tensordot=False).to_lds(8)
