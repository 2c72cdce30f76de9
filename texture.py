"""The fine texture that the codes do not carry: a Gaussian model of the decoder's residual.

Trained on squared error and SSIM, the decoder returns about the mean of the images that share a code grid:
what varies between them (scanner noise and texture finer than a code, the residual `image - reconstruction`)
is averaged away. Every decoded image is therefore smoother than a real scan, and a small classifier tells
reconstructions from real slices apart (benchmarks/realism.py). `DecoderTexture` draws that residual
instead of leaving it out: Gaussian noise with the residual's spatial correlation (a small filter) and its
standard deviation at each decoded intensity, added inside the head. It is fitted, not trained, from a few
hundred training slices and their reconstructions. Generation adds it (predict.py, the realism benchmark);
reconstruction and the codec keep the decoder's mean, which is what SSIM and PSNR reward.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from modules import PACKAGE

MIN_PIXELS = 100  # an intensity bin with fewer head pixels borrows its neighbours' standard deviation


@keras.saving.register_keras_serializable(package=PACKAGE)
class DecoderTexture(layers.Layer):
    """`call(images, seed)`: decoded images [N, S, S, 1] plus one draw of the residual texture, clipped to
    [0, 1]. Pixels at or below `foreground` (the black background of skull-stripped slices) are left alone.

    The draw is `sigma(image) * (white_noise * kernel)`: `sigma` holds the residual's standard deviation in
    each of `bins` equal intervals of decoded intensity, `kernel` (k x k, unit norm) gives the noise the
    residual's power spectrum. Both are fitted by `fit` and stored as non-trainable weights. The same seed
    draws the same texture (stateless seed (seed, -2); the sampler uses (seed, position) and (seed, -1))."""

    def __init__(self, bins=32, kernel_size=9, foreground=0.1, **kwargs):
        super().__init__(**kwargs)
        self.bins, self.kernel_size, self.foreground = bins, kernel_size, foreground

    def build(self, input_shape=None):
        self.sigma = self.add_weight(shape=(self.bins,), initializer="zeros", trainable=False, name="sigma")
        self.kernel = self.add_weight(shape=(self.kernel_size, self.kernel_size, 1, 1), initializer="zeros",
                                      trainable=False, name="kernel")

    def call(self, images, seed=0):
        images = tf.convert_to_tensor(images, tf.float32)
        seed = tf.stack([tf.cast(seed, tf.int32), -2])
        noise = tf.nn.conv2d(tf.random.stateless_normal(tf.shape(images), seed), self.kernel, 1, "SAME")
        level = tf.clip_by_value(tf.cast(images * self.bins, tf.int32), 0, self.bins - 1)
        texture = tf.where(images > self.foreground, tf.gather(self.sigma, level) * noise, 0.0)
        return tf.clip_by_value(images + texture, 0.0, 1.0)

    def fit(self, images, reconstructions):
        """Fit `sigma` and `kernel` to the residuals of `images` [N, S, S, 1] (real) and their
        `reconstructions` (numpy, same shape); returns self."""
        if not self.built:
            self.build()
        residual, decoded = (images - reconstructions)[..., 0], reconstructions[..., 0]
        head = decoded > self.foreground
        level = np.clip((decoded * self.bins).astype(int), 0, self.bins - 1)
        sigma = _sigma_per_level(residual, level, head, self.bins)
        whitened = np.where(head, residual / np.maximum(sigma[level], 1e-6), 0.0)
        self.sigma.assign(sigma.astype("float32"))
        self.kernel.assign(_filter_of(whitened, self.kernel_size)[..., None, None].astype("float32"))
        return self

    def get_config(self):
        return {**super().get_config(), "bins": self.bins, "kernel_size": self.kernel_size,
                "foreground": self.foreground}


def _sigma_per_level(residual, level, head, bins):
    """The residual's standard deviation over the head pixels of each intensity level; levels with too few
    pixels take the value of the nearest levels that have enough (zero if none has)."""
    levels, values = level[head], residual[head].astype("float64")
    counts = np.bincount(levels, minlength=bins)
    filled = np.flatnonzero(counts >= MIN_PIXELS)
    if not len(filled):
        return np.zeros(bins)
    mean = np.bincount(levels, values, bins)[filled] / counts[filled]
    mean_square = np.bincount(levels, values ** 2, bins)[filled] / counts[filled]
    return np.interp(np.arange(bins), filled, np.sqrt(np.maximum(mean_square - mean ** 2, 0.0)))


def _filter_of(fields, size):
    """A zero-phase `size` x `size` filter of unit norm whose output, for white noise in, has about the mean
    power spectrum of `fields` [N, H, W]: the inverse transform of the spectrum's square root, cropped."""
    power = (np.abs(np.fft.fft2(fields)) ** 2).mean(axis=0)
    if not power.any():  # no residual to model (no head pixels): white noise, which sigma 0 then silences
        return np.pad([[1.0]], size // 2)
    kernel = np.fft.fftshift(np.real(np.fft.ifft2(np.sqrt(power))))
    centre_row, centre_column = kernel.shape[0] // 2, kernel.shape[1] // 2
    half = size // 2
    kernel = kernel[centre_row - half:centre_row + half + 1, centre_column - half:centre_column + half + 1]
    return kernel / np.sqrt((kernel ** 2).sum())


def fit_texture(vqvae, images, batch_size=64):
    """A `DecoderTexture` fitted to the residuals of `vqvae` on `images` (numpy [N, S, S, 1], training slices)."""
    reconstruct = tf.function(vqvae.reconstruct)
    reconstructions = np.concatenate([reconstruct(tf.constant(images[start:start + batch_size])).numpy()
                                      for start in range(0, len(images), batch_size)])
    return DecoderTexture(name="texture").fit(images, np.clip(reconstructions, 0.0, 1.0))
