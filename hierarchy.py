"""The prior of a hierarchical VQ-VAE (VQ-VAE-2, Razavi et al. 2019): p(top, bottom | label) =
p(top | label) p(bottom | top, label), a gated PixelCNN over the coarse top grid, where the anatomy is
decided, and a conditional one over the bottom grid, which only draws the detail that the top codes leave
open. Both are `prior.GatedPixelCNN`s; this model holds them, draws from them in turn and scores with both.
"""

import keras
import tensorflow as tf

from modules import PACKAGE
from prior import GatedPixelCNN


@keras.saving.register_keras_serializable(package=PACKAGE)
class HierarchicalPrior(keras.Model):
    """`top`: a GatedPixelCNN over the top grid [N, T, T]; `bottom`: one over the bottom grid [N, G, G] with
    `condition_grid` T. Both class-conditional or neither."""

    def __init__(self, top, bottom, **kwargs):
        super().__init__(**kwargs)
        self.top = top if isinstance(top, GatedPixelCNN) else keras.saving.deserialize_keras_object(top)
        self.bottom = bottom if isinstance(bottom, GatedPixelCNN) else keras.saving.deserialize_keras_object(bottom)
        if (self.bottom.condition_grid != self.top.grid_size or self.top.num_classes != self.bottom.num_classes
                or self.top.scan_orders != self.bottom.scan_orders):
            raise ValueError("the bottom prior must be conditioned on the top prior's grid, with the same classes "
                             "and scan orders")
        self.built = True

    @property
    def num_classes(self):
        """The number of classes both levels are conditional on (0: none)."""
        return self.top.num_classes

    @property
    def scan_orders(self):
        """The scan orders both levels learnt (`orders`)."""
        return self.top.scan_orders

    @property
    def num_codes(self):
        """The bottom level's codebook size."""
        return self.bottom.num_codes

    def call(self, inputs):
        """Logits of both levels, (top [N, T, T, K], bottom [N, G, G, K]), of inputs (top, bottom[, labels])."""
        top, bottom, labels = (*inputs, None)[:3]
        return self.top.logits(top, labels), self.bottom.logits(bottom, labels, top)

    def log_prob(self, top, bottom, labels=None):
        """The natural-log likelihood of each pair of code grids [N]: the sum of both levels'."""
        return self.top.log_prob(top, labels) + self.bottom.log_prob(bottom, labels, top)

    def sample(self, n, labels=None, temperature=1.0, seed=0, top_k=0, top_p=1.0, background=(None, None)):
        """(top [n, T, T], bottom [n, G, G]) int32 code grids: the top drawn first, then the bottom given it.

        The controls apply to both levels, each with its own `background` codes (a pair, see
        `sampling.filter_logits`). The top draws with the seed `seed`, the bottom with `-1 - seed`, so that no
        two seeds share a stream of draws.
        """
        top = self.top.sample(n, labels, temperature, seed, top_k=top_k, top_p=top_p, background=background[0])
        bottom = self.bottom.sample(n, labels, temperature, -1 - tf.cast(seed, tf.int32), top_k=top_k, top_p=top_p,
                                    background=background[1], top=top)
        return top, bottom

    def get_config(self):
        return {**super().get_config(), "top": keras.saving.serialize_keras_object(self.top),
                "bottom": keras.saving.serialize_keras_object(self.bottom)}
