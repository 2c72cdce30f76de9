"""The prior: causality without a blind spot, class conditioning, the two samplers, the sampling filters and
the likelihood, against numpy references."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_GRID as GRID, TINY_TOP_GRID as TOP_GRID, tiny_prior
from attention import RowCausalAttention
from prior import GatedPixelCNN, GatedPixelCNNBlock, bits_per_code, log_likelihood
from sampling import filter_logits


def dependence_map(model, labels=None):
    """[p, q] = whether the logits at position p change with the input at position q (both raster order),
    and for a conditioned prior [p, t] = whether they change with the top code at position t.

    The head's ReLUs can zero a gradient at one input by chance, so a dependence counts if it shows for
    any of a batch of random inputs.
    """
    embedded = tf.random.normal((4, GRID, GRID, model.channels), seed=1)
    top = tf.random.uniform((4, TOP_GRID, TOP_GRID), 0, 5, tf.int32, seed=2) if model.conditioned else None
    labels = None if labels is None else tf.repeat(labels, 4)
    depends = np.zeros((GRID * GRID, GRID * GRID), bool)
    on_top = np.zeros((GRID * GRID, TOP_GRID * TOP_GRID), bool)
    for p in range(GRID * GRID):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(embedded)
            condition = None
            if model.conditioned:  # the condition net from its embedded input, so that the tape can watch that
                embedded_top = model.condition_net.get_layer("top_embedding")(top)
                tape.watch(embedded_top)
                condition = condition_from_embedding(model, embedded_top)
            logits = model.horizontal_logits(embedded, model.vertical_links(embedded, labels, condition), labels,
                                             condition)
            output = tf.reduce_sum(logits[:, p // GRID, p % GRID] * tf.range(1.0, model.num_codes + 1))
        depends[p] = tf.reduce_any(tf.abs(tape.gradient(output, embedded)) > 0, axis=[0, 3]).numpy().reshape(-1)
        if model.conditioned:
            gradient = tape.gradient(output, embedded_top)
            on_top[p] = tf.reduce_any(tf.abs(gradient) > 0, axis=[0, 3]).numpy().reshape(-1)
    return (depends, on_top) if model.conditioned else depends


def condition_from_embedding(model, embedded_top):
    """The conditioning map of `model` from already embedded top codes: its condition net after the embedding."""
    x = embedded_top
    for layer in model.condition_net.layers[2:]:
        x = layer(x)
    return x


@pytest.mark.parametrize("num_classes, attention_layers, attention_pool", [(0, 0, 1), (2, 1, 1), (0, 1, 4)])
def test_each_position_sees_exactly_the_positions_before_it(num_classes, attention_layers, attention_pool):
    model = tiny_prior(num_classes, attention_layers=attention_layers, attention_pool=attention_pool)
    labels = tf.constant([1]) if num_classes else None
    depends = dependence_map(model, labels)
    earlier = np.tril(np.ones_like(depends), k=-1)  # q < p in raster order
    assert not depends[earlier == 0].any(), "a position sees itself or a later one"
    assert depends[earlier == 1].all(), "a blind spot: some earlier position is not seen"


@pytest.mark.parametrize("num_classes, attention_layers", [(0, 0), (2, 1)])
def test_the_bottom_prior_of_a_hierarchy_sees_the_whole_top_grid_and_only_earlier_bottom_codes(num_classes,
                                                                                                attention_layers):
    model = tiny_prior(num_classes, attention_layers=attention_layers, conditioned=True)
    depends, on_top = dependence_map(model, tf.constant([1]) if num_classes else None)
    earlier = np.tril(np.ones_like(depends), k=-1)
    assert not depends[earlier == 0].any(), "a position sees itself or a later one"
    assert depends[earlier == 1].all(), "a blind spot: some earlier position is not seen"
    assert on_top.all(), "some position does not see every top code"


def test_the_label_changes_the_output_of_a_conditional_prior():
    model = tiny_prior(num_classes=2)
    codes = tf.constant(np.random.default_rng(0).integers(0, 6, (1, GRID, GRID)), tf.int32)
    first, second = model((codes, tf.constant([0]))), model((codes, tf.constant([1])))
    assert np.abs(first.numpy() - second.numpy()).max() > 1e-4


@pytest.mark.parametrize("attention_layers, attention_pool, conditioned", [(0, 1, False), (1, 1, False),
                                                                          (1, 2, False), (1, 2, True)])
def test_cached_sampler_draws_the_same_codes_as_full_recompute(attention_layers, attention_pool, conditioned):
    model = tiny_prior(num_classes=2, attention_layers=attention_layers, attention_pool=attention_pool,
                       conditioned=conditioned)
    labels = tf.constant([0, 1, 1])
    top = None
    if conditioned:
        top = tf.constant(np.random.default_rng(3).integers(0, 5, (3, TOP_GRID, TOP_GRID)), tf.int32)
    cached = tf.function(lambda: model.sample(3, labels, temperature=1.0, seed=7, top=top))()
    full = tf.function(lambda: model.sample(3, labels, temperature=1.0, seed=7, cached=False, top=top))()
    np.testing.assert_array_equal(cached.numpy(), full.numpy())
    assert len(np.unique(cached.numpy())) > 1


@pytest.mark.parametrize("attention_layers, attention_pool, top_grid", [(0, 1, 0), (2, 1, 0), (1, 4, 0), (1, 4, 4)])
def test_step_by_step_logits_equal_the_full_pass(attention_layers, attention_pool, top_grid):
    """`step` from `initial_state`, fed each code in turn, gives `call`'s logits everywhere (grid 16, so that
    the ring buffers of dilations 1 to 8 wrap around), with and without top codes to condition on."""
    keras.utils.set_random_seed(1)
    model = GatedPixelCNN(num_codes=6, grid_size=16, channels=8, num_layers=5, num_classes=2,
                          attention_layers=attention_layers, attention_pool=attention_pool, condition_grid=top_grid,
                          condition_codes=3 if top_grid else 0)
    for weight in model.weights:
        weight.assign(tf.random.normal(weight.shape, stddev=0.5))
    codes = np.random.default_rng(2).integers(0, 6, (2, 16 * 16)).astype(np.int32)
    labels = tf.constant([1, 0])
    top = tf.constant(np.random.default_rng(3).integers(0, 3, (2, top_grid, top_grid)), tf.int32) if top_grid else None
    step = tf.function(model.step)
    state, stepped = model.initial_state(2, labels, top), []
    for position in range(16 * 16):
        state, logits = step(state, tf.constant(position), tf.constant(codes[:, max(position - 1, 0)]))
        stepped.append(logits.numpy())
    full = model.logits(tf.constant(codes.reshape(2, 16, 16)), labels, top).numpy().reshape(2, 16 * 16, 6)
    np.testing.assert_allclose(np.stack(stepped, axis=1), full, atol=1e-4 * np.abs(full).max())


def log_softmax(logits):
    """numpy, in float64: log p of each code under the logits [..., K]."""
    shifted = logits.astype("float64") - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_log_likelihood_and_bits_per_code_are_the_log_softmax_at_each_code():
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 3, (2, 4, 4, 7)).astype("float32")
    codes = rng.integers(0, 7, (2, 4, 4)).astype("int32")
    expected = np.take_along_axis(log_softmax(logits), codes[..., None], -1)[..., 0]
    np.testing.assert_allclose(log_likelihood(tf.constant(codes), tf.constant(logits)).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(bits_per_code(codes, logits).numpy(), -expected / np.log(2), atol=1e-5)
    metric = keras.metrics.MeanMetricWrapper(bits_per_code)  # as train.py reports it: codes arrive as floats
    metric.update_state(codes.astype("float32"), logits)
    assert float(metric.result()) == pytest.approx(-expected.mean() / np.log(2), rel=1e-5)


def test_log_prob_of_a_grid_sums_the_log_softmax_of_each_code_under_its_label():
    model = tiny_prior(num_classes=2)
    codes = np.random.default_rng(6).integers(0, 6, (2, GRID, GRID)).astype("int32")
    labels = tf.constant([0, 1])
    logits = model((tf.constant(codes), labels)).numpy()
    expected = np.take_along_axis(log_softmax(logits), codes[..., None], -1).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(model.log_prob(tf.constant(codes), labels).numpy(), expected, rtol=1e-5)


def test_sampling_at_temperature_near_zero_is_greedy_decoding_by_teacher_forcing():
    model = tiny_prior()
    sampled = tf.function(lambda: model.sample(2, temperature=1e-7, seed=3))().numpy()
    greedy = np.zeros((2, GRID, GRID), np.int32)
    for p in range(GRID * GRID):
        logits = model(tf.constant(greedy)).numpy()
        greedy[:, p // GRID, p % GRID] = logits[:, p // GRID, p % GRID].argmax(-1)
    np.testing.assert_array_equal(sampled, greedy)


@pytest.mark.parametrize("pool", [4, 3])
def test_pooled_attention_attends_over_column_averages_and_gives_each_token_to_its_columns(pool):
    """Against numpy: the attention of `pool` equals the unpooled attention over features averaged per token
    (the last token shorter when `pool` does not divide the grid) and repeated over the token's columns."""
    keras.utils.set_random_seed(0)
    grid, channels = 8, 4
    pooled = RowCausalAttention(channels, grid_size=grid, pool=pool)
    pooled.build((None, grid, grid, channels))
    v = tf.random.normal((2, grid, grid, channels), seed=3)
    normed = pooled.norm(v + pooled.position).numpy()
    starts = range(0, grid, pool)
    means = np.stack([normed[:, :, s:s + pool].mean(axis=2) for s in starts], axis=2)  # [2, rows, tokens, C]
    flat = means.reshape(2, -1, channels)
    row_of = np.arange(flat.shape[1]) // len(starts)
    attended = pooled.attention(flat, flat, attention_mask=row_of[:, None] >= row_of[None, :]).numpy()
    expected = v.numpy() + np.repeat(attended.reshape(means.shape), pool, axis=2)[:, :, :grid]
    np.testing.assert_allclose(pooled(v).numpy(), expected, atol=1e-5)


def test_dropout_acts_in_training_only():
    """With dropout the prior computes, outside training, exactly what the same weights without dropout do
    (so sampling and the export are unchanged); in training it drops features, differently each call."""
    model = tiny_prior(num_classes=2, attention_layers=1)
    dropping = GatedPixelCNN(**{**model.get_config(), "dropout": 0.5})
    dropping.set_weights(model.get_weights())
    codes = tf.constant(np.random.default_rng(3).integers(0, 6, (2, GRID, GRID)), tf.int32)
    inputs = (codes, tf.constant([0, 1]))
    np.testing.assert_array_equal(dropping(inputs).numpy(), model(inputs).numpy())
    first, second = dropping(inputs, training=True).numpy(), dropping(inputs, training=True).numpy()
    assert np.abs(first - model(inputs).numpy()).max() > 1e-3
    assert np.abs(first - second).max() > 1e-3


def test_fit_trains_with_dropout():
    """fit()'s training step drops features: at learning rate 0 its loss differs from the evaluation's on the
    same batch, and without dropout the two are equal."""
    codes = tf.constant(np.random.default_rng(4).integers(0, 6, (4, GRID, GRID)), tf.int32)
    losses = {}
    for dropout in (0.0, 0.5):
        model = tiny_prior(dropout=dropout)
        model.compile(optimizer=keras.optimizers.SGD(0.0),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        losses[dropout] = (model.train_on_batch(codes, codes), model.test_on_batch(codes, codes))
    assert losses[0.0][0] == pytest.approx(losses[0.0][1], rel=1e-5)
    assert abs(losses[0.5][0] - losses[0.5][1]) > 1e-3


def test_get_config_round_trip():
    block = GatedPixelCNNBlock(8, dilation=4, first=True, num_classes=3, dropout=0.1)
    assert GatedPixelCNNBlock.from_config(block.get_config()).get_config() == block.get_config()
    attention = RowCausalAttention(8, grid_size=4, heads=2, pool=2)
    assert RowCausalAttention.from_config(attention.get_config()).get_config() == attention.get_config()
    model = tiny_prior(num_classes=2, attention_layers=1, attention_pool=4)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert clone.get_config() == model.get_config()


def test_receptive_field_covers_the_whole_default_grid():
    """train.py's default prior (10 blocks on a 32x32 grid): the last position sees every earlier one, and
    the first position of a row sees the far right of the row above."""
    keras.utils.set_random_seed(0)
    model = GatedPixelCNN(num_codes=4, grid_size=32, channels=4, num_layers=10)
    for weight in model.weights:
        weight.assign(tf.random.normal(weight.shape, stddev=0.5))
    embedded = tf.random.normal((4, 32, 32, 4), seed=2)
    for row, col in ((31, 31), (1, 0)):
        with tf.GradientTape() as tape:
            tape.watch(embedded)
            logits = model.horizontal_logits(embedded, model.vertical_links(embedded))
            output = tf.reduce_sum(logits[:, row, col] * tf.range(1.0, 5.0))
        seen = tf.reduce_any(tf.abs(tape.gradient(output, embedded)) > 0, axis=[0, 3]).numpy().reshape(-1)
        position = row * 32 + col
        assert seen[:position].all() and not seen[position:].any()


def reference_distribution(logits, temperature, top_k, top_p):
    """numpy: the probabilities a code is drawn with, by walking the codes from most to least likely."""
    scaled = logits / temperature
    probabilities = np.exp(scaled - scaled.max())
    probabilities /= probabilities.sum()
    kept, total = [], 0.0
    for rank, code in enumerate(np.argsort(-probabilities, kind="stable")):
        if (top_k and rank >= top_k) or total >= top_p:
            break
        kept.append(code)
        total += probabilities[code]
    result = np.zeros_like(probabilities)
    result[kept] = probabilities[kept]
    return result / result.sum()


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.5), (1.3, 5, 0.8), (1.0, 1, 1.0), (0.5, 100, 0.95)])
def test_filter_logits_keeps_the_codes_numpy_keeps(temperature, top_k, top_p):
    logits = np.random.default_rng(top_k).normal(0, 2, (5, 12)).astype("float32")
    filtered = filter_logits(tf.constant(logits), temperature, top_k, top_p)
    drawn_with = tf.nn.softmax(filtered, axis=-1).numpy()
    for row, probabilities in zip(logits, drawn_with):
        np.testing.assert_allclose(probabilities, reference_distribution(row, temperature, top_k, top_p), atol=1e-6)


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.0, 2, 1.0), (1.3, 0, 0.6),
                                                     (0.8, 3, 0.9)])
def test_keeping_background_reshapes_only_the_other_codes(temperature, top_k, top_p):
    logits = np.random.default_rng(7).normal(0, 2, (5, 12)).astype("float32")
    background = np.zeros(12, bool)
    background[[0, 7]] = True
    filtered = filter_logits(tf.constant(logits), temperature, top_k, top_p, tf.constant(background))
    for row, drawn_with in zip(logits, tf.nn.softmax(filtered, axis=-1).numpy()):
        prior = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        expected = np.where(background, prior, 0.0)
        expected[~background] = reference_distribution(row[~background], temperature, top_k, top_p) * (
            1 - prior[background].sum())
        np.testing.assert_allclose(drawn_with, expected, atol=1e-6)


def test_with_no_background_code_marked_or_nothing_reshaped_the_filter_is_the_plain_one_bit_for_bit():
    logits = tf.constant(np.random.default_rng(8).normal(0, 2, (5, 12)).astype("float32"))
    np.testing.assert_array_equal(filter_logits(logits, 0.7, 3, 0.9, tf.zeros(12, tf.bool)).numpy(),
                                  filter_logits(logits, 0.7, 3, 0.9).numpy())
    marked = tf.constant(np.arange(12) < 4)
    np.testing.assert_array_equal(filter_logits(logits, 1.0, 0, 1.0, marked).numpy(),
                                  filter_logits(logits, 1.0, 0, 1.0).numpy())


def test_a_cold_sampler_keeping_background_draws_background_or_the_likeliest_other_code():
    model = tiny_prior(attention_layers=1)
    background = np.arange(model.num_codes) < 3
    codes = tf.function(lambda: model.sample(4, temperature=1e-7, seed=3, background=tf.constant(background)))()
    codes = codes.numpy()
    logits = model(tf.constant(codes)).numpy()  # teacher forcing: what each position was drawn from
    likeliest_other = np.where(background, -np.inf, logits).argmax(-1)
    assert (background[codes] | (codes == likeliest_other)).all()
    assert background[codes].any() and not background[codes].all()  # background still drawn by chance


def test_sampling_with_top_k_1_is_greedy_decoding():
    model = tiny_prior(attention_layers=1)
    greedy = tf.function(lambda: model.sample(2, temperature=1e-7, seed=3))().numpy()
    top_1 = tf.function(lambda: model.sample(2, temperature=1.0, seed=5, top_k=1))().numpy()
    np.testing.assert_array_equal(top_1, greedy)
