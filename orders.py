"""The eight scan orders of a square code grid: the symmetries of the square (four rotations, each with and
without a transpose).

A raster-order prior judges each code only by the codes before it, so the top-left of anything unusual is
judged blind. A prior trained on code grids turned by all eight symmetries, each with its order as a
condition (`prior.GatedPixelCNN(scan_orders=8)`), reads one grid in eight orders: turn the grid by order k,
score or heal it in raster order, and turn the result back. Order 0 is the grid as it is, and the only order
that sampling uses.
"""

import tensorflow as tf

ORDERS = 8


def orient(grids, order):
    """`grids` [N, G, G] (or [N, G, G, C]) turned by the symmetry `order` (0..7, an int or an int32 [N], one
    per grid): rotated by 90 degrees (order mod 4) times, then transposed if order >= 4."""
    return _per_grid(grids, order, _orient_all)


def unorient(grids, order):
    """The inverse of `orient`: unorient(orient(g, k), k) == g."""
    return _per_grid(grids, order, _unorient_all)


def _orient_all(grids, order):
    turned = tf.image.rot90(grids, order % 4)
    return tf.transpose(turned, (0, 2, 1, 3)) if order >= 4 else turned


def _unorient_all(grids, order):
    straight = tf.transpose(grids, (0, 2, 1, 3)) if order >= 4 else grids
    return tf.image.rot90(straight, (4 - order % 4) % 4)


def _per_grid(grids, order, turn):
    """Each grid turned by its own order: all eight turns of the batch, then each grid's pick (one turn when
    `order` is a Python int)."""
    grids = tf.convert_to_tensor(grids)
    channels = grids.shape.rank == 4
    stacked = grids if channels else grids[..., None]
    if isinstance(order, int):  # one known order: turn the batch once
        turned = turn(stacked, order)
    else:
        order = tf.broadcast_to(tf.cast(order, tf.int32), tf.shape(stacked)[:1])
        every = tf.stack([turn(stacked, k) for k in range(ORDERS)], axis=1)  # [N, 8, G, G, C]
        turned = tf.gather(every, order, batch_dims=1)
    return turned if channels else turned[..., 0]


def random_orders(count, seed, orders=ORDERS):
    """int32 [count] of the first `orders` orders, drawn uniformly from the stateless `seed` (a pair of ints)."""
    return tf.random.stateless_uniform([count], seed, 0, orders, dtype=tf.int32)
