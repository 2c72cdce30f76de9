"""Scan orders and healing: the eight symmetries against numpy, each order's causality, per-position
likelihoods against log_prob, healing against a greedy decode by full passes, and the anomaly maps' edges."""

import numpy as np
import pytest
import tensorflow as tf

import healing
import orders
from conftest import TINY_GRID as GRID, TINY_TOP_GRID as TOP_GRID, tiny_prior
from hierarchy import HierarchicalPrior
from prior import GatedPixelCNN
from train import turned_by_random_orders


def numpy_orient(grid, order):
    turned = np.rot90(grid, order % 4, axes=(-2, -1))
    return np.swapaxes(turned, -2, -1) if order >= 4 else turned


def random_codes(count, num_codes=6, grid=GRID, seed=0):
    return tf.constant(np.random.default_rng(seed).integers(0, num_codes, (count, grid, grid)), tf.int32)


def test_the_eight_orders_are_the_symmetries_of_the_square_and_unorient_undoes_them():
    grids = np.arange(3 * 5 * 5).reshape(3, 5, 5)
    seen = set()
    for order in range(orders.ORDERS):
        turned = orders.orient(grids, order).numpy()
        np.testing.assert_array_equal(turned, numpy_orient(grids, order))
        np.testing.assert_array_equal(orders.unorient(turned, order).numpy(), grids)
        seen.add(turned[0].tobytes())
    assert len(seen) == orders.ORDERS
    mixed = orders.orient(grids, tf.constant([1, 6, 3])).numpy()
    for k, order in enumerate([1, 6, 3]):
        np.testing.assert_array_equal(mixed[k], numpy_orient(grids[k], order))


@pytest.mark.parametrize("order", [0, 2, 5, 7])
def test_each_order_judges_a_code_only_by_the_codes_before_it_in_that_order(order):
    prior = tiny_prior(num_classes=2, scan_orders=8, attention_layers=1)
    codes, labels = random_codes(1).numpy(), tf.constant([1])
    base = healing.code_log_likelihoods(prior, tf.constant(codes), labels, order=order).numpy()[0]
    rank = numpy_orient(np.arange(GRID * GRID).reshape(GRID, GRID), order)  # the raster index in the turned grid
    rank = np.argsort(rank.reshape(-1)).reshape(GRID, GRID)  # each position's place in the scan
    for q in [(0, 0), (3, 5), (7, 2)]:
        changed = codes.copy()
        changed[0][q] = (changed[0][q] + 1) % 6
        after = healing.code_log_likelihoods(prior, tf.constant(changed), labels, order=order).numpy()[0]
        moved = ~np.isclose(after, base, atol=1e-6)
        assert not moved[rank < rank[q]].any(), "a code is judged by a later one"
        assert moved[rank > rank[q]].any() or rank[q] == GRID * GRID - 1


def test_per_position_log_likelihoods_sum_to_log_prob():
    prior = tiny_prior(num_classes=2)
    codes, labels = random_codes(3), tf.constant([0, 1, 1])
    per_position = healing.code_log_likelihoods(prior, codes, labels)
    np.testing.assert_allclose(tf.reduce_sum(per_position, [1, 2]), prior.log_prob(codes, labels), rtol=1e-5)
    # Each order is a distribution over grids of its own: its sum is the log-likelihood in that order.
    other = tiny_prior(scan_orders=8)
    turned = orders.orient(codes, 6)
    np.testing.assert_allclose(tf.reduce_sum(healing.code_log_likelihoods(other, codes, order=6), [1, 2]),
                               tf.reduce_sum(prior_log_likelihoods(other, turned, 6), [1, 2]), rtol=1e-5)


def prior_log_likelihoods(prior, turned, order):
    logits = prior.logits(turned, order=order).numpy()
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return np.take_along_axis(log_probs, turned.numpy()[..., None], -1)[..., 0]


def test_a_threshold_below_every_likelihood_changes_nothing():
    prior = tiny_prior(scan_orders=8)
    codes = random_codes(4)
    healed = healing.heal_codes(prior, codes, tf.math.log(1e-30), 0, order=tf.constant([0, 1, 4, 7]))
    np.testing.assert_array_equal(healed, codes)


@pytest.mark.parametrize("order", [0, 3])
def test_healing_with_threshold_one_is_the_greedy_decode_by_full_passes(order):
    prior = tiny_prior(num_classes=2, scan_orders=8)
    codes, labels = random_codes(2), tf.constant([1, 0])
    healed = healing.heal_codes(prior, codes, tf.math.log(1.0), 0, labels, order=order)
    turned = orders.orient(codes, order).numpy()
    for position in range(GRID * GRID):  # every code replaced by the most likely one given those before
        logits = prior.logits(tf.constant(turned), labels, order=order).numpy().reshape(2, GRID * GRID, -1)
        turned.reshape(2, -1)[:, position] = logits[:, position].argmax(-1)
    np.testing.assert_array_equal(healed, orders.unorient(turned, order))


def test_a_code_the_prior_finds_impossible_is_replaced_and_only_it():
    prior = tiny_prior()
    bias = prior.head_logits.bias.numpy()
    bias[5] = -1e4  # code 5 is (nearly) impossible everywhere
    prior.head_logits.bias.assign(bias)
    codes = random_codes(2, num_codes=5).numpy()
    codes[1, 4, 3] = 5
    healed = healing.heal_codes(prior, tf.constant(codes), tf.math.log(1e-6), 0).numpy()
    assert healed[1, 4, 3] != 5
    healed[1, 4, 3] = 5
    np.testing.assert_array_equal(healed, codes)


def test_a_hierarchy_heals_the_top_then_the_bottom_given_the_healed_top():
    top_prior = GatedPixelCNN(num_codes=5, grid_size=TOP_GRID, channels=8, num_layers=2)
    for weight in top_prior.weights:
        weight.assign(tf.random.normal(weight.shape, stddev=0.5, seed=4))
    bottom_prior = tiny_prior(seed=2, conditioned=True)
    prior = HierarchicalPrior(top_prior, bottom_prior)
    top = tf.constant(np.random.default_rng(3).integers(0, 5, (2, TOP_GRID, TOP_GRID)), tf.int32)
    bottom = random_codes(2)
    kept = healing.heal_levels(prior, (top, bottom), tf.math.log(1e-30), 0)
    np.testing.assert_array_equal(kept[0], top)
    np.testing.assert_array_equal(kept[1], bottom)
    greedy = healing.heal_levels(prior, (top, bottom), tf.math.log(1.0), 0)
    np.testing.assert_array_equal(greedy[1], healing.heal_codes(bottom_prior, bottom, tf.math.log(1.0), 0,
                                                                top=greedy[0]))


def test_training_pairs_are_turned_by_the_order_their_label_names():
    prior = tiny_prior(num_classes=2, scan_orders=8)
    turn = turned_by_random_orders(prior)
    codes, labels = random_codes(1)[0], tf.constant(1)
    seen = set()
    for index in range(80):
        (turned, network_label), target = turn(((codes, labels), codes), [7, index])
        order, label = divmod(int(network_label), 2)
        assert label == 1
        np.testing.assert_array_equal(turned, numpy_orient(codes.numpy(), order))
        np.testing.assert_array_equal(target, turned)
        seen.add(order)
    assert seen == set(range(8))
    assert turned_by_random_orders(tiny_prior()) is None
    rotations = turned_by_random_orders(tiny_prior(scan_orders=4))
    drawn = {int(rotations(((codes, tf.constant(0)), codes), [7, index])[0][-1]) for index in range(80)}
    assert drawn == {0, 1, 2, 3}, "a prior of 4 orders learns the first 4, the rotations"
