"""Row-causal self-attention for the prior's vertical stack: global structure without breaking the raster
order's causality."""

import keras
from keras import layers, ops

from modules import PACKAGE, ArgumentsAsConfig


@keras.saving.register_keras_serializable(package=PACKAGE)
class RowCausalAttention(ArgumentsAsConfig, layers.Layer):
    """Self-attention inside the vertical stack, for global structure (as in PixelSNAIL, Chen et al. 2018):
    each position attends to every position in its own row and the rows above, with a learnt position
    embedding, added back to the features (pre-norm residual).

    The vertical stack may see rows <= i at row i (the link to the horizontal stack is shifted one row down),
    so masking by row keeps the prior causal, and the row-cached sampler runs it on the rows so far. For the
    same reason `pool` columns of a row may be averaged into one token, queries and keys alike, and the
    token's output given back to each of its columns: attention then costs about `pool`^2 times less, while
    the convolutions keep the detail within a row. (The last token of a row averages fewer columns when `pool`
    does not divide the grid.)
    """

    def __init__(self, channels, grid_size, heads=2, pool=1, **kwargs):
        super().__init__(**kwargs)
        if pool < 1:
            raise ValueError(f"pool {pool}: expected a positive number of columns")
        self.keep(channels=channels, grid_size=grid_size, heads=heads, pool=pool)
        self.tokens_per_row = -(-grid_size // pool)
        self.norm = layers.LayerNormalization(name="norm")
        self.attention = layers.MultiHeadAttention(heads, key_dim=max(1, channels // heads), name="attention")

    def build(self, input_shape):
        g, c = self.grid_size, self.channels
        self.position = self.add_weight(shape=(g, g, c), initializer=keras.initializers.RandomNormal(stddev=0.02),
                                        name="position")
        self.norm.build((None, None, None, c))
        self.attention.build((None, None, c), (None, None, c))

    def call(self, v):
        n, rows, tokens = ops.shape(v)[0], ops.shape(v)[1], self.tokens_per_row
        flat = ops.reshape(self._tokens(v), (n, rows * tokens, self.channels))
        row_of = ops.arange(rows * tokens) // tokens
        visible = ops.broadcast_to(row_of[None, :, None] >= row_of[None, None, :], (n, rows * tokens, rows * tokens))
        attended = self.attention(flat, flat, attention_mask=visible)
        return v + self._to_columns(ops.reshape(attended, (n, rows, tokens, self.channels)))

    def row_step(self, v, i):
        """`call` for row i only, [N, 1, G, C], from `v` [N, G, G, C] whose rows after i are never read (the
        cached sampler holds zeros there)."""
        n, g, tokens = ops.shape(v)[0], self.grid_size, self.tokens_per_row
        keys = ops.reshape(self._tokens(v), (n, g * tokens, self.channels))
        query = ops.take(keys, ops.arange(tokens) + i * tokens, axis=1)
        visible = ops.broadcast_to((ops.arange(g * tokens) // tokens <= i)[None, None, :], (n, tokens, g * tokens))
        attended = self.attention(query, keys, attention_mask=visible)
        return ops.take(v, ops.reshape(i, (1,)), axis=1) + self._to_columns(attended[:, None])

    def _tokens(self, v):
        """The normalised features with position, averaged over each `pool` columns: [N, rows, tokens, C]."""
        normed = self.norm(v + ops.cast(self.position[:ops.shape(v)[1]], v.dtype))
        if self.pool == 1:
            return normed
        n, rows, tokens = ops.shape(v)[0], ops.shape(v)[1], self.tokens_per_row
        columns = ops.pad(normed, [[0, 0], [0, 0], [0, tokens * self.pool - self.grid_size], [0, 0]])
        sums = ops.sum(ops.reshape(columns, (n, rows, tokens, self.pool, self.channels)), axis=3)
        counts = [[min(self.pool, self.grid_size - self.pool * token)] for token in range(tokens)]
        return sums / ops.convert_to_tensor(counts, sums.dtype)

    def _to_columns(self, tokens):
        """Each token's features given to each of its columns: [N, rows, G, C]."""
        return ops.repeat(tokens, self.pool, axis=2)[:, :, :self.grid_size] if self.pool > 1 else tokens
