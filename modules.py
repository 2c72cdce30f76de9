"""The VQ-VAE: a vector quantiser between a convolutional encoder and decoder.

The encoder maps an image to a grid of D-dimensional vectors, the `VectorQuantizer` snaps each vector to
its nearest entry in a learnt codebook of K codes, and the decoder maps the grid of codes back to an image.
`VQVAETrainer` owns the three parts and trains them with its own `train_step`.
"""

import keras
import tensorflow as tf
from keras import layers, ops

PACKAGE = "brain_vqvae"


def ssim(images, reconstructions):
    """Per-image SSIM of images in [0, 1] (Gaussian window 11, sigma 1.5, as in Wang et al. 2004)."""
    return tf.image.ssim(images, reconstructions, max_val=1.0)


def psnr(images, reconstructions):
    """Per-image PSNR in dB of images in [0, 1]."""
    return tf.image.psnr(images, reconstructions, max_val=1.0)


@keras.saving.register_keras_serializable(package=PACKAGE)
class VectorQuantizer(layers.Layer):
    """Nearest-neighbour quantisation of vectors to a learnt codebook (van den Oord et al. 2017).

    The last axis of the input holds vectors of size `code_dim`. Each is replaced by its nearest code under
    squared L2 distance; gradients pass straight through to the encoder. The layer adds
    `beta * commitment_loss` to its losses and, when the codebook is learnt by gradient (`ema_decay=None`),
    the codebook loss too. With `ema_decay` set, codes are instead moving averages of the vectors assigned to
    them (with Laplace smoothing), and a code left unused for `dead_code_steps` training steps is restarted
    at a random encoder output from the current batch. The codebook is initialised the same way on the first
    training batch, so no code starts far from the data.
    """

    def __init__(self, num_codes=256, code_dim=32, beta=0.25, ema_decay=0.99, epsilon=1e-5,
                 dead_code_steps=20, seed=None, **kwargs):
        # The distances, the losses and the EMA statistics need float32 even under mixed precision.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_codes = num_codes
        self.code_dim = code_dim
        self.beta = beta
        self.ema_decay = ema_decay
        self.epsilon = epsilon
        self.dead_code_steps = dead_code_steps
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        if input_shape[-1] != self.code_dim:
            raise ValueError(f"VectorQuantizer expects vectors of size {self.code_dim}, got {input_shape[-1]}")
        use_ema = self.ema_decay is not None
        shape = (self.num_codes, self.code_dim)
        self.codebook = self.add_weight(shape=shape, initializer="random_uniform", trainable=not use_ema,
                                        dtype="float32", name="codebook")
        self.ema_cluster_size = self.add_weight(shape=(self.num_codes,), initializer="zeros", trainable=False,
                                                dtype="float32", name="ema_cluster_size")
        self.ema_code_sum = self.add_weight(shape=shape, initializer="zeros", trainable=False,
                                            dtype="float32", name="ema_code_sum")
        self.steps_unused = self.add_weight(shape=(self.num_codes,), initializer="zeros", trainable=False,
                                            dtype="float32", name="steps_unused")
        self.initialized = self.add_weight(shape=(), initializer="zeros", trainable=False, dtype="float32",
                                           name="initialized")

    def nearest_codes(self, flat_inputs):
        """Index of the nearest code for each row of `flat_inputs` [N, D], by squared L2 in one matmul."""
        distances = (ops.sum(flat_inputs ** 2, axis=1, keepdims=True)
                     - 2.0 * ops.matmul(flat_inputs, ops.transpose(self.codebook))
                     + ops.sum(self.codebook ** 2, axis=1)[None, :])
        return ops.cast(ops.argmin(distances, axis=1), "int32")

    def lookup(self, indices):
        """Code vectors for an integer array of code indices: shape [..., D]."""
        return ops.take(self.codebook, indices, axis=0)

    def call(self, inputs, training=None, return_indices=False):
        inputs = ops.cast(inputs, "float32")
        flat = ops.reshape(inputs, (-1, self.code_dim))
        use_ema = training and self.ema_decay is not None
        if use_ema:
            tf.cond(self.initialized > 0, lambda: None,
                    lambda: self._restart_codes(flat, ops.ones((self.num_codes,), "bool")))
        indices = self.nearest_codes(flat)
        if use_ema:
            self._ema_update(flat, indices)
        quantized = ops.reshape(self.lookup(indices), ops.shape(inputs))
        commitment_loss = ops.mean((inputs - ops.stop_gradient(quantized)) ** 2)
        loss = self.beta * commitment_loss
        if self.ema_decay is None:
            loss = loss + ops.mean((ops.stop_gradient(inputs) - quantized) ** 2)
        self.add_loss(loss)
        quantized = inputs + ops.stop_gradient(quantized - inputs)  # straight-through estimator
        if return_indices:
            return quantized, ops.reshape(indices, ops.shape(inputs)[:-1])
        return quantized

    def _ema_update(self, flat, indices):
        """One EMA step of the codebook towards the mean of the vectors assigned to each code, then a
        restart of the codes that have been unused for `dead_code_steps` steps."""
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
        dead = self.steps_unused >= self.dead_code_steps
        tf.cond(ops.any(dead), lambda: self._restart_codes(flat, dead), lambda: None)

    def _restart_codes(self, flat, mask):
        """Move the codes where `mask` is true onto random rows of `flat` and reset their statistics."""
        picks = keras.random.randint((self.num_codes,), 0, ops.shape(flat)[0], seed=self.seed_generator)
        candidates = _from_first_replica(ops.take(flat, picks, axis=0))
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
        probs = counts / ops.sum(counts)
        entropy = -ops.sum(probs * ops.log(ops.maximum(probs, 1e-12)))
        return ops.exp(entropy), ops.mean(ops.cast(counts > 0, "float32"))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_codes": self.num_codes, "code_dim": self.code_dim,
                "beta": self.beta, "ema_decay": self.ema_decay, "epsilon": self.epsilon,
                "dead_code_steps": self.dead_code_steps, "seed": self.seed}


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
    h = layers.Conv2D(channels, 1, name=f"{name}_conv1x1")(h)
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


def build_decoder(code_dim=32, channels=64, downsamplings=2, res_blocks=2, name="decoder"):
    """Quantised vectors -> image: residual blocks, then strided transposed convs; linear output."""
    vectors = keras.Input((None, None, code_dim), name="quantized")
    x = layers.Conv2D(channels, 3, padding="same", name="conv_in")(vectors)
    for block in range(res_blocks):
        x = _residual_block(x, channels, channels // 2, name=f"res{block + 1}")
    x = layers.ReLU(name="relu_mid")(x)
    for level in range(downsamplings - 1, 0, -1):
        x = layers.Conv2DTranspose(_channels_at(level, channels, downsamplings), 4, strides=2, padding="same",
                                   activation="relu", name=f"up{level + 1}")(x)
    images = layers.Conv2DTranspose(1, 4, strides=2, padding="same", name="up1")(x)
    return keras.Model(vectors, images, name=name)


@keras.saving.register_keras_serializable(package=PACKAGE)
class VQVAETrainer(keras.Model):
    """Encoder, `VectorQuantizer` and decoder, trained end to end on mean squared reconstruction error.

    `fit` and `evaluate` take batches of images [N, S, S, 1] in [0, 1] (or (images, labels) pairs, whose
    labels are ignored) and track the loss, its reconstruction and VQ parts, SSIM, PSNR, the codebook's
    perplexity and the fraction of codes in use.
    """

    def __init__(self, num_codes=256, code_dim=32, channels=64, downsamplings=2, res_blocks=2, beta=0.25,
                 ema_decay=0.99, dead_code_steps=20, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.hyperparameters = dict(num_codes=num_codes, code_dim=code_dim, channels=channels,
                                    downsamplings=downsamplings, res_blocks=res_blocks, beta=beta,
                                    ema_decay=ema_decay, dead_code_steps=dead_code_steps, seed=seed)
        shape = dict(code_dim=code_dim, channels=channels, downsamplings=downsamplings, res_blocks=res_blocks)
        self.encoder = build_encoder(**shape)
        self.decoder = build_decoder(**shape)
        self.quantizer = VectorQuantizer(num_codes, code_dim, beta=beta, ema_decay=ema_decay,
                                         dead_code_steps=dead_code_steps, seed=seed, name="vector_quantizer")
        self.quantizer.build((None, code_dim))
        names = ["loss", "reconstruction_loss", "vq_loss", "ssim", "psnr", "perplexity", "codes_used"]
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.train_ssim_images = 8

    @property
    def downsampling_factor(self):
        """How many pixels one code spans along each side."""
        return 2 ** self.hyperparameters["downsamplings"]

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, images, training=False):
        vectors = self.encoder(images, training=training)
        return self.decoder(self.quantizer(vectors, training=training), training=training)

    def encode(self, images):
        """Images [N, S, S, 1] -> int32 code indices [N, S/f, S/f]."""
        _, indices = self.quantizer(self.encoder(images), return_indices=True)
        return indices

    def decode(self, indices):
        """Int32 code indices [N, h, w] -> images [N, h*f, w*f, 1] clipped to [0, 1]."""
        return ops.clip(self.decoder(self.quantizer.lookup(indices)), 0.0, 1.0)

    def reconstruct(self, images):
        """Images -> their reconstructions through the codebook, clipped to [0, 1]."""
        return ops.clip(self(images), 0.0, 1.0)

    def _forward(self, images, training):
        vectors = self.encoder(images, training=training)
        quantized, indices = self.quantizer(vectors, training=training, return_indices=True)
        outputs = self.decoder(quantized, training=training)
        reconstruction_loss = ops.mean((ops.cast(outputs, "float32") - images) ** 2)
        vq_loss = ops.sum(self.quantizer.losses)
        return outputs, indices, reconstruction_loss, vq_loss

    def _update_metrics(self, images, outputs, indices, reconstruction_loss, vq_loss, training):
        reconstructions = ops.clip(ops.cast(outputs, "float32"), 0.0, 1.0)
        perplexity, codes_used = self.quantizer.code_usage(indices)
        # SSIM costs about as much as a training step on a CPU; during training a few images per batch
        # give an unbiased estimate of the epoch's mean at a fraction of the cost.
        n = self.train_ssim_images if training else None
        values = dict(loss=reconstruction_loss + vq_loss, reconstruction_loss=reconstruction_loss,
                      vq_loss=vq_loss, ssim=ops.mean(ssim(images[:n], reconstructions[:n])),
                      psnr=ops.mean(psnr(images, reconstructions)), perplexity=perplexity,
                      codes_used=codes_used)
        for name, value in values.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, data):
        images = _images_of(data)
        with tf.GradientTape() as tape:
            outputs, indices, reconstruction_loss, vq_loss = self._forward(images, training=True)
            loss = reconstruction_loss + vq_loss
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return self._update_metrics(images, outputs, indices, reconstruction_loss, vq_loss, training=True)

    def test_step(self, data):
        images = _images_of(data)
        outputs, indices, reconstruction_loss, vq_loss = self._forward(images, training=False)
        return self._update_metrics(images, outputs, indices, reconstruction_loss, vq_loss, training=False)

    def get_config(self):
        return {**super().get_config(), **self.hyperparameters}


def _images_of(data):
    """The images of a batch that may be `images` or `(images, labels)`."""
    images = data[0] if isinstance(data, (tuple, list)) else data
    return ops.cast(images, "float32")
