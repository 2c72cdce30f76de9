"""The noise of MRI magnitude images: Rician noise, its level estimated from an image, and its bias removed.

A magnitude image is |image + n1 + i n2| with n1, n2 independent Gaussian noise of standard deviation sigma
in both channels of the complex signal. Where the image is bright the result is close to Gaussian noise of
that sigma; where it is dark the magnitude is biased upwards, and the background of a skull-stripped slice
becomes Rayleigh noise (mean sigma * sqrt(pi / 2), second moment 2 sigma^2) instead of black.

Every function takes images [N, H, W, 1] in [0, 1] (numpy arrays or tensors), sigma as a fraction of the
intensity range, and returns tensors; all are TensorFlow ops, so training and the SavedModel can use them in
graphs.
"""

import numpy as np
import tensorflow as tf

# The darkest fraction of every slice (by the mean of each pixel's neighbours) that is taken as background.
# A quarter leaves room for slices where the head fills most of the image, and is enough pixels for a
# precise estimate where it does not.
BACKGROUND_FRACTION = 0.25
NEIGHBOURHOOD = 7  # side of the square window whose mean ranks the pixels by how dark their surroundings are


def rician_noise(images, sigma, seed):
    """The magnitude of (images + N(0, sigma^2)) + i N(0, sigma^2): images [N, H, W, C] with Rician noise.

    `sigma` is a scalar or one value per image [N]; `seed` an int or a [2] integer tensor (the noise is
    stateless: the same seed gives the same noise, and the same draws scaled for every sigma). The result is
    not clipped: magnitudes above 1 occur where the image is bright.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    sigma = _per_image(sigma, images)
    real, imaginary = tf.unstack(tf.random.stateless_normal(tf.concat([[2], tf.shape(images)], 0),
                                                            _seed_pair(seed)))
    return tf.sqrt(tf.square(images + sigma * real) + tf.square(sigma * imaginary))


def estimate_sigma(images):
    """The Rician noise sigma of each of `images` [N, H, W, 1], from its background: a tensor [N].

    The background is the darkest BACKGROUND_FRACTION of the slice, ranked by the mean of each pixel's
    neighbours (without the pixel itself, so that ranking does not bias the pixel's own value). There the
    image is Rayleigh noise, whose second moment is 2 sigma^2. Zeros that have another zero beside them are
    not noise (Rician noise is never exactly 0) but padding or a masked background, and are left out; a clean
    slice on a black background therefore gives about 0, and so does a noisy slice whose background was set
    to 0 after the noise: its noise cannot be seen there.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    flat = tf.reshape(images, [tf.shape(images)[0], -1])
    darkness = tf.reshape(_neighbour_mean(images), tf.shape(flat))
    count = tf.cast(tf.round(BACKGROUND_FRACTION * tf.cast(tf.shape(flat)[1], tf.float32)), tf.int32)
    _, background = tf.math.top_k(-darkness, k=count)
    values = tf.gather(flat, background, batch_dims=1)
    padding = tf.gather(tf.reshape(_padding_zeros(images), tf.shape(flat)), background, batch_dims=1)
    noise_pixels = tf.maximum(tf.cast(count, tf.float32) - tf.reduce_sum(padding, axis=1), 1.0)
    return tf.sqrt(tf.reduce_sum(tf.square(values), axis=1) / (2.0 * noise_pixels))


def rician_bias_correct(images, sigma):
    """sqrt(max(images^2 - 2 sigma^2, 0)): removes the Rician bias of a magnitude image's mean intensity
    (for a denoised image: the floor that the noise leaves in dark regions). `sigma` a scalar or [N]."""
    images = tf.convert_to_tensor(images, tf.float32)
    return tf.sqrt(tf.maximum(tf.square(images) - 2.0 * tf.square(_per_image(sigma, images)), 0.0))


def _per_image(sigma, images):
    """`sigma` (a scalar, or one value per image [N]) shaped to broadcast against `images` [N, ...]."""
    sigma = tf.convert_to_tensor(sigma, tf.float32)
    if sigma.shape.rank == 0:
        return sigma
    return tf.reshape(sigma, [-1] + [1] * (images.shape.rank - 1))


def _seed_pair(seed):
    """A stateless random op's [2] seed from an int or a [2] tensor."""
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    return tf.stack([seed, tf.zeros_like(seed)]) if seed.shape.rank == 0 else seed


def _neighbour_mean(images):
    """The mean of each pixel's neighbours in a NEIGHBOURHOOD-wide square, the pixel itself left out."""
    kernel = np.ones((NEIGHBOURHOOD, NEIGHBOURHOOD), np.float32)
    kernel[NEIGHBOURHOOD // 2, NEIGHBOURHOOD // 2] = 0.0
    kernel /= kernel.sum()
    return tf.nn.conv2d(images, kernel[..., None, None], strides=1, padding="SAME")


def _padding_zeros(images):
    """1.0 where a pixel is exactly 0 and so is another pixel of its 3x3 neighbourhood, else 0.0."""
    zero = tf.cast(tf.equal(images, 0.0), tf.float32)
    zeros_around = tf.nn.conv2d(zero, tf.ones([3, 3, 1, 1]), strides=1, padding="SAME")
    return zero * tf.cast(zeros_around >= 2.0, tf.float32)
