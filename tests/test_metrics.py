"""The project's SSIM and PSNR against scikit-image's, computed independently."""

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from modules import mean_ssim, psnr, ssim


def test_ssim_and_psnr_equal_scikit_image():
    rng = np.random.default_rng(0)
    clean = np.clip(rng.random((3, 48, 40, 1)) * 0.3 + np.linspace(0, 0.7, 40)[None, None, :, None], 0, 1)
    noisy = np.clip(clean + rng.normal(0, 0.08, clean.shape), 0, 1)
    ours_ssim = ssim(clean.astype("float32"), noisy.astype("float32")).numpy()
    ours_psnr = psnr(clean.astype("float32"), noisy.astype("float32")).numpy()
    for i in range(3):
        reference = structural_similarity(clean[i, ..., 0], noisy[i, ..., 0], data_range=1.0,
                                          gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert abs(ours_ssim[i] - reference) < 1e-3
        assert abs(ours_psnr[i] - peak_signal_noise_ratio(clean[i], noisy[i], data_range=1.0)) < 1e-3
    assert 0.2 < ours_ssim.mean() < 0.95  # a real difference between the two, not a trivial case


def test_mean_ssim_equals_the_mean_of_per_image_ssim():
    rng = np.random.default_rng(1)
    clean = rng.random((5, 40, 36, 1)).astype("float32")
    noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype("float32")
    per_image = ssim(clean, noisy).numpy()
    assert per_image.std() > 1e-3  # the images differ, so a mean of the wrong images would show
    np.testing.assert_allclose(mean_ssim(clean, noisy).numpy(), per_image.mean(), rtol=1e-5)
    np.testing.assert_allclose(mean_ssim(clean[1:3], noisy[1:3]).numpy(), per_image[1:3].mean(), rtol=1e-5)
