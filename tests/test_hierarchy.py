"""The two-level VQ-VAE and its prior: both levels' codes, the decoder's use of both, saving and loading, the
prior's likelihood as the sum of its levels', and draws that follow the seed."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from hierarchy import HierarchicalPrior
from modules import VQVAETrainer
from prior import GatedPixelCNN


def tiny_hierarchy(top_downsamplings=1):
    """A two-level VQ-VAE for 32 x 32 images: an 8 x 8 bottom grid under a (8 / 2^t)-wide top grid."""
    keras.utils.set_random_seed(0)
    return VQVAETrainer(num_codes=16, code_dim=8, channels=16, res_blocks=1, top_downsamplings=top_downsamplings,
                        seed=3)


def images(count=4, seed=0):
    return tf.constant(np.random.default_rng(seed).random((count, 32, 32, 1)), tf.float32)


@pytest.mark.parametrize("top_downsamplings", [1, 2])
def test_both_levels_are_coded_and_the_decoder_uses_both(top_downsamplings):
    model = tiny_hierarchy(top_downsamplings)
    top, bottom = model.encode_levels(images())
    assert top.shape == (4, 8 // 2 ** top_downsamplings, 8 // 2 ** top_downsamplings) and bottom.shape == (4, 8, 8)
    np.testing.assert_allclose(model.decode_levels(top, bottom).numpy(), model.reconstruct(images()).numpy(),
                               atol=1e-6)
    other_top = (top + 1) % 16
    assert np.abs(model.decode_levels(other_top, bottom).numpy() - model.decode_levels(top, bottom).numpy()).max() > 0


def test_training_reports_the_top_level_and_a_saved_model_loads_equal(tmp_path):
    model = tiny_hierarchy()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(images(8), batch_size=4, epochs=1, verbose=0, validation_data=(images(4, seed=1),))
    for name in ("top_mse", "top_perplexity", "val_top_mse", "val_top_perplexity"):
        assert np.isfinite(history.history[name][0]), name
    # The top head predicts the image averaged over each bottom code's 4 x 4 pixels: its loss, by hand.
    context = model.top_decoder(model.top_quantizer.lookup(model.encode_levels(images())[0]))
    coarse = images().numpy().reshape(4, 8, 4, 8, 4, 1).mean(axis=(2, 4))
    by_hand = ((model.top_head(context).numpy() - coarse) ** 2).mean()
    assert model.evaluate(images(), batch_size=4, verbose=0, return_dict=True)["top_mse"] == pytest.approx(by_hand,
                                                                                                      rel=1e-4)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded.encode_levels(images())[0].numpy(), model.encode_levels(images())[0].numpy())
    np.testing.assert_allclose(loaded.reconstruct(images()).numpy(), model.reconstruct(images()).numpy(), atol=1e-6)


def tiny_prior_pair(num_classes=2):
    keras.utils.set_random_seed(1)
    top = GatedPixelCNN(num_codes=5, grid_size=2, channels=8, num_layers=2, num_classes=num_classes)
    bottom = GatedPixelCNN(num_codes=6, grid_size=4, channels=8, num_layers=3, num_classes=num_classes,
                           condition_grid=2, condition_codes=5)
    for weight in top.weights + bottom.weights:
        weight.assign(tf.random.normal(weight.shape, stddev=0.5))
    return HierarchicalPrior(top, bottom)


def log_softmax_at(logits, codes):
    """float64 numpy: the log-probability of each code under its logits, summed per grid."""
    logits = logits.astype("float64")
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return np.take_along_axis(log_probs, codes[..., None], -1).sum(axis=(1, 2, 3))


def test_the_likelihood_is_both_levels_and_a_saved_prior_loads_equal(tmp_path):
    prior = tiny_prior_pair()
    rng = np.random.default_rng(2)
    top, bottom = (tf.constant(rng.integers(0, k, (3, g, g)), tf.int32) for k, g in ((5, 2), (6, 4)))
    labels = tf.constant([0, 1, 1])
    top_logits, bottom_logits = prior((top, bottom, labels))
    expected = log_softmax_at(top_logits.numpy(), top.numpy()) + log_softmax_at(bottom_logits.numpy(), bottom.numpy())
    np.testing.assert_allclose(prior.log_prob(top, bottom, labels).numpy(), expected, rtol=1e-5)
    # The bottom level's logits depend on the top codes.
    assert np.abs(prior.bottom.logits(bottom, labels, (top + 1) % 5).numpy() - bottom_logits.numpy()).max() > 1e-4
    prior.save(tmp_path / "p.keras")
    loaded = keras.models.load_model(tmp_path / "p.keras")
    expected = prior.log_prob(top, bottom, labels).numpy()
    np.testing.assert_allclose(loaded.log_prob(top, bottom, labels).numpy(), expected, rtol=1e-6)


def test_draws_follow_the_seed_and_the_bottom_is_drawn_given_the_top():
    prior = tiny_prior_pair()
    labels = tf.constant([0, 1, 0, 1])
    draw = tf.function(lambda seed: prior.sample(4, labels, seed=seed))
    first, again, other = draw(tf.constant(3)), draw(tf.constant(3)), draw(tf.constant(4))
    for level, (a, b) in enumerate(zip(first, again)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert first[0].shape == (4, 2, 2) and first[1].shape == (4, 4, 4)
    assert any(np.any(a.numpy() != b.numpy()) for a, b in zip(first, other))
    # The bottom level is the bottom prior's own draw given the drawn top codes, with the seed -1 - seed.
    bottom = tf.function(lambda: prior.bottom.sample(4, labels, seed=-4, top=first[0]))()
    np.testing.assert_array_equal(bottom.numpy(), first[1].numpy())


def test_a_bottom_prior_not_made_for_the_top_is_refused():
    top = GatedPixelCNN(num_codes=5, grid_size=2, channels=8, num_layers=2)
    with pytest.raises(ValueError, match="conditioned on the top prior's grid"):
        HierarchicalPrior(top, GatedPixelCNN(num_codes=6, grid_size=4, channels=8, num_layers=2))
