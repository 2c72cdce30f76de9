"""The prior over code grids: a gated PixelCNN with row-causal attention, conditioning on a top level's codes,
and its cached sampler.

`GatedPixelCNN` models p(codes) = prod_p p(code_p | the codes before p in raster order[, class label]) over
the VQ-VAE's code grids (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders").
`GatedPixelCNN.sample` draws grids with constant work per position, and `initial_state` / `step` run the
same network one position at a time for the codec. Each draw comes from `sampling.filter_logits` (temperature,
top-k, top-p, and keeping the background's probability); `log_likelihood` and `bits_per_code` score codes under
the prior's logits.
"""

import math

import keras
import tensorflow as tf
import tensorflow_probability as tfp
from keras import layers, ops

from attention import RowCausalAttention
from modules import PACKAGE, ArgumentsAsConfig
from sampling import draw


def _gate(features):
    """tanh(a) * sigmoid(b) of the two halves of the channels."""
    a, b = ops.split(features, 2, axis=-1)
    return ops.tanh(a) * ops.sigmoid(b)


def _shift_down(features):
    """Row i gets row i-1 (zeros in row 0): what a position may see of the vertical stack."""
    return ops.pad(features, [[0, 0], [1, 0], [0, 0], [0, 0]])[:, :-1]


def _shift_right(features):
    """Column j gets column j-1 (zeros in column 0): the first layer must not see the current position."""
    return ops.pad(features, [[0, 0], [0, 0], [1, 0], [0, 0]])[:, :, :-1]


@keras.saving.register_keras_serializable(package=PACKAGE)
class GatedPixelCNNBlock(ArgumentsAsConfig, layers.Layer):
    """One gated layer with a vertical stack (rows above) and a horizontal stack (the row to the left).

    The vertical stack at row i sees rows <= i; it reaches the horizontal stack only shifted one row down,
    through a 1x1 convolution, so position (i, j) sees rows < i. The horizontal stack sees columns <= j of
    its own features; the first block shifts its input right so that it sees columns < j (mask A), later
    blocks include j (mask B). Both stacks use 2x3 and 1x2 kernels dilated by `dilation`, so blocks with
    dilations 1, 2, 4, ... cover a wide grid without a blind spot. Causality comes from padding and kernel
    shapes, not from masking weights. A class embedding is added inside both gates when `num_classes` > 0.
    `dropout` drops that fraction of the horizontal stack's gated features in training, before its output
    convolution (the residual branch, as in PixelCNN++); sampling never drops. A `conditioned` block adds a
    1x1 convolution of a conditioning map [N, G, G, channels] inside both gates too (the top level's codes of a
    hierarchical model, at the same position: the map is given whole, not drawn, so it cannot break causality).
    """

    def __init__(self, channels, dilation=1, first=False, num_classes=0, dropout=0.0, conditioned=False, **kwargs):
        super().__init__(**kwargs)
        self.keep(channels=channels, dilation=dilation, first=first, num_classes=num_classes, dropout=dropout,
                  conditioned=conditioned)
        self.horizontal_dropout = layers.Dropout(dropout, name="horizontal_dropout")
        d = dilation
        self.vertical_conv = layers.Conv2D(2 * channels, (2, 3), dilation_rate=(d, d), name="vertical")
        self.horizontal_conv = layers.Conv2D(2 * channels, (1, 2), dilation_rate=(1, d), name="horizontal")
        self.vertical_to_horizontal = layers.Conv2D(2 * channels, 1, name="vertical_to_horizontal")
        self.horizontal_out = layers.Conv2D(channels, 1, name="horizontal_out")
        if num_classes:
            self.vertical_class = layers.Embedding(num_classes, 2 * channels, name="vertical_class")
            self.horizontal_class = layers.Embedding(num_classes, 2 * channels, name="horizontal_class")
        if conditioned:
            self.vertical_condition = layers.Conv2D(2 * channels, 1, name="vertical_condition")
            self.horizontal_condition = layers.Conv2D(2 * channels, 1, name="horizontal_condition")

    def build(self, input_shape):
        shape = (None, None, None, self.channels)
        self.vertical_conv.build(shape)
        self.horizontal_conv.build(shape)
        self.vertical_to_horizontal.build((None, None, None, 2 * self.channels))
        self.horizontal_out.build(shape)
        if self.num_classes:
            self.vertical_class.build((None,))
            self.horizontal_class.build((None,))
        if self.conditioned:
            self.vertical_condition.build(shape)
            self.horizontal_condition.build(shape)

    def vertical(self, v, labels=None, condition=None):
        """(next vertical features, the link to the horizontal stack for the same rows, unshifted); `condition`:
        the conditioning map's same rows."""
        d = self.dilation
        pre = self.vertical_conv(ops.pad(v, [[0, 0], [d, 0], [d, d], [0, 0]]))
        return self._vertical_outputs(pre, labels, condition)

    def vertical_step(self, above, here, labels=None, condition=None):
        """`vertical` for one row i only, from the block's vertical inputs at rows i - d (`above`) and i
        (`here`), [N, 1, G, C] each (and the conditioning map's row i). Constant work per row, for the cached
        sampler."""
        d = self.dilation
        skipped = ops.zeros_like(ops.repeat(above, d - 1, axis=1))  # rows i - d + 1 .. i - 1: not read
        window = ops.concatenate([above, skipped, here], axis=1)
        pre = self.vertical_conv(ops.pad(window, [[0, 0], [0, 0], [d, d], [0, 0]]))
        return self._vertical_outputs(pre, labels, condition)

    def _vertical_outputs(self, pre, labels, condition):
        pre = self._conditioned(pre, labels, condition, self.vertical_class if self.num_classes else None,
                                self.vertical_condition if self.conditioned else None)
        return _gate(pre), self.vertical_to_horizontal(pre)

    def _conditioned(self, pre, labels, condition, class_embedding, condition_conv):
        if class_embedding is not None:
            pre = pre + ops.cast(class_embedding(labels), pre.dtype)[:, None, None, :]
        if condition_conv is not None:
            pre = pre + ops.cast(condition_conv(condition), pre.dtype)
        return pre

    def horizontal(self, h, link, labels=None, condition=None):
        """The next horizontal features, given the shifted link from the vertical stack (and the conditioning
        map's same rows)."""
        source = _shift_right(h) if self.first else h
        pre = self.horizontal_conv(ops.pad(source, [[0, 0], [0, 0], [self.dilation, 0], [0, 0]])) + link
        return self._horizontal_outputs(pre, h, labels, condition)

    def horizontal_step(self, left, here, link, labels=None, condition=None):
        """`horizontal` at one position (i, j) only, from what its convolution sees there: `left` and `here`
        [N, 1, 1, C], the block's (for the first block, shifted) inputs at columns j - d and j, `link`
        [N, 1, 1, 2C], the shifted link at (i, j), and the conditioning map at (i, j). Returns [N, 1, 1, C];
        constant work per position."""
        kernel = ops.cast(self.horizontal_conv.kernel, here.dtype)
        pre = left @ kernel[0, 0] + here @ kernel[0, 1] + ops.cast(self.horizontal_conv.bias, here.dtype) + link
        return self._horizontal_outputs(pre, here, labels, condition)

    def _horizontal_outputs(self, pre, h, labels, condition):
        pre = self._conditioned(pre, labels, condition, self.horizontal_class if self.num_classes else None,
                                self.horizontal_condition if self.conditioned else None)
        out = self.horizontal_out(self.horizontal_dropout(_gate(pre)))
        return out if self.first else h + out

    def call(self, v, h, labels=None, condition=None):
        v_next, link = self.vertical(v, labels, condition)
        return v_next, self.horizontal(h, _shift_down(link), labels, condition)


@keras.saving.register_keras_serializable(package=PACKAGE)
class GatedPixelCNN(ArgumentsAsConfig, keras.Model):
    """Autoregressive prior p(codes) = prod_p p(code_p | codes before p in raster order[, class label]).

    Input: int code grids [N, G, G] (and int labels [N] when `num_classes` > 0); output: logits
    [N, G, G, num_codes]. Block dilations cycle through 1, 2, 4, ... up to half the grid, so the receptive
    field of every position covers all positions before it once there are at least log2(G) blocks.
    `attention_layers` > 0 puts that many `RowCausalAttention` layers into the vertical stack, evenly spaced,
    each over tokens of `attention_pool` columns. `dropout` is each block's (training only).

    With `condition_grid` T > 0 it is the bottom prior of a hierarchical VQ-VAE: p(codes | top codes), the top
    codes an int grid [N, T, T] of `condition_codes` codes given whole. They are embedded, passed through
    3x3 convolutions dilated 1, 2, ..., T/2 (so every top position reaches every other) and upsampled to the
    grid, and every block adds that map inside its gates. Inputs are then (codes, top codes[, labels]).

    With `scan_orders` N > 1 it is trained on grids turned by the first N symmetries of the square
    (`orders.orient`), its order a condition: the class embedding then has a row per (order, class), and the
    labels that `call` takes are `network_labels`. Order 0 is the grid as it is; sampling draws in it.
    """

    def __init__(self, num_codes=256, grid_size=32, channels=64, num_layers=10, num_classes=0, attention_layers=0,
                 attention_pool=1, dropout=0.0, condition_grid=0, condition_codes=0, scan_orders=1, **kwargs):
        super().__init__(**kwargs)
        self.keep(num_codes=num_codes, grid_size=grid_size, channels=channels, num_layers=num_layers,
                  num_classes=num_classes, attention_layers=attention_layers, attention_pool=attention_pool,
                  dropout=dropout, condition_grid=condition_grid, condition_codes=condition_codes,
                  scan_orders=scan_orders)
        cycle = max(1, math.ceil(math.log2(grid_size)))
        self.embedding = layers.Embedding(num_codes, channels, name="code_embedding")
        self.blocks = [GatedPixelCNNBlock(channels, dilation=2 ** (i % cycle), first=i == 0,
                                          num_classes=self.label_count, dropout=dropout, conditioned=self.conditioned,
                                          name=f"gated_block{i + 1}")
                       for i in range(num_layers)]
        if self.conditioned:
            self.condition_net = _condition_net(condition_codes, condition_grid, grid_size, channels)
        # Before which blocks: the last block's vertical output reaches nothing, so attention goes earlier.
        self.attention_before = [round((k + 1) * num_layers / (attention_layers + 1)) for k in range(attention_layers)]
        self.attentions = [RowCausalAttention(channels, grid_size, pool=attention_pool, name=f"attention{k + 1}")
                           for k in range(attention_layers)]
        self.head_hidden = layers.Conv2D(channels, 1, activation="relu", name="head_hidden")
        self.head_logits = layers.Conv2D(num_codes, 1, name="head_logits", dtype="float32")
        self.embedding.build((None,))
        for layer in self.blocks + self.attentions:
            layer.build((None, None, None, channels))
        self.head_hidden.build((None, None, None, channels))
        self.head_logits.build((None, None, None, channels))
        self.built = True

    @property
    def conditioned(self):
        """Whether this prior is conditioned on a top level's codes (the bottom prior of a hierarchy)."""
        return bool(self.condition_grid)

    @property
    def label_count(self):
        """How many labels the network tells apart: (scan order, class) pairs, or classes (0: none)."""
        return max(self.num_classes, 1) * self.scan_orders if self.scan_orders > 1 else self.num_classes

    def network_labels(self, labels, order, count):
        """The labels the network reads [count] (None if none): order * classes + class, of the class
        `labels` [count] (None: class 0) and the scan `order` (an int or [count])."""
        if not self.label_count:
            return None
        labels = tf.zeros((count,), tf.int32) if labels is None or not self.num_classes else tf.cast(labels, tf.int32)
        return labels + tf.cast(order, tf.int32) * max(self.num_classes, 1) if self.scan_orders > 1 else labels

    def _split(self, inputs):
        """(codes, labels or None, top codes or None) of `codes` or (codes[, top codes][, labels])."""
        parts = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        if len(parts) == 2 and not self.conditioned and not self.label_count:
            parts = parts[:1]  # labels given to a prior that is not class-conditional: ignored
        if len(parts) != 1 + self.conditioned + bool(self.label_count):
            expected = ", ".join(["codes", *(["top codes"] if self.conditioned else []),
                                  *(["labels"] if self.label_count else [])])
            raise ValueError(f"this prior takes ({expected})")
        return parts[0], (parts[-1] if self.label_count else None), (parts[1] if self.conditioned else None)

    def condition_map(self, top):
        """The conditioning map [N, G, G, channels] of top codes [N, T, T] (None for a prior without them)."""
        return ops.cast(self.condition_net(top), self.embedding.compute_dtype) if self.conditioned else None

    def vertical_links(self, embedded, labels=None, condition=None):
        """For each block, what the vertical stack passes to the horizontal stack, already shifted: rows < i.

        `embedded` is `self.embedding(codes)`, [N, G, G, channels]; `condition` the `condition_map`.
        """
        v = embedded
        links = []
        attentions = dict(zip(self.attention_before, self.attentions))
        for index, block in enumerate(self.blocks):
            if index in attentions:
                v = attentions[index](v)
            v, link = block.vertical(v, labels, condition)
            links.append(_shift_down(link))
        return links

    def horizontal_logits(self, embedded, links, labels=None, condition=None):
        """Logits for the rows of `embedded` given the matching rows of `vertical_links` (any row subset) and
        of the `condition_map`."""
        h = embedded
        for block, link in zip(self.blocks, links):
            h = block.horizontal(h, link, labels, condition)
        return self.head_logits(self.head_hidden(ops.relu(h)))

    def call(self, inputs, training=None):
        # `training` is taken so that fit() passes training=True, which the blocks' dropout reads.
        codes, labels, top = self._split(inputs)
        embedded = self.embedding(codes)
        condition = self.condition_map(top)
        return self.horizontal_logits(embedded, self.vertical_links(embedded, labels, condition), labels, condition)

    def inputs_of(self, codes, labels=None, top=None, order=0):
        """What `call` takes for `codes` in scan `order`, given the class labels and top codes, each ignored
        where not used (`codes` and `top` already turned by `order`)."""
        labels = self.network_labels(labels, order, tf.shape(codes)[0])
        extras = ([top] if self.conditioned else []) + ([labels] if self.label_count else [])
        return (codes, *extras) if extras else codes

    def logits(self, codes, labels=None, top=None, order=0):
        """`call` with the labels, top codes and scan order as arguments of their own, ignored by a prior that
        does not use them."""
        return self(self.inputs_of(codes, labels, top, order))

    def log_prob(self, codes, labels=None, top=None):
        """The natural-log likelihood of each code grid [N]: the sum over positions of `log_likelihood`."""
        return tf.reduce_sum(log_likelihood(codes, self.logits(codes, labels, top)), axis=[1, 2])

    def sample(self, n, labels=None, temperature=1.0, seed=0, cached=True, top_k=0, top_p=1.0, background=None,
               top=None):
        """Draw `n` code grids by ancestral sampling in raster order; int32 [n, G, G].

        Each code is drawn from `filter_logits(logits, temperature, top_k, top_p, background)`: the defaults
        draw from the prior itself. `cached` keeps each block's caches (`logits_at`, `record`, `finish_row`):
        constant work per position; otherwise every position recomputes the whole network (the reference the
        cached sampler is tested against). Both draw the same codes for the same seed, since position p draws
        with the stateless seed (seed, p). Wrap in tf.function (jit_compile=True works) to compile. A
        conditioned prior draws given `top` codes [n, T, T].
        """
        g = self.grid_size
        labels = ops.cast(labels, "int32") if self.num_classes else None
        if not cached:
            return self._sample_by_full_passes(n, labels, temperature, seed, top_k, top_p, background, top)
        return self.scan(n, lambda logits, i, j: draw(logits, i * g + j, temperature, top_k, top_p, background, seed),
                         labels, top)

    def scan(self, n, choose, labels=None, top=None, order=0):
        """`n` code grids [n, G, G] made in raster order by the cached prior: the code at (i, j) is
        `choose(logits [n, K], i, j)`, given the prior's logits there for the codes chosen before it. (The
        grids are in scan `order`, and so must the top codes be.)"""
        g = self.grid_size
        rows = tf.TensorArray(tf.int32, size=g)
        state = {"labels": self._state_labels(labels, order, n), "row": tf.zeros((n, g), tf.int32),
                 **self._condition_state(top), **self._empty_caches(n)}
        for i in tf.range(g):
            for j in tf.range(g):
                state, logits = self.logits_at(state, i, j)
                state = self.record(state, j, choose(logits, i, j))
            rows = rows.write(i, state["row"])
            state = self.finish_row(state, i)
        return tf.transpose(rows.stack(), (1, 0, 2))

    def _state_labels(self, labels, order, n):
        labels = self.network_labels(labels, order, n)
        return tf.zeros((n,), tf.int32) if labels is None else labels

    def _sample_by_full_passes(self, n, labels, temperature, seed, top_k, top_p, background, top):
        g = self.grid_size
        codes = tf.zeros((n, g * g), tf.int32)
        for position in tf.range(g * g):
            grid = ops.reshape(codes, (n, g, g))
            logits = ops.reshape(self.call(self.inputs_of(grid, labels, top)), (n, g * g, -1))
            drawn = draw(ops.take(logits, position, axis=1), position, temperature, top_k, top_p, background,
                          seed)
            codes = codes + drawn[:, None] * tf.one_hot(position, g * g, dtype=tf.int32)
        return ops.reshape(codes, (n, g, g))

    # The cached prior (Ramachandran et al. 2017, "Fast Generation for Convolutional Autoregressive Models"):
    # a block's convolutions read its inputs only d rows above and d columns to the left, so each block keeps
    # its last d rows (vertical stack) and its last d positions of the current row (horizontal stack) in ring
    # buffers, slot = index mod d. When a row is complete the vertical stack computes that row alone; at each
    # position the horizontal stack computes that position alone: constant work per position. Caches are
    # laid out slot-first, so an update writes one slice, and shapes are static but for the batch.

    def initial_state(self, n, labels=None, top=None, order=0):
        """What `step` starts from for `n` code grids: a flat dict (a SavedModel signature can carry it) of
        the class `labels` (int32 [n]) of a conditional prior, the current row's codes, every cache packed
        into one tensor [n, ...] (few tensors keep the cost of each call low) and, for a conditioned prior, the
        `condition_map` of the `top` codes."""
        return {"labels": self._state_labels(labels, order, n),
                "row": tf.zeros((n, self.grid_size), tf.int32), **self._condition_state(top),
                "caches": self._pack(self._empty_caches(n))}

    def _condition_state(self, top):
        return {"condition": self.condition_map(top)} if self.conditioned else {}

    def step(self, state, position, previous):
        """(the state for `position` + 1, the logits [n, K] at `position`), given the state for `position`
        (raster order) and the code at `position` - 1 (`previous`, int32 [n]; ignored at position 0).
        Starting from `initial_state` and feeding each position's code back gives `call`'s logits."""
        g = self.grid_size
        position = tf.cast(position, tf.int32)
        i, j = position // g, position % g
        fixed = {name: state[name] for name in ("labels", "condition") if name in state}
        state = {**fixed, "row": state["row"], **self._unpack(state["caches"])}
        state = tf.cond(position > 0, lambda: self.record(state, (position - 1) % g, previous), lambda: state)
        state = tf.cond(tf.logical_and(position > 0, j == 0), lambda: self.finish_row(state, i - 1),
                        lambda: state)
        state, logits = self.logits_at(state, i, j)
        caches = self._pack({name: state[name] for name in self._cache_shapes()})
        return {**fixed, "row": state["row"], "caches": caches}, logits

    def _cache_shapes(self):
        """Each cache's shape but for the batch axis, which is axis 1 (after the slot): name -> shape."""
        g, c = self.grid_size, self.channels
        shapes = {}
        for b, block in enumerate(self.blocks):
            shapes[f"vertical{b}"] = (block.dilation, g, c)
            shapes[f"link{b}"] = (1, g, 2 * c)
            shapes[f"horizontal{b}"] = (block.dilation, c)
        for k in range(len(self.attentions)):
            shapes[f"attention{k}"] = (g, g, c)
        return shapes

    def _empty_caches(self, n):
        return {name: tf.zeros((shape[0], n, *shape[1:]), self.embedding.compute_dtype)
                for name, shape in self._cache_shapes().items()}

    def _pack(self, caches):
        n = ops.shape(caches["link0"])[1]
        return ops.concatenate([ops.reshape(ops.moveaxis(caches[name], 1, 0), (n, -1))
                                for name in self._cache_shapes()], axis=1)

    def _unpack(self, packed):
        shapes = self._cache_shapes()
        parts = tf.split(packed, [math.prod(shape) for shape in shapes.values()], axis=1)
        return {name: ops.moveaxis(ops.reshape(part, (-1, *shape)), 0, 1)
                for (name, shape), part in zip(shapes.items(), parts)}

    def record(self, state, j, code):
        """The caches once the code at column j of the current row is known."""
        column = tf.one_hot(j, self.grid_size, dtype=tf.int32)
        return {**state, "row": state["row"] * (1 - column) + code[:, None] * column}

    def logits_at(self, state, i, j):
        """(caches, logits [n, K]) at column j of the current row i, whose columns before j are recorded."""
        labels = state["labels"] if self.label_count else None
        condition = None
        if self.conditioned:
            condition = ops.take(ops.take(state["condition"], ops.reshape(i, (1,)), axis=1), ops.reshape(j, (1,)),
                                 axis=2)
        row = state["row"]
        # The first block sees the code to the left (zeros at column 0); later blocks add to their input.
        left_code = ops.take(row, ops.reshape(ops.maximum(j - 1, 0), (1,)), axis=1)[:, 0]
        h = (self.embedding(left_code) * ops.cast(j > 0, self.embedding.compute_dtype))[:, None, None, :]
        state = dict(state)
        for b, block in enumerate(self.blocks):
            slot = [[j % block.dilation]]
            left = tf.gather_nd(state[f"horizontal{b}"], slot)[0] * ops.cast(j >= block.dilation, h.dtype)
            state[f"horizontal{b}"] = tf.tensor_scatter_nd_update(state[f"horizontal{b}"], slot, h[None, :, 0, 0])
            link = ops.take(state[f"link{b}"][0], ops.reshape(j, (1,)), axis=1)[:, :, None]
            h = block.horizontal_step(left[:, None, None, :], h, link, labels, condition)
        return state, self.head_logits(self.head_hidden(ops.relu(h)))[:, 0, 0]

    def finish_row(self, state, i):
        """The caches once row i's codes are recorded: each block's vertical input at row i, and its link,
        which the horizontal stack reads on row i + 1."""
        labels = state["labels"] if self.label_count else None
        condition = ops.take(state["condition"], ops.reshape(i, (1,)), axis=1) if self.conditioned else None
        v = self.embedding(state["row"])[:, None]
        state = dict(state)
        before = dict(zip(self.attention_before, range(len(self.attentions))))
        for b, block in enumerate(self.blocks):
            if b in before:
                k = before[b]
                rows = tf.tensor_scatter_nd_update(state[f"attention{k}"], [[i]], tf.transpose(v, (1, 0, 2, 3)))
                state[f"attention{k}"] = rows
                v = self.attentions[k].row_step(tf.transpose(rows, (1, 0, 2, 3)), i)
            slot = [[i % block.dilation]]
            above = tf.gather_nd(state[f"vertical{b}"], slot) * ops.cast(i >= block.dilation, v.dtype)
            state[f"vertical{b}"] = tf.tensor_scatter_nd_update(state[f"vertical{b}"], slot,
                                                                tf.transpose(v, (1, 0, 2, 3)))
            v, link = block.vertical_step(tf.transpose(above, (1, 0, 2, 3)), v, labels, condition)
            state[f"link{b}"] = tf.transpose(link, (1, 0, 2, 3))
        return state


def _condition_net(condition_codes, condition_grid, grid_size, channels):
    """Top codes [N, T, T] -> a map [N, G, G, channels]: an embedding, 3x3 convolutions dilated 1, 2, ..., T/2
    (a receptive field of 2T - 1: the whole top grid at every position), upsampled to G, one 3x3 convolution."""
    top = keras.Input((condition_grid, condition_grid), dtype="int32", name="top_codes")
    x = layers.Embedding(condition_codes, channels, name="top_embedding")(top)
    for k in range(max(1, math.ceil(math.log2(condition_grid)))):
        x = layers.Conv2D(channels, 3, padding="same", dilation_rate=2 ** k, activation="relu",
                          name=f"top_conv{k + 1}")(x)
    x = layers.UpSampling2D(grid_size // condition_grid, name="to_bottom_grid")(x)
    x = layers.Conv2D(channels, 3, padding="same", activation="relu", name="bottom_conv")(x)
    return keras.Model(top, x, name="condition_net")


def log_likelihood(codes, logits):
    """The natural-log probability of each code [...] under the categorical distribution of its logits [..., K]."""
    return tfp.distributions.Categorical(logits=logits).log_prob(codes)


@keras.saving.register_keras_serializable(package=PACKAGE)
def bits_per_code(codes, logits):
    """Negative log-likelihood of each code under the prior's logits, in bits."""
    return -log_likelihood(codes, logits) / math.log(2.0)
