import numpy as np
import pytest
import torch

from emreason.spectral.conv import causal_conv_fft, fft_length


def test_fft_conv_matches_direct_convolution():
    u = torch.randn(2, 37, 3, dtype=torch.float64)
    k = torch.randn(40, 3, dtype=torch.float64)
    y = causal_conv_fft(u, k).numpy()
    for b in range(2):
        for c in range(3):
            ref = np.convolve(u[b, :, c].numpy(), k[:37, c].numpy())[:37]
            np.testing.assert_allclose(y[b, :, c], ref, atol=1e-12)


def test_fft_length_is_next_power_of_two():
    assert [fft_length(n) for n in (1, 2, 3, 512, 513)] == [1, 4, 8, 1024, 2048]


def test_shape_errors():
    with pytest.raises(ValueError, match="lags"):
        causal_conv_fft(torch.randn(1, 10, 2), torch.randn(5, 2))
    with pytest.raises(ValueError, match="channels"):
        causal_conv_fft(torch.randn(1, 10, 2), torch.randn(10, 3))
