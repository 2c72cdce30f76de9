"""VectorQuantizer against numpy references: nearest codes, gradients, losses, EMA, restarts, config."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from modules import VectorQuantizer, VQVAETrainer


def make_quantizer(num_codes=8, code_dim=4, ema_decay=0.99, codebook=None, **kwargs):
    layer = VectorQuantizer(num_codes, code_dim, ema_decay=ema_decay, seed=1, **kwargs)
    layer.build((None, code_dim))
    if codebook is not None:
        layer.codebook.assign(codebook)
        layer.ema_code_sum.assign(codebook)  # EMA state of codes each seen once: the codebook itself
        layer.ema_cluster_size.assign(np.ones(num_codes, "float32"))
        layer.initialized.assign(1.0)
    return layer


def brute_force_nearest(vectors, codebook):
    distances = ((vectors[:, None, :] - codebook[None, :, :]) ** 2).sum(-1)
    return distances.argmin(1)


def test_indices_equal_numpy_brute_force_nearest_neighbour():
    rng = np.random.default_rng(0)
    codebook = rng.normal(size=(16, 5)).astype("float32")
    inputs = rng.normal(size=(3, 6, 7, 5)).astype("float32")
    layer = make_quantizer(16, 5, codebook=codebook)
    quantized, indices = layer(inputs)
    expected = brute_force_nearest(inputs.reshape(-1, 5), codebook).reshape(3, 6, 7)
    np.testing.assert_array_equal(indices.numpy(), expected)
    np.testing.assert_allclose(quantized.numpy(), codebook[expected], atol=1e-5)


def test_straight_through_gradient_reaches_the_encoder_unchanged():
    rng = np.random.default_rng(1)
    layer = make_quantizer(codebook=rng.normal(size=(8, 4)).astype("float32"))
    inputs = tf.constant(rng.normal(size=(2, 3, 3, 4)).astype("float32"))
    weights = tf.constant(rng.normal(size=(2, 3, 3, 4)).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        quantized, _ = layer(inputs)
        output = tf.reduce_sum(quantized * weights)
    # d(output)/d(inputs) is `weights` exactly through the straight-through estimator (losses aside).
    np.testing.assert_allclose(tape.gradient(output, inputs).numpy(), weights.numpy(), atol=1e-6)


@pytest.mark.parametrize("ema_decay", [None, 0.99])
def test_loss_equals_the_formula(ema_decay):
    rng = np.random.default_rng(2)
    codebook = rng.normal(size=(8, 4)).astype("float32")
    inputs = rng.normal(size=(4, 5, 5, 4)).astype("float32")
    layer = make_quantizer(codebook=codebook, ema_decay=ema_decay, beta=0.3)
    layer(inputs)
    quantized = codebook[brute_force_nearest(inputs.reshape(-1, 4), codebook)].reshape(inputs.shape)
    squared_error = np.mean((inputs - quantized) ** 2)
    codebook_term = squared_error if ema_decay is None else 0.0
    np.testing.assert_allclose(float(sum(layer.losses)), codebook_term + 0.3 * squared_error, rtol=1e-5)


def test_codebook_loss_trains_the_codebook_without_ema():
    layer = make_quantizer(codebook=np.eye(8, 4, dtype="float32"), ema_decay=None)
    assert layer.codebook.trainable
    with tf.GradientTape() as tape:
        layer(tf.random.normal((2, 3, 3, 4)))
        loss = sum(layer.losses)
    assert np.abs(tf.convert_to_tensor(tape.gradient(loss, layer.codebook)).numpy()).sum() > 0


def test_ema_step_equals_the_update_by_hand_and_moves_codes_toward_their_mean():
    rng = np.random.default_rng(3)
    codebook = rng.normal(size=(4, 2)).astype("float32") * 3
    inputs = rng.normal(size=(64, 2)).astype("float32") * 3
    decay, epsilon = 0.9, 1e-5
    layer = make_quantizer(4, 2, ema_decay=decay, epsilon=epsilon, codebook=codebook)
    layer(inputs, training=True)

    assigned = brute_force_nearest(inputs, codebook)
    counts = np.bincount(assigned, minlength=4).astype("float32")
    sums = np.stack([inputs[assigned == k].sum(0) for k in range(4)])
    size = decay * 1.0 + (1 - decay) * counts
    code_sum = decay * codebook + (1 - decay) * sums
    smoothed = (size + epsilon) / (size.sum() + 4 * epsilon) * size.sum()
    np.testing.assert_allclose(layer.codebook.numpy(), code_sum / smoothed[:, None], rtol=1e-4, atol=1e-5)
    for k in np.flatnonzero(counts):
        mean = inputs[assigned == k].mean(0)
        assert np.linalg.norm(layer.codebook.numpy()[k] - mean) < np.linalg.norm(codebook[k] - mean)


def test_codes_unused_for_dead_code_steps_are_restarted_on_encoder_outputs():
    inputs = np.random.default_rng(4).normal(size=(32, 2)).astype("float32")
    codebook = np.array([[0, 0], [0.1, 0], [100, 100], [-100, 50]], "float32")  # the last two are never nearest
    layer = make_quantizer(4, 2, codebook=codebook, dead_code_steps=2)
    layer(inputs, training=True)
    np.testing.assert_allclose(layer.codebook.numpy()[2:], codebook[2:], rtol=1e-3)  # unused once: kept
    layer(inputs, training=True)
    restarted = layer.codebook.numpy()[2:]
    for code in restarted:  # each restarted code now sits on one of the batch's vectors
        assert np.min(np.abs(inputs - code).sum(1)) < 1e-5
    np.testing.assert_array_equal(layer.steps_unused.numpy()[2:], 0)


def test_first_training_batch_initialises_the_codebook_from_the_data():
    inputs = np.random.default_rng(5).normal(size=(50, 3)).astype("float32") + 10.0
    layer = make_quantizer(6, 3)
    layer(inputs, training=True)
    assert float(layer.initialized) == 1.0
    assert np.all(np.abs(layer.codebook.numpy() - 10.0) < 6.0)


def test_get_config_round_trip():
    layer = VectorQuantizer(32, 7, beta=0.5, ema_decay=0.95, epsilon=1e-4, dead_code_steps=9, seed=3)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(clone, VectorQuantizer)
    assert clone.get_config() == layer.get_config()
    trainer = VQVAETrainer(num_codes=16, code_dim=4, channels=16, downsamplings=1)
    assert VQVAETrainer.from_config(trainer.get_config()).get_config() == trainer.get_config()
