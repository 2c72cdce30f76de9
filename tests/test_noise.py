"""The Rician noise model against scipy's Rice distribution, the noise-level estimate on synthetic slices of
known noise, and the bias correction against numpy."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

import noise
from conftest import fake_slice

SIDE = 128


def brain_slices(count, seed=0):
    """`count` brain-like slices [count, SIDE, SIDE, 1] in [0, 1] on a black background."""
    rng = np.random.default_rng(seed)
    return np.stack([np.asarray(fake_slice(rng, SIDE, SIDE), np.float32)[..., None] / 255 for _ in range(count)])


@pytest.mark.parametrize("nu, sigma", [(0.0, 0.05), (0.05, 0.05), (0.1, 0.025), (0.3, 0.1), (0.6, 0.15)])
def test_rician_noise_has_the_rice_distributions_mean_and_variance(nu, sigma):
    samples = noise.rician_noise(np.full((4, SIDE, SIDE, 1), nu, np.float32), sigma, seed=3).numpy().ravel()
    rice = stats.rice(nu / sigma, scale=sigma)
    n = samples.size
    # Five standard errors: the sample variance's uses the distribution's own fourth central moment.
    fourth = rice.expect(lambda x: (x - rice.mean()) ** 4)
    assert abs(samples.mean() - rice.mean()) < 5 * np.sqrt(rice.var() / n)
    assert abs(samples.var() - rice.var()) < 5 * np.sqrt((fourth - rice.var() ** 2) / n)


def test_rician_noise_is_seeded_and_takes_one_sigma_per_image():
    images = brain_slices(2)
    first = noise.rician_noise(images, [0.05, 0.1], seed=7).numpy()
    assert np.array_equal(first, noise.rician_noise(images, [0.05, 0.1], seed=7).numpy())
    assert not np.array_equal(first, noise.rician_noise(images, [0.05, 0.1], seed=8).numpy())
    background = images[..., 0] == 0
    # In the background the magnitude is Rayleigh noise: its second moment is 2 sigma^2.
    for image, mask, sigma in zip(first[..., 0], background, (0.05, 0.1)):
        assert np.sqrt(np.mean(image[mask] ** 2) / 2) == pytest.approx(sigma, rel=0.03)
    np.testing.assert_allclose(noise.rician_noise(images, [0.05, 0.05], seed=7).numpy(),
                               noise.rician_noise(images, 0.05, seed=7).numpy())


@pytest.mark.parametrize("sigma", [0.025, 0.05, 0.1, 0.15])
def test_estimate_sigma_is_within_20_percent_on_slices_of_known_noise(sigma):
    noisy = np.clip(noise.rician_noise(brain_slices(8, seed=1), sigma, seed=11).numpy(), 0, 1)
    estimates = noise.estimate_sigma(noisy).numpy()
    assert estimates.shape == (8,)
    np.testing.assert_allclose(estimates, sigma, rtol=0.2)


def test_estimate_sigma_ignores_the_zeros_of_square_padding():
    # A slice padded to a square after the noise: the padding is no noise and must not lower the estimate.
    noisy = np.clip(noise.rician_noise(brain_slices(4, seed=2), 0.05, seed=5).numpy(), 0, 1)
    noisy[:, :12] = noisy[:, -12:] = 0.0
    np.testing.assert_allclose(noise.estimate_sigma(noisy).numpy(), 0.05, rtol=0.2)


def test_estimate_sigma_of_clean_slices_is_near_0():
    assert noise.estimate_sigma(brain_slices(4, seed=3)).numpy().max() < 0.0025


def test_estimate_sigma_traces_for_any_batch_size():
    # The SavedModel's endpoints take [None, S, S, 1]: the estimate must build in such a graph.
    estimate = tf.function(noise.estimate_sigma, input_signature=[tf.TensorSpec([None, SIDE, SIDE, 1])])
    noisy = noise.rician_noise(brain_slices(3, seed=4), [0.025, 0.1, 0.15], seed=1)
    np.testing.assert_allclose(estimate(noisy).numpy(), noise.estimate_sigma(noisy).numpy(), rtol=1e-5)


def test_rician_bias_correct_equals_numpy():
    images = np.random.default_rng(0).uniform(0, 1, (3, 16, 16, 1)).astype(np.float32)
    sigma = np.array([0.0, 0.1, 0.3], np.float32)
    expected = np.sqrt(np.maximum(images ** 2 - 2 * sigma[:, None, None, None] ** 2, 0))
    np.testing.assert_allclose(noise.rician_bias_correct(images, sigma).numpy(), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(noise.rician_bias_correct(images, 0.1).numpy(),
                               np.sqrt(np.maximum(images ** 2 - 0.02, 0)), rtol=1e-6, atol=1e-7)
