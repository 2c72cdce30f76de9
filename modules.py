"""The VQ-VAE: a vector quantiser between a convolutional encoder and decoder.

The encoder maps an image to a grid of D-dimensional vectors, the `VectorQuantizer` snaps each vector to
its nearest entry in a learnt codebook of K codes, and the decoder maps the grid of codes back to an image.
`VQVAETrainer` owns the three parts and trains them with its own `train_step`.
"""

import collections
import random

import keras
import tensorflow as tf
from keras import layers, ops

import noise
from metrics import mean_ssim, perplexity, psnr

PACKAGE = "brain_vqvae"
CLEAN_SHARE = 0.25  # the share of training images that a VQ-VAE trained with noise sees without it
# The weight of the top level's own prediction in the loss: enough to keep the top codes in use (without it, a
# default run's top codebook collapsed to 2-3 codes), little enough to leave the reconstruction its share.
TOP_HEAD_WEIGHT = 0.1

Quantized = collections.namedtuple("Quantized", ["vectors", "indices", "loss"])
Quantized.__doc__ = """What `VectorQuantizer.quantize_vectors` returns: the quantised vectors (straight-through
gradients), their code indices [...] and the VQ loss."""


class ArgumentsAsConfig:
    """For a Keras layer or model whose config is its constructor's arguments: `keep(name=value, ...)` makes
    each argument an attribute of that name, and `get_config` adds them all to the base class's config."""

    def keep(self, **arguments):
        """Store each argument as an attribute and remember its name for `get_config`."""
        self.config_arguments = tuple(arguments)
        for name, value in arguments.items():
            setattr(self, name, value)

    def get_config(self):
        return {**super().get_config(), **{name: getattr(self, name) for name in self.config_arguments}}


@keras.saving.register_keras_serializable(package=PACKAGE)
class VectorQuantizer(ArgumentsAsConfig, layers.Layer):
    """Nearest-neighbour quantisation of vectors to a learnt codebook (van den Oord et al. 2017).

    The last axis of the input holds vectors of size `code_dim`. Each is replaced by its nearest code under
    squared L2 distance; gradients pass straight through to the encoder. Calling the layer returns the
    quantised vectors and their code indices, and adds `beta * commitment_loss` to its losses and, when the
    codebook is learnt by gradient (`ema_decay` 0 or None), the codebook loss too. With `ema_decay` set,
    codes are instead moving averages of the vectors assigned to them (with Laplace smoothing), and a code
    left unused for `dead_code_steps` training steps is restarted at a random encoder output from the
    current batch. The codebook is initialised the same way on the first training batch, so no code starts
    far from the data.
    """

    def __init__(self, num_codes=256, code_dim=32, beta=0.25, ema_decay=0.99, epsilon=1e-5,
                 dead_code_steps=20, seed=None, **kwargs):
        # The distances, the losses and the EMA statistics need float32 even under mixed precision.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        # Restarts draw with stateless seeds (seed, step), so a resumed run draws what an uninterrupted one would.
        # Python's generator, which keras.utils.set_random_seed seeds, picks one where none is given.
        seed = seed if seed is not None else random.randrange(2**31 - 1)
        self.keep(num_codes=num_codes, code_dim=code_dim, beta=beta, ema_decay=ema_decay, epsilon=epsilon,
                  dead_code_steps=dead_code_steps, seed=seed)

    def build(self, input_shape):
        # Every replica assigns the same (all-reduced) values to the state below; replica 0's write is kept.
        if input_shape[-1] != self.code_dim:
            raise ValueError(f"VectorQuantizer expects vectors of size {self.code_dim}, got {input_shape[-1]}")
        shape = (self.num_codes, self.code_dim)
        self.codebook = self.add_weight(shape=shape, initializer="random_uniform", trainable=not self.uses_ema,
                                        dtype="float32", name="codebook", aggregation="only_first_replica")
        self.ema_cluster_size = self.add_weight(shape=(self.num_codes,), initializer="zeros", trainable=False,
                                                dtype="float32", name="ema_cluster_size",
                                                aggregation="only_first_replica")
        self.ema_code_sum = self.add_weight(shape=shape, initializer="zeros", trainable=False,
                                            dtype="float32", name="ema_code_sum", aggregation="only_first_replica")
        self.steps_unused = self.add_weight(shape=(self.num_codes,), initializer="zeros", trainable=False,
                                            dtype="float32", name="steps_unused", aggregation="only_first_replica")
        self.initialized = self.add_weight(shape=(), initializer="zeros", trainable=False, dtype="float32",
                                           name="initialized", aggregation="only_first_replica")
        self.training_steps = self.add_weight(shape=(), initializer="zeros", trainable=False, dtype="int32",
                                              name="training_steps", aggregation="only_first_replica")

    @property
    def uses_ema(self):
        """Whether the codebook follows moving averages (else it is learnt by gradient)."""
        return bool(self.ema_decay)

    def nearest_codes(self, flat_inputs):
        """Index of the nearest code for each row of `flat_inputs` [N, D], by squared L2 in one matmul."""
        distances = (ops.sum(flat_inputs ** 2, axis=1, keepdims=True)
                     - 2.0 * ops.matmul(flat_inputs, ops.transpose(self.codebook))
                     + ops.sum(self.codebook ** 2, axis=1)[None, :])
        return ops.cast(ops.argmin(distances, axis=1), "int32")

    def lookup(self, indices):
        """Code vectors for an integer array of code indices: shape [..., D]."""
        return ops.take(self.codebook, indices, axis=0)

    def call(self, inputs, training=None):
        """(quantized vectors, code indices) of `inputs`; the VQ loss goes to the layer's losses."""
        quantized = self.quantize_vectors(inputs, training=training)
        self.add_loss(quantized.loss)
        return quantized.vectors, quantized.indices

    def quantize_vectors(self, inputs, training=False):
        """`Quantized` vectors, indices and VQ loss of `inputs`; updates the EMA codebook when training.

        A trainer under tf.distribute uses the returned loss rather than the layer's losses, which replicas
        share.
        """
        inputs = ops.cast(inputs, "float32")
        flat = ops.reshape(inputs, (-1, self.code_dim))
        use_ema = training and self.uses_ema
        if use_ema:
            candidates = self._restart_candidates(flat)
            uninitialized = ops.broadcast_to(self.initialized <= 0, (self.num_codes,))
            self._restart_codes(candidates, uninitialized)
        indices = self.nearest_codes(flat)
        if use_ema:
            self._ema_update(flat, indices, candidates)
            self.training_steps.assign_add(1)
        quantized = ops.reshape(self.lookup(indices), ops.shape(inputs))
        commitment_loss = ops.mean((inputs - ops.stop_gradient(quantized)) ** 2)
        loss = self.beta * commitment_loss
        if not self.uses_ema:
            loss = loss + ops.mean((ops.stop_gradient(inputs) - quantized) ** 2)
        quantized = inputs + ops.stop_gradient(quantized - inputs)  # straight-through estimator
        return Quantized(quantized, ops.reshape(indices, ops.shape(inputs)[:-1]), loss)

    def _ema_update(self, flat, indices, candidates):
        """One EMA step of the codebook towards the mean of the vectors assigned to each code, then a
        restart (onto `candidates`) of the codes that have been unused for `dead_code_steps` steps."""
        counts = self._counts(indices)
        sums = ops.segment_sum(flat, indices, num_segments=self.num_codes)
        counts, sums = _sum_over_replicas(counts, sums)
        decay = self.ema_decay
        self.ema_cluster_size.assign(decay * self.ema_cluster_size + (1.0 - decay) * counts)
        self.ema_code_sum.assign(decay * self.ema_code_sum + (1.0 - decay) * sums)
        total = ops.sum(self.ema_cluster_size)
        smoothed = (self.ema_cluster_size + self.epsilon) / (total + self.num_codes * self.epsilon) * total
        self.codebook.assign(self.ema_code_sum / smoothed[:, None])
        self.steps_unused.assign(ops.where(counts > 0, 0.0, self.steps_unused + 1.0))
        self._restart_codes(candidates, self.steps_unused >= self.dead_code_steps)

    def _restart_candidates(self, flat):
        """K random rows of `flat` (replica 0's under tf.distribute), drawn with the seed (seed, step).

        Drawn every step, outside any conditional: an all-reduce may not sit inside a tf.cond.
        """
        seed = tf.stack([tf.constant(self.seed, tf.int32), self.training_steps.value])
        picks = tf.random.stateless_uniform((self.num_codes,), seed, 0, tf.shape(flat)[0], dtype=tf.int32)
        return _from_first_replica(ops.take(flat, picks, axis=0))

    def _restart_codes(self, candidates, mask):
        """Move the codes where `mask` is true onto `candidates` and reset their statistics."""
        mask = mask[:, None]
        self.codebook.assign(ops.where(mask, candidates, self.codebook))
        self.ema_code_sum.assign(ops.where(mask, candidates, self.ema_code_sum))
        self.ema_cluster_size.assign(ops.where(mask[:, 0], 1.0, self.ema_cluster_size))
        self.steps_unused.assign(ops.where(mask[:, 0], 0.0, self.steps_unused))
        self.initialized.assign(1.0)

    def _counts(self, flat_indices):
        """How often each code occurs (a segment sum rather than bincount, which XLA cannot compile)."""
        ones = ops.ones_like(flat_indices, dtype="float32")
        return ops.segment_sum(ones, flat_indices, num_segments=self.num_codes)

    def code_usage(self, indices):
        """(perplexity, fraction of the K codes used) of a batch of code indices."""
        counts = self._counts(ops.reshape(indices, (-1,)))
        return perplexity(counts), ops.mean(ops.cast(counts > 0, "float32"))

    def compute_output_shape(self, input_shape):
        return input_shape


def _sum_over_replicas(*tensors):
    """Sum tensors over the replicas of a tf.distribute strategy (identity with one replica)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensors
    return context.all_reduce(tf.distribute.ReduceOp.SUM, list(tensors))


def _from_first_replica(tensor):
    """The value of `tensor` on replica 0, on every replica, so that all replicas update codes alike."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensor
    is_first = ops.cast(ops.equal(context.replica_id_in_sync_group, 0), tensor.dtype)
    return context.all_reduce(tf.distribute.ReduceOp.SUM, tensor * is_first)


def _residual_block(x, channels, hidden, name):
    """ReLU, 3x3 conv, ReLU, 1x1 conv, added to the input (the VQ-VAE paper's block)."""
    h = layers.ReLU(name=f"{name}_relu1")(x)
    h = layers.Conv2D(hidden, 3, padding="same", activation="relu", name=f"{name}_conv3x3")(h)
    # No bias before the add: with one, TensorFlow's oneDNN graph rewrite fails on this pattern (it logs
    # "remapper failed" and leaves the step slower).
    h = layers.Conv2D(channels, 1, use_bias=False, name=f"{name}_conv1x1")(h)
    return layers.Add(name=f"{name}_add")([x, h])


def _channels_at(level, channels, downsamplings):
    """Channel count after `level` stride-2 steps: halved for each step still to come, at least 16."""
    return max(16, channels // 2 ** (downsamplings - level))


def build_encoder(code_dim=32, channels=64, downsamplings=2, res_blocks=2, name="encoder"):
    """Image [N, S, S, 1] -> vectors [N, S/2^d, S/2^d, code_dim]: strided convs, then residual blocks."""
    images = keras.Input((None, None, 1), name="images")
    x = images
    for level in range(1, downsamplings + 1):
        x = layers.Conv2D(_channels_at(level, channels, downsamplings), 4, strides=2, padding="same",
                          activation="relu", name=f"down{level}")(x)
    x = layers.Conv2D(channels, 3, padding="same", name="conv_in")(x)
    for block in range(res_blocks):
        x = _residual_block(x, channels, channels // 2, name=f"res{block + 1}")
    x = layers.ReLU(name="relu_out")(x)
    vectors = layers.Conv2D(code_dim, 1, name="to_codes")(x)
    return keras.Model(images, vectors, name=name)


def build_top_encoder(code_dim=32, channels=64, top_downsamplings=1, res_blocks=2, name="top_encoder"):
    """The bottom level's vectors [N, G, G, code_dim] -> the top level's [N, G/2^t, G/2^t, code_dim]."""
    vectors = keras.Input((None, None, code_dim), name="bottom_vectors")
    x = vectors
    for level in range(1, top_downsamplings + 1):
        x = layers.Conv2D(channels, 4, strides=2, padding="same", activation="relu", name=f"down{level}")(x)
    x = layers.Conv2D(channels, 3, padding="same", name="conv_in")(x)
    for block in range(res_blocks):
        x = _residual_block(x, channels, channels // 2, name=f"res{block + 1}")
    x = layers.ReLU(name="relu_out")(x)
    return keras.Model(vectors, layers.Conv2D(code_dim, 1, name="to_codes")(x), name=name)


def build_top_decoder(code_dim=32, channels=64, top_downsamplings=1, res_blocks=2, name="top_decoder"):
    """The top level's quantised vectors -> what they say at the bottom grid: [N, G, G, code_dim]."""
    vectors = keras.Input((None, None, code_dim), name="top_quantized")
    x = layers.Conv2D(channels, 3, padding="same", name="conv_in")(vectors)
    for block in range(res_blocks):
        x = _residual_block(x, channels, channels // 2, name=f"res{block + 1}")
    x = layers.ReLU(name="relu_mid")(x)
    for level in range(top_downsamplings, 0, -1):
        x = layers.Conv2DTranspose(channels, 4, strides=2, padding="same", activation="relu", name=f"up{level}")(x)
    return keras.Model(vectors, layers.Conv2D(code_dim, 1, name="to_bottom")(x), name=name)


def build_decoder(code_dim=32, channels=64, downsamplings=2, res_blocks=2, name="decoder", input_dim=None):
    """Quantised vectors (`input_dim` channels, default code_dim) -> image: residual blocks, then strided
    transposed convs; linear output."""
    vectors = keras.Input((None, None, input_dim or code_dim), name="quantized")
    x = layers.Conv2D(channels, 3, padding="same", name="conv_in")(vectors)
    for block in range(res_blocks):
        x = _residual_block(x, channels, channels // 2, name=f"res{block + 1}")
    x = layers.ReLU(name="relu_mid")(x)
    for level in range(downsamplings - 1, 0, -1):
        x = layers.Conv2DTranspose(_channels_at(level, channels, downsamplings), 4, strides=2, padding="same",
                                   activation="relu", name=f"up{level + 1}")(x)
    # float32 output under mixed precision too: the loss, the metrics and the exported images need it.
    images = layers.Conv2DTranspose(1, 4, strides=2, padding="same", name="up1", dtype="float32")(x)
    return keras.Model(vectors, images, name=name)


@keras.saving.register_keras_serializable(package=PACKAGE)
class VQVAETrainer(ArgumentsAsConfig, keras.Model):
    """Encoder, `VectorQuantizer` and decoder, trained end to end on mean squared reconstruction error,
    plus `ssim_weight * (1 - SSIM)` of the reconstructions when `ssim_weight` > 0.

    With `train_noise` > 0 it learns to denoise: in training the encoder sees a copy of each image with
    Rician noise of a sigma drawn per image from U(0, train_noise) (a share CLEAN_SHARE of the images stays
    clean, so that clean reconstruction does not suffer), while the loss compares the output with the clean
    image. Validation and `evaluate` see clean images, so their metrics stay comparable between models.

    With `top_downsamplings` t > 0 it is hierarchical (VQ-VAE-2, Razavi et al. 2019): a second encoder takes
    the bottom grid's vectors t stride-2 steps further to a top grid, quantised with a codebook of its own;
    what the top codes say at the bottom grid (`build_top_decoder`) joins the bottom vectors before the bottom
    quantiser and the bottom codes before the decoder. A 1x1 head on that alone predicts the image averaged
    over each bottom code's pixels (its squared error, `top_mse`, weighted TOP_HEAD_WEIGHT, joins the loss), so
    the top codes carry the slice's layout, which a prior over the small top grid then draws before the detail.

    `fit` and `evaluate` take batches of images [N, S, S, 1] in [0, 1] (or (images, labels) pairs, whose
    labels are ignored) and track the loss, its reconstruction and VQ parts, MSE, SSIM, PSNR, the codebook's
    perplexity and the fraction of codes in use (the bottom level's; `top_perplexity` too). The codebook's
    settings (num_codes, beta, ema_decay, dead_code_steps, seed) are the quantizer's and read from it; the top
    codebook has the same settings and seed + 1.
    """

    def __init__(self, num_codes=256, code_dim=32, channels=64, downsamplings=2, res_blocks=2, beta=0.25,
                 ema_decay=0.99, dead_code_steps=20, ssim_weight=0.05, train_noise=0.0, top_downsamplings=0,
                 seed=None, **kwargs):
        super().__init__(**kwargs)
        shape = dict(code_dim=code_dim, channels=channels, res_blocks=res_blocks)
        self.keep(**shape, downsamplings=downsamplings, ssim_weight=ssim_weight, train_noise=train_noise,
                  top_downsamplings=top_downsamplings)
        # Keras 3 averages a multi-worker run's logs over a batch axis that scalars lack (keras-team/keras#20585);
        # the code that sets up such a run turns this on.
        self.logs_with_batch_axis = False
        self.encoder = build_encoder(**shape, downsamplings=downsamplings)
        self.decoder = build_decoder(**shape, downsamplings=downsamplings,
                                     input_dim=code_dim * (2 if top_downsamplings else 1))
        self.quantizer = VectorQuantizer(num_codes, code_dim, beta=beta, ema_decay=ema_decay,
                                         dead_code_steps=dead_code_steps, seed=seed, name="vector_quantizer")
        self.quantizer.build((None, code_dim))
        if top_downsamplings:
            # VQ-VAE-2 (Razavi et al. 2019): a coarse top grid, decoded to the bottom grid, which the bottom
            # quantiser's input and the decoder both see, so the bottom codes only add what the top lacks.
            self.top_encoder = build_top_encoder(**shape, top_downsamplings=top_downsamplings)
            self.top_decoder = build_top_decoder(**shape, top_downsamplings=top_downsamplings)
            self.top_quantizer = VectorQuantizer(num_codes, code_dim, beta=beta, ema_decay=ema_decay,
                                                 dead_code_steps=dead_code_steps, seed=self.quantizer.seed + 1,
                                                 name="top_vector_quantizer")
            self.top_quantizer.build((None, code_dim))
            self.bottom_mixer = layers.Conv2D(code_dim, 1, name="bottom_mixer")
            self.bottom_mixer.build((None, None, None, 2 * code_dim))
            # The top level must carry the slice's layout on its own: without this head, in some runs the
            # bottom level took over and the top codebook collapsed to two or three codes.
            self.top_head = layers.Conv2D(1, 1, name="top_head", dtype="float32")
            self.top_head.build((None, None, None, code_dim))
        names = ["loss", "reconstruction_loss", "vq_loss", "mse", "ssim", "psnr", "perplexity", "codes_used"]
        names += ["top_mse", "top_perplexity"] if top_downsamplings else []
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.built = True  # all state exists: the encoder and decoder are functional, the quantizers are built

    @property
    def hierarchical(self):
        """Whether the model has a top level of codes above the bottom grid."""
        return bool(self.top_downsamplings)

    @property
    def top_factor(self):
        """How many bottom codes one top code spans along each side (1 without a top level)."""
        return 2 ** self.top_downsamplings

    @property
    def downsampling_factor(self):
        """How many pixels one code spans along each side."""
        return 2 ** self.downsamplings

    @property
    def metrics(self):
        return list(self.trackers.values())

    def quantize_images(self, inputs, training=False):
        """(the decoder's input, the code indices of each level, the VQ loss, what the top codes say at the
        bottom grid or None) of images `inputs`; the levels are (bottom,) or, with a top level, (top, bottom)."""
        vectors = self.encoder(inputs, training=training)
        if not self.hierarchical:
            quantized, indices, loss = self.quantizer.quantize_vectors(vectors, training=training)
            return quantized, (indices,), loss, None
        top, top_indices, top_loss = self.top_quantizer.quantize_vectors(
            self.top_encoder(vectors, training=training), training=training)
        context = self.top_decoder(top, training=training)
        mixed = self.bottom_mixer(ops.concatenate([vectors, ops.cast(context, vectors.dtype)], axis=-1))
        quantized, indices, loss = self.quantizer.quantize_vectors(mixed, training=training)
        return (ops.concatenate([ops.cast(quantized, context.dtype), context], axis=-1), (top_indices, indices),
                loss + top_loss, context)

    def call(self, images, training=False):
        quantized, _, loss, _ = self.quantize_images(images, training=training)
        self.add_loss(loss)
        return self.decoder(quantized, training=training)

    def encode(self, images):
        """Images [N, S, S, 1] -> int32 code indices [N, S/f, S/f] (a one-level model)."""
        return self.encode_levels(images)[-1]

    def encode_levels(self, images):
        """Images -> the int32 code indices of each level: (bottom,) or (top [N, G/t, G/t], bottom [N, G, G])."""
        return self.quantize_images(images)[1]

    def decode(self, indices):
        """Int32 code indices [N, h, w] -> images [N, h*f, w*f, 1] clipped to [0, 1] (a one-level model)."""
        return self.decode_levels(indices)

    def decode_levels(self, *levels):
        """The code indices of each level, as `encode_levels` gives them -> images clipped to [0, 1]."""
        quantized = self.quantizer.lookup(levels[-1])
        if self.hierarchical:
            context = self.top_decoder(self.top_quantizer.lookup(levels[0]))
            quantized = ops.concatenate([quantized, context], axis=-1)
        return ops.clip(self.decoder(quantized), 0.0, 1.0)

    def reconstruct(self, images):
        """Images -> their reconstructions through the codebook, clipped to [0, 1]."""
        return ops.clip(self(images), 0.0, 1.0)

    def noisy_inputs(self, images, step):
        """What the encoder sees of `images` at training step `step`: with `train_noise`, a copy with Rician
        noise (clipped to [0, 1], as an image file is) of a sigma drawn per image; else the images.

        Stateless draws seeded by (seed, step, replica), so that a --deterministic run repeats and replicas
        draw different noise for their different images.
        """
        if not self.train_noise:
            return images
        context = tf.distribute.get_replica_context()
        replica = context.replica_id_in_sync_group if context is not None else 0
        replicas = context.num_replicas_in_sync if context is not None else 1
        counter = tf.cast(step, tf.int64) * replicas + tf.cast(replica, tf.int64)
        seed = tf.stack([tf.constant(self.quantizer.seed, tf.int64), counter])
        draws = tf.random.stateless_uniform([2, tf.shape(images)[0]], seed)
        sigma = tf.where(draws[0] < CLEAN_SHARE, 0.0, draws[1] * self.train_noise)
        noise_seed = tf.stack([seed[0], -1 - counter])  # apart from the seeds of the sigmas above
        return tf.clip_by_value(noise.rician_noise(images, sigma, noise_seed), 0.0, 1.0)

    def _forward(self, images, training, inputs=None):
        """(clipped reconstructions, code indices of each level, losses) of a batch whose encoder sees `inputs`
        (default: the images themselves); the losses compare with `images` and are a dict whose "loss" is their
        total."""
        quantized, indices, vq_loss, context = self.quantize_images(images if inputs is None else inputs,
                                                                    training=training)
        outputs = ops.cast(self.decoder(quantized, training=training), "float32")
        reconstructions = ops.clip(outputs, 0.0, 1.0)
        losses = dict(mse=ops.mean((outputs - images) ** 2), ssim=mean_ssim(images, reconstructions), vq_loss=vq_loss)
        losses["reconstruction_loss"] = losses["mse"]
        if self.ssim_weight:
            losses["reconstruction_loss"] += self.ssim_weight * (1.0 - losses["ssim"])
        losses["loss"] = losses["reconstruction_loss"] + vq_loss
        if context is not None:
            # The top level alone predicts the image averaged over each code's pixels.
            coarse = ops.average_pool(images, self.downsampling_factor, self.downsampling_factor)
            losses["top_mse"] = ops.mean((self.top_head(context) - coarse) ** 2)
            losses["loss"] += TOP_HEAD_WEIGHT * losses["top_mse"]
        return reconstructions, indices, losses

    def _update_metrics(self, images, reconstructions, indices, losses):
        perplexity, codes_used = self.quantizer.code_usage(indices[-1])
        values = dict(**losses, psnr=ops.mean(psnr(images, reconstructions)), perplexity=perplexity,
                      codes_used=codes_used)
        if self.hierarchical:
            values["top_perplexity"] = self.top_quantizer.code_usage(indices[0])[0]
        for name, value in values.items():
            self.trackers[name].update_state(value)
        results = {name: tracker.result() for name, tracker in self.trackers.items()}
        if self.logs_with_batch_axis:
            results = {name: ops.reshape(value, (1,)) for name, value in results.items()}
        return results

    def train_step(self, data):
        images = _images_of(data)
        inputs = self.noisy_inputs(images, self.optimizer.iterations)
        with tf.GradientTape() as tape:
            reconstructions, indices, losses = self._forward(images, training=True, inputs=inputs)
            # Replicas' gradients are summed, so each takes its share of the global mean; the loss scale
            # keeps float16 gradients from underflowing under mixed precision (identity otherwise).
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled_loss = self.optimizer.scale_loss(losses["loss"] / replicas)
        gradients = tape.gradient(scaled_loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        return self._update_metrics(images, reconstructions, indices, losses)

    def test_step(self, data):
        images = _images_of(data)
        reconstructions, indices, losses = self._forward(images, training=False)
        return self._update_metrics(images, reconstructions, indices, losses)

    def get_config(self):
        quantizer = self.quantizer
        return {**super().get_config(), "num_codes": quantizer.num_codes, "beta": quantizer.beta,
                "ema_decay": quantizer.ema_decay, "dead_code_steps": quantizer.dead_code_steps,
                "seed": quantizer.seed}


def _images_of(data):
    """The images of a batch that may be `images` or `(images, labels)`."""
    images = data[0] if isinstance(data, (tuple, list)) else data
    return ops.cast(images, "float32")

