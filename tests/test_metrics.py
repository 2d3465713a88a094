import numpy as np
import pytest
from keras import ops
from numpy.lib.stride_tricks import sliding_window_view
from testing import run_metric_test, run_serialization_test
from tests_helpers import numpy_y
from tests_helpers import numpy_y_psnr as numpy_psnr

from kx_vision.metrics import PSNR, SSIM, psnr, rgb_to_y, ssim


def numpy_ssim(a, b):
    """Wang et al.'s ssim_index: 11x11 Gaussian (sigma 1.5), 'valid' filtering, L = 255."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()

    def filt(x):
        return np.einsum("ijkl,kl->ij", sliding_window_view(x, (11, 11)), w)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = filt(a), filt(b)
    va, vb = filt(a * a) - mu_a**2, filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    return np.mean(((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2)))


@pytest.fixture
def pair(rng):
    a = rng.random((2, 24, 20, 3)).astype("float32")
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1).astype("float32")
    return a, b


def test_y_channel_matches_matlab_rgb2ycbcr():
    # MATLAB rgb2ycbcr: black -> 16, white -> 235.
    y = ops.convert_to_numpy(rgb_to_y(np.array([[[[0, 0, 0], [1, 1, 1]]]], "float32")))
    np.testing.assert_allclose(y.ravel(), [16.0, 235.0], atol=1e-3)


def test_psnr_matches_numpy(pair):
    a, b = pair
    got = ops.convert_to_numpy(psnr(a, b, shave=2))
    want = [numpy_psnr(a[i], b[i], 2) for i in range(2)]
    np.testing.assert_allclose(got, want, atol=1e-3)
    rgb = ops.convert_to_numpy(psnr(a, b, channel="rgb"))
    want_rgb = [10 * np.log10(1.0 / np.mean((a[i].astype(np.float64) - b[i]) ** 2)) for i in range(2)]
    np.testing.assert_allclose(rgb, want_rgb, atol=1e-3)


def test_ssim_matches_numpy(pair):
    a, b = pair
    got = ops.convert_to_numpy(ssim(a, b, shave=2))
    want = [
        numpy_ssim(numpy_y(a[i].astype(np.float64))[2:-2, 2:-2], numpy_y(b[i].astype(np.float64))[2:-2, 2:-2])
        for i in range(2)
    ]
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(ops.convert_to_numpy(ssim(a, a)), [1.0, 1.0], atol=1e-5)


def test_metric_classes_average_over_images(pair):
    a, b = pair
    metric = PSNR(shave=2)
    metric.update_state(a[:1], b[:1])
    metric.update_state(a[1:], b[1:])
    want = np.mean([numpy_psnr(a[i], b[i], 2) for i in range(2)])
    assert abs(float(metric.result()) - want) < 1e-3
    run_serialization_test(metric)
    assert run_metric_test(PSNR(shave=2), a, b) == pytest.approx(want, abs=1e-3)
    s = SSIM(shave=2, channel="rgb")
    assert s.name == "ssim_rgb" and run_serialization_test(s).channel == "rgb"
    run_metric_test(s, a, b)
    with pytest.raises(ValueError, match="channel"):
        PSNR(channel="lab")


def test_quantize_rounds_predictions(pair):
    a, b = pair
    rounded = np.round(b * 255) / 255
    np.testing.assert_allclose(
        ops.convert_to_numpy(psnr(a, b, quantize=True)), ops.convert_to_numpy(psnr(a, rounded)), atol=1e-4
    )


def test_ssim_refuses_images_smaller_than_its_window(rng):
    a = rng.random((1, 14, 14, 3)).astype("float32")
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(a, a, shave=2)
