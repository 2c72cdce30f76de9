"""The Keras callbacks of train.py's stages: the training clock and its time limit, the Ctrl-C handling, and
the images written to TensorBoard after each epoch (reconstructions, and samples from the prior)."""

import signal
import sys
import time
from pathlib import Path

import keras
import tensorflow as tf

from hierarchy import HierarchicalPrior


class TrainingClock(keras.callbacks.Callback):
    """Time the training steps (not validation) and stop cleanly once `minutes` of training have passed.

    `seconds` and `steps` include those of earlier sessions of a resumed run; the limit counts this one only.
    """

    def __init__(self, minutes=None, seconds=0.0, steps=0):
        super().__init__()
        self.limit = minutes * 60 if minutes else float("inf")
        self.seconds = seconds
        self.steps = steps
        self.session_seconds = 0.0
        self.stopped = False

    def on_train_batch_begin(self, batch, logs=None):
        self.batch_start = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        elapsed = time.monotonic() - self.batch_start
        self.seconds += elapsed
        self.session_seconds += elapsed
        self.steps += 1
        if self.session_seconds > self.limit:
            self.model.stop_training = True
            self.stopped = True


class StopOnSignal(keras.callbacks.Callback):
    """Ctrl-C once: finish and save the epoch in progress, then stop. Ctrl-C again or SIGTERM: stop at once
    (a KeyboardInterrupt), keeping the last completed epoch's checkpoint."""

    def __init__(self):
        super().__init__()
        self.requested = False

    def on_train_begin(self, logs=None):
        self.previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def on_train_end(self, logs=None):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum, frame):
        """The signal handler: a first Ctrl-C asks to stop after this epoch; a second, or SIGTERM, stops now."""
        if signum == signal.SIGINT and not self.requested:
            self.requested = True
            print("\nCtrl-C: stopping once this epoch is saved (Ctrl-C again stops now, losing the epoch)",
                  file=sys.stderr, flush=True)
            return
        raise KeyboardInterrupt

    def on_epoch_end(self, epoch, logs=None):
        if self.requested:
            self.model.stop_training = True


class ReconstructionImages(keras.callbacks.Callback):
    """Write fixed validation images beside their reconstructions to TensorBoard after every epoch."""

    def __init__(self, images, logdir):
        super().__init__()
        self.images = images
        self.writer = tf.summary.create_file_writer(str(Path(logdir) / "validation"))

    def on_epoch_end(self, epoch, logs=None):
        pairs = tf.concat([self.images, self.model.reconstruct(self.images)], axis=2)
        with self.writer.as_default():
            tf.summary.image("inputs_and_reconstructions", pairs, step=epoch, max_outputs=len(self.images))
        self.writer.flush()


class PriorSamples(keras.callbacks.Callback):
    """Write images decoded from codes sampled from the prior, with the decoder's texture as predict.py adds
    it, to TensorBoard every `every` epochs. The bottom prior of a hierarchy draws given codes of `top_prior`."""

    def __init__(self, vqvae, texture, labels, logdir, every, top_prior=None):
        super().__init__()
        self.vqvae = vqvae
        self.texture = texture
        self.labels = labels
        self.every = every
        self.top_prior = top_prior
        self.writer = tf.summary.create_file_writer(str(Path(logdir) / "validation"))

    def on_train_begin(self, logs=None):
        prior = self.model if self.top_prior is None else HierarchicalPrior(self.top_prior, self.model)
        levels = (lambda codes: codes) if self.top_prior is not None else (lambda codes: (codes,))
        self.sample = tf.function(lambda seed: levels(prior.sample(len(self.labels), self.labels, seed=seed)))

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every and epoch + 1 != self.params["epochs"]:
            return
        images = self.texture(self.vqvae.decode_levels(*self.sample(tf.constant(epoch))), seed=epoch)
        with self.writer.as_default():
            tf.summary.image("samples", images, step=epoch, max_outputs=len(self.labels))
        self.writer.flush()
