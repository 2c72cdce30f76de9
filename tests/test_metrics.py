"""The project's SSIM and PSNR, and the VQ-VAE's loss that uses them, against scikit-image and numpy."""

import keras
import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from metrics import mean_ssim, psnr, ssim
from modules import VQVAETrainer


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


def test_vqvae_loss_is_squared_error_plus_weighted_one_minus_ssim_plus_vq_loss():
    keras.utils.set_random_seed(3)
    model = VQVAETrainer(num_codes=16, code_dim=8, channels=16, res_blocks=1, ssim_weight=0.5, seed=3)
    model.compile(optimizer="adam")
    rng = np.random.default_rng(3)
    images = np.clip(rng.random((4, 32, 32, 1)) * np.linspace(0, 1, 32)[None, :, None, None], 0, 1).astype("float32")
    model.fit(images, batch_size=4, epochs=1, verbose=0)  # initialises the codebook from the data
    results = model.evaluate(images, batch_size=4, verbose=0, return_dict=True)
    outputs = model(images).numpy()
    reconstructions = np.clip(outputs, 0, 1)
    reference_ssim = np.mean([structural_similarity(images[i, ..., 0], reconstructions[i, ..., 0], data_range=1.0,
                                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
                              for i in range(4)])
    np.testing.assert_allclose(results["mse"], np.mean((outputs - images) ** 2), rtol=1e-4)
    np.testing.assert_allclose(results["ssim"], reference_ssim, atol=1e-3)
    assert 0.0 < results["ssim"] < 0.99 and results["vq_loss"] > 0
    np.testing.assert_allclose(results["reconstruction_loss"], results["mse"] + 0.5 * (1 - results["ssim"]), rtol=1e-5)
    np.testing.assert_allclose(results["loss"], results["reconstruction_loss"] + results["vq_loss"], rtol=1e-5)
