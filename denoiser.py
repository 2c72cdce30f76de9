"""Denoising with the VQ-VAE as a prior mean: a Wiener filter between its reconstruction and the noisy input.

The VQ-VAE's reconstruction of a noisy slice knows the anatomy and keeps the background black, but misses
the detail finer than its codes; the noisy slice still holds that detail, under the noise. `Denoiser` keeps
the reconstruction and adds back the part of the input's difference from it that is more likely detail than
noise: per spatial frequency, the Wiener gain S_r / (S_r + S_n), where S_r is the power spectrum of the
decoder's residual (clean slice minus reconstruction, measured on training slices) and S_n that of white noise
of the image's sigma. Where the noise is weak the output follows the input, where it is strong the
reconstruction. Only inside the head, found on the reconstruction: the background stays clean.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import layers

import noise
from modules import PACKAGE

LEVELS = (0.0, 0.05, 0.1, 0.2)  # noise sigmas at which the residual spectrum is fitted
HEAD_LOW, HEAD_HIGH = 0.02, 0.08  # reconstructed intensities from which on a pixel starts to be, and is, head
HEAD_MARGIN = 5  # side of the windows that widen and then smooth the head mask


@keras.saving.register_keras_serializable(package=PACKAGE)
class Denoiser(layers.Layer):
    """`call(noisy, reconstructions, sigma)`: noisy images [N, S, S, 1] in [0, 1], the VQ-VAE's
    reconstructions of them, and each image's Rician noise sigma [N] (negative: estimate it from the image,
    `noise.estimate_sigma`) -> the denoised images, clipped to [0, 1].

    The input is first freed of its Rician bias (`noise.rician_bias_correct`). The residual power spectrum
    [S, S/2 + 1] (`numpy.fft.rfft2` scaling) is fitted by `fit` at each sigma of `levels` (the residual of a
    noisy slice's reconstruction grows with the noise), stored as a non-trainable weight, and interpolated
    linearly in sigma for each image.
    """

    def __init__(self, image_size, levels=LEVELS, **kwargs):
        super().__init__(**kwargs)
        self.image_size, self.levels = image_size, tuple(float(level) for level in levels)
        if list(self.levels) != sorted(set(self.levels)):
            raise ValueError(f"levels: expected increasing noise sigmas, got {levels}")

    def build(self, input_shape=None):
        shape = (len(self.levels), self.image_size, self.image_size // 2 + 1)
        self.spectrum = self.add_weight(shape=shape, initializer="zeros", trainable=False, name="spectrum")

    def call(self, noisy, reconstructions, sigma):
        noisy = tf.convert_to_tensor(noisy, tf.float32)
        reconstructions = tf.convert_to_tensor(reconstructions, tf.float32)
        sigma = tf.convert_to_tensor(sigma, tf.float32)
        sigma = tf.where(sigma < 0, noise.estimate_sigma(noisy), sigma)
        mask = head_mask(reconstructions)
        difference = (noise.rician_bias_correct(noisy, sigma) - reconstructions)[..., 0] * mask
        noise_power = tf.square(sigma)[:, None, None] * tf.reduce_sum(tf.square(mask), axis=[1, 2], keepdims=True)
        signal_power = self.spectrum_at(sigma)
        gain = tf.math.divide_no_nan(signal_power, signal_power + noise_power)
        filtered = tf.signal.irfft2d(tf.cast(gain, tf.complex64) * tf.signal.rfft2d(difference),
                                     fft_length=tf.shape(difference)[1:])
        return tf.clip_by_value(reconstructions + (filtered * mask)[..., None], 0.0, 1.0)

    def spectrum_at(self, sigma):
        """The residual power spectrum [N, S, S/2 + 1] for each image's `sigma` [N]: interpolated linearly
        between the fitted levels, the nearest level's outside them."""
        levels = tf.constant(self.levels, tf.float32)
        if len(self.levels) == 1:
            return tf.repeat(self.spectrum, tf.shape(sigma)[0], axis=0)
        upper = tf.clip_by_value(tf.searchsorted(levels, sigma, side="right"), 1, len(self.levels) - 1)
        low, high = tf.gather(levels, upper - 1), tf.gather(levels, upper)
        weight = tf.clip_by_value((sigma - low) / (high - low), 0.0, 1.0)[:, None, None]
        return (1.0 - weight) * tf.gather(self.spectrum, upper - 1) + weight * tf.gather(self.spectrum, upper)

    def fit(self, spectra):
        """Store `spectra` [len(levels), S, S/2 + 1], one residual power spectrum per level; returns self."""
        if not self.built:
            self.build()
        self.spectrum.assign(np.asarray(spectra, np.float32))
        return self

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size, "levels": list(self.levels)}


def head_mask(reconstructions):
    """Soft mask [N, S, S] of the head in `reconstructions` [N, S, S, 1]: 0 in the background, 1 on the head
    and a few pixels around it, a smooth ramp between (no hard edge for the filter to ring on)."""
    head = tf.clip_by_value((reconstructions - HEAD_LOW) / (HEAD_HIGH - HEAD_LOW), 0.0, 1.0)
    widened = tf.nn.max_pool2d(head, HEAD_MARGIN, 1, "SAME")
    return tf.nn.avg_pool2d(widened, HEAD_MARGIN, 1, "SAME")[..., 0]


def residual_spectrum(images, reconstructions):
    """The mean power spectrum |rfft2(image - reconstruction)|^2 [S, S/2 + 1] over `images` [N, S, S, 1]."""
    residual = (np.asarray(images, np.float64) - np.asarray(reconstructions, np.float64))[..., 0]
    return (np.abs(np.fft.rfft2(residual)) ** 2).mean(axis=0)


def fit_denoiser(vqvae, images, levels=LEVELS, batch_size=64, seed=0):
    """A `Denoiser` fitted to `vqvae` on `images` (numpy [N, S, S, 1], training slices): at each sigma of
    `levels`, the residual spectrum of the reconstructions of the images with Rician noise of that sigma."""
    reconstruct = tf.function(vqvae.reconstruct)
    spectra = []
    for level in levels:
        noisy = np.clip(noise.rician_noise(images, level, seed).numpy(), 0.0, 1.0)
        reconstructions = np.concatenate([reconstruct(tf.constant(noisy[start:start + batch_size])).numpy()
                                          for start in range(0, len(images), batch_size)])
        spectra.append(residual_spectrum(images, reconstructions))
    return Denoiser(images.shape[1], levels, name="denoiser").fit(np.stack(spectra))
