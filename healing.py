"""Where is a scan abnormal: anomaly maps from the prior by "healing" (Pinaya et al., "Unsupervised brain
imaging 3D anomaly detection and segmentation with transformers", Medical Image Analysis 2022).

An image's codes are read in scan order; each code that the prior finds less likely than a threshold, given
the codes before it (as healed so far), is replaced by a code drawn from those the prior finds at least that
likely there. The healed grid is decoded: the image as the prior would have it. Where codes were replaced,
the difference between the input and its healed image is the anomaly map. A prior of several scan orders
(`orders`) heals once in each order, and the maps are averaged: a raster order judges the top-left of a
lesion blind, another order sees it from the other side. A hierarchical model heals its top codes first,
then its bottom codes given the healed top.
"""

import math

import tensorflow as tf

import orders
from prior import log_likelihood
from sampling import draw

# The replaced codes' mask, and then the map, are blurred by a Gaussian of this many code widths: a replaced
# code shapes pixels a little past its own square through the decoder, and a lesion spans several codes,
# while the false alarms of normal tissue are single codes (on validation lesions, benchmarks/anomaly.py,
# the map's blur raised Dice from 0.20 to 0.25 and its peak scores images better than its mean).
BLUR_CODES = 0.5


def code_log_likelihoods(prior, codes, labels=None, top=None, order=0):
    """log p(code | the codes before it in scan `order`) of each position of `codes` [N, G, G] under one
    level's `prior` (given the `top` codes for a conditioned prior), as a grid [N, G, G] in the codes' own
    layout. In order 0 they sum to the prior's log_prob."""
    turned, turned_top = orders.orient(codes, order), _oriented(top, order)
    return orders.unorient(log_likelihood(turned, prior.logits(turned, labels, turned_top, order)), order)


def heal_codes(prior, codes, log_threshold, seed, labels=None, top=None, order=0):
    """`codes` [N, G, G] healed by one level's `prior` in scan `order` (an int or [N]): in that order, every
    code whose log-probability given the healed codes before it is below `log_threshold` is replaced by a
    draw (stateless, from `seed`) among the codes at least that likely there (the most likely one if none
    is). Conditioned priors heal given the `top` codes (the healed ones of a hierarchy)."""
    turned, turned_top = orders.orient(codes, order), _oriented(top, order)
    grid = prior.grid_size

    def choose(logits, i, j):
        original = turned[:, i, j]
        log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
        unlikely = tf.gather(log_probs, original, batch_dims=1) < log_threshold
        floor = tf.minimum(log_threshold, tf.reduce_max(log_probs, axis=-1, keepdims=True))
        likely = tf.where(log_probs >= floor, log_probs, -math.inf)
        return tf.where(unlikely, draw(likely, i * grid + j, 1.0, 0, 1.0, None, seed), original)

    healed = prior.scan(tf.shape(codes)[0], choose, labels, turned_top, order)
    return orders.unorient(healed, order)


def heal_levels(prior, levels, log_threshold, seed, labels=None, order=0):
    """Each level of `levels` (as `VQVAETrainer.encode_levels` gives them) healed: the top by the hierarchy's
    top prior, then the bottom given the healed top; a one-level model's codes by its prior."""
    if len(levels) == 1:
        return (heal_codes(prior, levels[0], log_threshold, seed, labels, order=order),)
    top = heal_codes(prior.top, levels[0], log_threshold, seed, labels, order=order)
    return top, heal_codes(prior.bottom, levels[1], log_threshold, -1 - seed, labels, top, order)


def anomaly_maps(vqvae, prior, images, threshold, seed, labels=None, scan_orders=None, heal=heal_levels):
    """Heal `images` [N, S, S, 1] in each of the prior's scan orders (or the first `scan_orders`) by `heal`
    (`heal_levels`, or a compiled one); returns a dict of float32 tensors:
    - "healed" [N, S, S, 1]: the mean over orders of the decoded healed codes;
    - "replaced" [N, S, S, 1]: the fraction of orders that replaced the code under each pixel (of either level);
    - "anomaly" [N, S, S, 1]: the mean over orders of |image - healed image| where codes were replaced (the
      replaced codes' mask, blurred), blurred, higher where more anomalous;
    - "score" [N]: the peak of the anomaly map, the image's anomaly score;
    - "codes_replaced" [N]: the fraction of the image's codes (bottom level) replaced, averaged over orders.
    `threshold`: a code is replaced where the prior gives it a probability below this, given the codes
    before it. `labels`: the class each image is healed under (conditional priors)."""
    count = prior.scan_orders if scan_orders is None else scan_orders
    n = tf.shape(images)[0]
    order = tf.repeat(tf.range(count), n)
    tiled = lambda tensor: tf.tile(tensor, tf.concat([[count], tf.ones([tf.rank(tensor) - 1], tf.int32)], 0))
    levels = tuple(tiled(level) for level in vqvae.encode_levels(images))
    log_threshold = tf.math.log(tf.cast(threshold, tf.float32))
    healed = heal(prior, levels, log_threshold, seed, None if labels is None else tiled(labels), order)
    decoded = vqvae.decode_levels(*healed)
    replaced = _replaced_pixels(levels, healed, images.shape[1])
    code_width = images.shape[1] // levels[-1].shape[1]
    residual = tf.abs(tiled(images) - decoded) * _blurred(replaced, code_width)
    by_order = lambda tensor: tf.reduce_mean(tf.reshape(tensor, tf.concat([[count, n], tf.shape(tensor)[1:]], 0)), 0)
    anomaly = _blurred(by_order(residual), code_width)
    changed = tf.cast(healed[-1] != levels[-1], tf.float32)
    return {"healed": by_order(decoded), "replaced": by_order(replaced), "anomaly": anomaly,
            "score": tf.reduce_max(anomaly, axis=[1, 2, 3]), "codes_replaced": by_order(tf.reduce_mean(changed, [1, 2]))}


def _oriented(top, order):
    return None if top is None else orders.orient(top, order)


def _replaced_pixels(levels, healed, size):
    """1.0 at each pixel [N, S, S, 1] under a code replaced at any level, else 0.0."""
    masks = [tf.image.resize(tf.cast(new != old, tf.float32)[..., None], (size, size), method="nearest")
             for old, new in zip(levels, healed)]
    return tf.reduce_max(tf.stack(masks), axis=0)


def _blurred(mask, code_width):
    """`mask` [N, S, S, 1] blurred by a Gaussian of BLUR_CODES code widths, as a separable convolution."""
    sigma = BLUR_CODES * code_width
    radius = max(1, math.ceil(3 * sigma))
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(offsets / sigma))
    kernel /= tf.reduce_sum(kernel)
    rows = tf.nn.conv2d(mask, tf.reshape(kernel, (-1, 1, 1, 1)), 1, "SAME")
    return tf.nn.conv2d(rows, tf.reshape(kernel, (1, -1, 1, 1)), 1, "SAME")
