"""Train the VQ-VAE and its gated PixelCNN prior on brain MRI slices; export both as one SavedModel.

    python train.py                                  # the embedded demo (MNI152 template cohort), 128x128
    python train.py --data /data/ADNI --image-size 128 --max-minutes 15
    python train.py --data /data/OASIS --image-size 256 --batch-size 64

Outputs: the SavedModel at --out (with model.keras, prior.keras, config.json, metrics.json and
training_curves.png inside it), the best checkpoints in --out_checkpoints/, and TensorBoard logs under
--logdir/vqvae and --logdir/prior (`tensorboard --logdir logs`).
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dataset  # noqa: E402
from modules import GatedPixelCNN, VQVAETrainer, bits_per_code  # noqa: E402
from utils import (atomic_directory, evaluate_reconstructions, export_savedmodel, fail,  # noqa: E402
                   plot_training_curves, write_json)


def parse_args(argv=None):
    """The command line; every flag has a default that trains on the embedded demo."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--data", help="folder of OASIS, ADNI or plain image slices (default: the embedded demo)")
    data.add_argument("--dataset", default="auto", choices=["auto", "oasis", "adni", "folder", "demo"],
                      help="layout of --data; auto detects it (default: %(default)s)")
    data.add_argument("--image-size", type=int, default=128, help="side S of the square images (default: %(default)s)")
    data.add_argument("--validation-fraction", type=float, default=0.1,
                      help="share of train patients held out for validation where the data has no such split")
    data.add_argument("--skip-bad", action="store_true", help="skip unreadable image files instead of stopping")
    model = parser.add_argument_group("model")
    model.add_argument("--num-codes", type=int, default=256, help="codebook size K (default: %(default)s)")
    model.add_argument("--code-dim", type=int, default=32, help="code vector size D (default: %(default)s)")
    model.add_argument("--channels", type=int, default=64, help="channels at the code grid (default: %(default)s)")
    model.add_argument("--downsamplings", type=int, default=2,
                       help="stride-2 steps; the code grid is S/2^d a side (default: %(default)s)")
    model.add_argument("--res-blocks", type=int, default=2, help="residual blocks in encoder and decoder")
    model.add_argument("--beta", type=float, default=0.25, help="commitment loss weight (default: %(default)s)")
    model.add_argument("--ema-decay", type=float, default=0.99,
                       help="EMA decay of the codebook; 0 learns it by gradient instead (default: %(default)s)")
    prior = parser.add_argument_group("prior")
    prior.add_argument("--prior-epochs", type=int, default=10, help="epochs of the prior (default: %(default)s)")
    prior.add_argument("--prior-channels", type=int, default=32, help="prior channels (default: %(default)s)")
    prior.add_argument("--prior-layers", type=int, default=10, help="gated blocks (default: %(default)s)")
    prior.add_argument("--prior-learning-rate", type=float, default=3e-3,
                       help="Adam learning rate of the prior (default: %(default)s)")
    prior.add_argument("--unconditional", action="store_true",
                       help="ignore class labels (ADNI AD/NC); by default the prior is conditional on them")
    run = parser.add_argument_group("training")
    run.add_argument("--stage", default="all", choices=["all", "vqvae", "prior"],
                     help="what to train; prior reuses the VQ-VAE already at --out (default: %(default)s)")
    run.add_argument("--epochs", type=int, default=12, help="epochs of the VQ-VAE (default: %(default)s)")
    run.add_argument("--batch-size", type=int, default=16, help="images per step (default: %(default)s)")
    run.add_argument("--learning-rate", type=float, default=2e-3, help="Adam learning rate (default: %(default)s)")
    run.add_argument("--max-minutes", type=float, help="stop each stage's training cleanly after this many minutes")
    run.add_argument("--seed", type=int, default=0, help="seed for data splits, shuffling and weights")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--out", default="saved_models/vqvae", help="SavedModel folder (default: %(default)s)")
    outputs.add_argument("--logdir", default="logs", help="TensorBoard folder; vqvae/ and prior/ go inside "
                         "(default: %(default)s)")
    args = parser.parse_args(argv)
    _check_args(parser, args)
    return args


def _check_args(parser, args):
    factor = 2 ** args.downsamplings
    if args.downsamplings < 1:
        parser.error(f"--downsamplings {args.downsamplings}: expected 1 or more")
    if args.image_size < 16 or args.image_size % factor:
        parser.error(f"--image-size {args.image_size}: expected a multiple of 2^downsamplings = {factor}, at least 16")
    for flag in ("num_codes", "code_dim", "channels", "batch_size", "epochs", "prior_epochs", "prior_channels",
                 "prior_layers"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected a positive integer")
    if args.num_codes < 2:
        parser.error(f"--num-codes {args.num_codes}: expected at least 2")
    if args.dataset not in ("auto", "demo") and args.data is None:
        parser.error(f"--dataset {args.dataset} needs --data PATH")
    if args.max_minutes is not None and args.max_minutes <= 0:
        parser.error(f"--max-minutes {args.max_minutes}: expected a positive number")
    if not 0 <= args.ema_decay < 1:
        parser.error(f"--ema-decay {args.ema_decay}: expected 0 (off) or a value in (0, 1)")


class TrainingClock(keras.callbacks.Callback):
    """Time the training steps (not validation) and stop cleanly once `minutes` of training have passed."""

    def __init__(self, minutes=None):
        super().__init__()
        self.limit = minutes * 60 if minutes else float("inf")
        self.seconds = 0.0
        self.batches = 0
        self.stopped = False

    def on_train_batch_begin(self, batch, logs=None):
        self.batch_start = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds += time.monotonic() - self.batch_start
        self.batches += 1
        if self.seconds > self.limit:
            self.model.stop_training = True
            self.stopped = True


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
    """Write images decoded from codes sampled from the prior to TensorBoard every `every` epochs."""

    def __init__(self, vqvae, labels, logdir, every):
        super().__init__()
        self.vqvae = vqvae
        self.labels = labels
        self.every = every
        self.writer = tf.summary.create_file_writer(str(Path(logdir) / "validation"))

    def on_train_begin(self, logs=None):
        self.sample = tf.function(lambda seed: self.model.sample(len(self.labels), self.labels, seed=seed))

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every and epoch + 1 != self.params["epochs"]:
            return
        images = self.vqvae.decode(self.sample(tf.constant(epoch)))
        with self.writer.as_default():
            tf.summary.image("samples", images, step=epoch, max_outputs=len(self.labels))
        self.writer.flush()


def load_data(args):
    """Splits of the chosen source, decoded, as batched datasets; exits with one line on bad input."""
    source = dataset.load_source(args.data, args.dataset, seed=args.seed,
                                 validation_fraction=args.validation_fraction)
    decoded, skipped = {}, 0
    for name, split in source.splits.items():
        decoded[name], bad = dataset.decoded_split(split, args.image_size, skip_bad=args.skip_bad)
        skipped += bad
    if skipped:
        print(f"Skipped {skipped} unreadable image files (--skip-bad).")
    print(f"Data: {source.kind} at {source.root}: " + ", ".join(
        f"{name} {len(split)} images of {len(set(split.patients))} patients" for name, split in source.splits.items()))
    return source, decoded


def fit(model, train, validate, epochs, logdir, checkpoint, max_minutes, extra_callbacks=()):
    """model.fit with TensorBoard, best checkpoint by validation loss, NaN and time-limit stops.

    Restores the best weights; returns (seconds spent in training steps, steps run, epochs run).
    """
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    clock = TrainingClock(max_minutes)
    callbacks = [keras.callbacks.TensorBoard(str(logdir), write_graph=False), *extra_callbacks,
                 keras.callbacks.ModelCheckpoint(str(checkpoint), monitor="val_loss", save_best_only=True,
                                                 save_weights_only=True),
                 keras.callbacks.TerminateOnNaN(), clock]
    # A progress bar on a terminal; one line per epoch in a cluster job's log file.
    verbose = 1 if sys.stdout.isatty() else 2
    history = model.fit(train, validation_data=validate, epochs=epochs, callbacks=callbacks, shuffle=False,
                        verbose=verbose)
    if any(math.isnan(loss) for loss in history.history["loss"]):
        fail(f"the training loss of {model.name} became NaN; try a lower learning rate")
    if clock.stopped:
        print(f"Stopped {model.name} after --max-minutes {max_minutes} in epoch {len(history.history['loss'])}.")
    model.load_weights(str(checkpoint))
    return clock.seconds, clock.batches, len(history.history["loss"])


def cosine_adam(learning_rate, epochs, steps_per_epoch):
    """Adam whose learning rate follows a cosine decay to a tenth of its start over the planned epochs.

    In the short runs this tool is used for, annealing gives a clearly better final model than a constant rate.
    """
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * steps_per_epoch, alpha=0.1)
    return keras.optimizers.Adam(schedule)


def train_vqvae(args, decoded, steps_per_epoch):
    """Train the VQ-VAE stage; returns the model and its test metrics."""
    model = VQVAETrainer(num_codes=args.num_codes, code_dim=args.code_dim, channels=args.channels,
                         downsamplings=args.downsamplings, res_blocks=args.res_blocks, beta=args.beta,
                         ema_decay=args.ema_decay or None, seed=args.seed)
    model.compile(optimizer=cosine_adam(args.learning_rate, args.epochs, steps_per_epoch))
    train = dataset.batched(decoded["train"], args.batch_size, shuffle=True, seed=args.seed, drop_remainder=True)
    validate = dataset.batched(decoded["validate"], args.batch_size)
    preview = next(iter(decoded["validate"].batch(8)))[0]
    logdir = Path(args.logdir) / "vqvae"
    seconds, steps, epochs = fit(model, train, validate, args.epochs, logdir,
                                 Path(f"{args.out}_checkpoints") / "vqvae.weights.h5", args.max_minutes,
                                 [ReconstructionImages(preview, logdir)])
    metrics, _, _ = evaluate_reconstructions(model, dataset.batched(decoded["test"], args.batch_size), args.num_codes)
    metrics.update(train_seconds=seconds, epochs_run=epochs, train_images_per_second=steps * args.batch_size / seconds)
    return model, metrics


def encode_split(vqvae, decoded, batch_size):
    """All code grids [N, G, G] and labels [N] of a decoded split, as numpy arrays."""
    encode = tf.function(vqvae.encode)
    codes, labels = [], []
    for images, batch_labels in dataset.batched(decoded, batch_size):
        codes.append(encode(images).numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(codes), np.concatenate(labels)


def train_prior(args, vqvae, decoded, class_names):
    """Train the gated PixelCNN on the code grids of the train split; returns the prior and its metrics."""
    codes = {name: encode_split(vqvae, decoded[name], args.batch_size) for name in ("train", "validate")}
    num_classes = len(class_names) if class_names and not args.unconditional else 0
    grid = args.image_size // vqvae.downsampling_factor
    prior = GatedPixelCNN(num_codes=args.num_codes, grid_size=grid, channels=args.prior_channels,
                          num_layers=args.prior_layers, num_classes=num_classes, name="prior")

    def as_dataset(split, shuffle):
        split_codes, split_labels = codes[split]
        inputs = (split_codes, split_labels) if num_classes else split_codes
        data = tf.data.Dataset.from_tensor_slices((inputs, split_codes))
        return dataset.batched(data, args.batch_size, shuffle=shuffle, seed=args.seed, drop_remainder=shuffle)

    steps_per_epoch = max(1, len(codes["train"][0]) // args.batch_size)
    prior.compile(optimizer=cosine_adam(args.prior_learning_rate, args.prior_epochs, steps_per_epoch),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.MeanMetricWrapper(bits_per_code, name="bits_per_code")])
    sample_labels = tf.constant([i % max(num_classes, 1) for i in range(8)], tf.int32)
    logdir = Path(args.logdir) / "prior"
    seconds, steps, epochs = fit(prior, as_dataset("train", True), as_dataset("validate", False), args.prior_epochs,
                                 logdir, Path(f"{args.out}_checkpoints") / "prior.weights.h5", args.max_minutes,
                                 [PriorSamples(vqvae, sample_labels, logdir, every=4)])
    validation = prior.evaluate(as_dataset("validate", False), verbose=0, return_dict=True)
    train_labels = codes["train"][1]
    class_counts = [int((train_labels == k).sum()) for k in range(num_classes)]
    return prior, {"prior_validation_bits_per_code": validation["bits_per_code"],
                   "prior_uniform_bits_per_code": math.log2(args.num_codes),
                   "prior_train_seconds": seconds, "prior_epochs_run": epochs,
                   "prior_conditional": bool(num_classes), "prior_class_counts": class_counts}


def load_trained_vqvae(out):
    """The VQ-VAE and its metrics from an earlier run's export at `out` (for --stage prior)."""
    path = Path(out) / "model.keras"
    if not path.exists():
        fail(f"--stage prior: no trained VQ-VAE at {path}; run with --stage vqvae (or all) first")
    return keras.models.load_model(path), json.loads((Path(out) / "metrics.json").read_text())


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    if args.stage == "prior":  # before decoding any data, so that a missing model fails at once
        vqvae, metrics = load_trained_vqvae(args.out)
    try:
        source, decoded = load_data(args)
    except dataset.DataError as error:
        fail(f"--data {error}")
    if args.stage != "prior":
        steps_per_epoch = max(1, len(source.splits["train"]) // args.batch_size)
        vqvae, metrics = train_vqvae(args, decoded, steps_per_epoch)
    prior = None
    if args.stage in ("all", "prior"):
        prior, prior_metrics = train_prior(args, vqvae, decoded, source.class_names)
        metrics.update(prior_metrics)
    config = {**vars(args), "source": source.kind, "data_root": source.root, "class_names": source.class_names,
              "split_sizes": {name: len(split) for name, split in source.splits.items()},
              "model": vqvae.get_config(), "prior": prior.get_config() if prior else None,
              "versions": {"tensorflow": tf.__version__, "keras": keras.__version__}}
    metadata = {"image_size": args.image_size, "grid": args.image_size // vqvae.downsampling_factor,
                "num_codes": args.num_codes, "class_names": source.class_names if prior and prior.num_classes else [],
                "has_prior": prior is not None}
    with atomic_directory(args.out) as tmp:
        export_savedmodel(vqvae, tmp, args.image_size, metadata, prior,
                          metrics.get("prior_class_counts") or None)
        vqvae.save(tmp / "model.keras")
        if prior is not None:
            prior.save(tmp / "prior.keras")
        write_json(tmp / "config.json", config)
        write_json(tmp / "metrics.json", metrics)
        plot_training_curves(args.logdir, tmp / "training_curves.png")
    report(args, metrics)


def report(args, metrics):
    """Print the test metrics and where every output went."""
    print(f"Test ({metrics['n_images']} images): SSIM {metrics['ssim_mean']:.4f} ± {metrics['ssim_std']:.4f}, "
          f"PSNR {metrics['psnr_mean']:.2f} dB, codes used {metrics['codes_used']}/{metrics['num_codes']}, "
          f"perplexity {metrics['perplexity']:.1f}; trained {metrics['train_seconds'] / 60:.1f} min at "
          f"{metrics['train_images_per_second']:.1f} images/s")
    if "prior_validation_bits_per_code" in metrics:
        print(f"Prior: validation NLL {metrics['prior_validation_bits_per_code']:.3f} bits per code "
              f"(uniform: {metrics['prior_uniform_bits_per_code']:.0f}); trained "
              f"{metrics['prior_train_seconds'] / 60:.1f} min")
    out = Path(args.out)
    endpoints = "encode, decode, reconstruct" + (", sample, prior_logits, log_prob"
                                                 if "prior_validation_bits_per_code" in metrics else "")
    print(f"SavedModel:  {out}  (tf.saved_model.load; {endpoints})")
    print(f"Keras:       {out / 'model.keras'}" + (f", {out / 'prior.keras'}" if (out / "prior.keras").exists() else ""))
    print(f"Config:      {out / 'config.json'}")
    print(f"Metrics:     {out / 'metrics.json'}")
    print(f"Curves:      {out / 'training_curves.png'}")
    print(f"Checkpoints: {args.out}_checkpoints/")
    print(f"TensorBoard: tensorboard --logdir {args.logdir}")


if __name__ == "__main__":
    main()
