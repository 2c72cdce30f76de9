"""The filters that shape each draw of a code from the prior's logits: temperature, top-k, top-p (nucleus), and
keeping the probability the prior gives the background's codes; and the seeded draw itself."""

import math

import tensorflow as tf


def draw(logits, position, temperature, top_k, top_p, background, seed):
    """One code per grid [n] from `filter_logits` of `logits` [n, K], with the stateless seed (seed, position)."""
    logits = filter_logits(logits, temperature, top_k, top_p, background)
    seeds = tf.stack([tf.cast(seed, tf.int32), tf.cast(position, tf.int32)])
    return tf.random.stateless_categorical(logits, 1, seeds, dtype=tf.int32)[:, 0]


def filter_logits(logits, temperature=1.0, top_k=0, top_p=1.0, background=None):
    """Logits [..., K] to draw one code from: divided by `temperature`, then restricted to the `top_k` most
    likely codes (0: all) and to the smallest set of most likely codes whose probability reaches `top_p`
    (nucleus sampling; 1: all). Excluded codes get -inf; codes tied with the last one kept stay in. The
    most likely code is always kept, so a draw is always possible.

    `background` (bool [K], optional) marks the codes of empty background. Where any is marked, the controls
    reshape the other codes only, among themselves, and the background codes keep the probability the prior
    gives them: where the head begins and ends is drawn as trained, while the texture inside is sharpened
    (plain temperatures below 1 also make background likelier, so heads shrink). The returned values are then
    log-probabilities. With no code marked, or None, this is the plain filter above.
    """
    if background is None:
        return _filter_all_codes(logits, temperature, top_k, top_p)
    background = tf.cast(background, tf.bool)
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    background_mass = tf.reduce_sum(tf.where(background, tf.exp(log_probs), 0.0), axis=-1, keepdims=True)
    inside = _filter_all_codes(tf.where(background, tf.constant(-math.inf, logits.dtype), logits), temperature,
                               top_k, top_p)
    inside = tf.nn.log_softmax(inside, axis=-1) + tf.math.log(tf.maximum(1.0 - background_mass, 0.0))
    kept = tf.where(background, log_probs, inside)
    # Computing both and choosing keeps the plain filter's arithmetic, bit for bit, when nothing is marked or
    # nothing is reshaped (the same distribution, but the same draws only from the same numbers).
    reshaping = tf.logical_or(tf.cast(temperature, tf.float32) != 1.0,
                              tf.logical_or(tf.cast(top_k, tf.int32) > 0, tf.cast(top_p, tf.float32) < 1.0))
    return tf.where(tf.logical_and(tf.reduce_any(background), reshaping), kept,
                    _filter_all_codes(logits, temperature, top_k, top_p))


def _filter_all_codes(logits, temperature, top_k, top_p):
    # The most likely code gets logit 0 before dividing, and temperatures below 1e-30 (which float32 may round
    # to 0) act as 1e-30: greedy, never an overflow or 0 / 0.
    logits = logits - tf.reduce_max(logits, axis=-1, keepdims=True)
    logits = logits / tf.maximum(tf.cast(temperature, logits.dtype), 1e-30)
    num_codes = tf.shape(logits)[-1]
    ranked = tf.sort(logits, axis=-1, direction="DESCENDING")
    top_k = tf.cast(top_k, tf.int32)
    keep_k = tf.where(top_k > 0, tf.minimum(top_k, num_codes), num_codes)
    # Codes ranked before the one whose cumulative probability first reaches top_p, and that one.
    before = tf.math.cumsum(tf.nn.softmax(ranked, axis=-1), axis=-1, exclusive=True)
    top_p = tf.cast(top_p, before.dtype)
    keep_p = tf.maximum(tf.reduce_sum(tf.cast(before < top_p, tf.int32), axis=-1), 1)
    keep_p = tf.where(top_p >= 1, num_codes, keep_p)  # not cut by rounding of the cumulative sum
    keep = tf.minimum(keep_k, keep_p)[..., None]
    threshold = tf.gather(ranked, keep - 1, batch_dims=len(logits.shape) - 1)
    return tf.where(logits >= threshold, logits, tf.constant(-math.inf, logits.dtype))
