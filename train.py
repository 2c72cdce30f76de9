"""Train the VQ-VAE on brain MRI slices and export it as a SavedModel.

    python train.py                                  # the embedded demo (MNI152 template cohort), 128x128
    python train.py --data /data/ADNI --image-size 128 --max-minutes 15
    python train.py --data /data/OASIS --image-size 256 --batch-size 64

Outputs: the SavedModel at --out (with model.keras, config.json and metrics.json inside it), the best
checkpoint beside it, and TensorBoard logs under --logdir (`tensorboard --logdir logs`).
"""

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import dataset  # noqa: E402
from modules import VQVAETrainer  # noqa: E402
from utils import atomic_directory, evaluate_reconstructions, export_savedmodel, fail, write_json  # noqa: E402


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
    run = parser.add_argument_group("training")
    run.add_argument("--stage", default="all", choices=["all", "vqvae"],
                     help="what to train (default: %(default)s; the prior stage arrives with the prior)")
    run.add_argument("--epochs", type=int, default=12, help="epochs of the VQ-VAE (default: %(default)s)")
    run.add_argument("--batch-size", type=int, default=16, help="images per step (default: %(default)s)")
    run.add_argument("--learning-rate", type=float, default=2e-3, help="Adam learning rate (default: %(default)s)")
    run.add_argument("--max-minutes", type=float, help="stop training cleanly after this many minutes")
    run.add_argument("--seed", type=int, default=0, help="seed for data splits, shuffling and weights")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--out", default="saved_models/vqvae", help="SavedModel folder (default: %(default)s)")
    outputs.add_argument("--logdir", default="logs/vqvae", help="TensorBoard folder (default: %(default)s)")
    args = parser.parse_args(argv)
    _check_args(parser, args)
    return args


def _check_args(parser, args):
    factor = 2 ** args.downsamplings
    if args.downsamplings < 1:
        parser.error(f"--downsamplings {args.downsamplings}: expected 1 or more")
    if args.image_size < 16 or args.image_size % factor:
        parser.error(f"--image-size {args.image_size}: expected a multiple of 2^downsamplings = {factor}, at least 16")
    for flag in ("num_codes", "code_dim", "channels", "batch_size", "epochs"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected a positive integer")
    if args.num_codes < 2:
        parser.error(f"--num-codes {args.num_codes}: expected at least 2")
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


def build_model(args, steps_per_epoch):
    """A compiled VQVAETrainer from the command line's model flags.

    The learning rate follows a cosine decay to a tenth of --learning-rate over the planned epochs: in the
    short runs this tool is used for, annealing gives a clearly better final model than a constant rate.
    """
    model = VQVAETrainer(num_codes=args.num_codes, code_dim=args.code_dim, channels=args.channels,
                         downsamplings=args.downsamplings, res_blocks=args.res_blocks, beta=args.beta,
                         ema_decay=args.ema_decay or None, seed=args.seed)
    schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate, args.epochs * steps_per_epoch, alpha=0.1)
    model.compile(optimizer=keras.optimizers.Adam(schedule))
    return model


def train_vqvae(args, model, decoded):
    """Fit with TensorBoard, best-checkpoint and time-limit callbacks; restores the best weights."""
    train = dataset.batched(decoded["train"], args.batch_size, shuffle=True, seed=args.seed, drop_remainder=True)
    validate = dataset.batched(decoded["validate"], args.batch_size)
    checkpoint = Path(f"{args.out}_checkpoints") / "best.weights.h5"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    preview = next(iter(decoded["validate"].batch(8)))[0]
    clock = TrainingClock(args.max_minutes)
    callbacks = [
        keras.callbacks.TensorBoard(args.logdir, write_graph=False),
        ReconstructionImages(preview, args.logdir),
        keras.callbacks.ModelCheckpoint(str(checkpoint), monitor="val_loss", save_best_only=True,
                                        save_weights_only=True),
        keras.callbacks.TerminateOnNaN(),
        clock,
    ]
    history = model.fit(train, validation_data=validate, epochs=args.epochs, callbacks=callbacks, shuffle=False)
    if any(math.isnan(loss) for loss in history.history["loss"]):
        fail("the training loss became NaN; try a lower --learning-rate")
    if clock.stopped:
        print(f"Stopped after --max-minutes {args.max_minutes} in epoch {len(history.history['loss'])}.")
    model.load_weights(str(checkpoint))
    return {"train_seconds": clock.seconds, "epochs_run": len(history.history["loss"]),
            "train_images_per_second": clock.batches * args.batch_size / max(clock.seconds, 1e-9),
            "checkpoint": str(checkpoint)}


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    try:
        source, decoded = load_data(args)
    except dataset.DataError as error:
        fail(str(error))
    model = build_model(args, steps_per_epoch=max(1, len(source.splits["train"]) // args.batch_size))
    run = train_vqvae(args, model, decoded)
    metrics, _ = evaluate_reconstructions(model, dataset.batched(decoded["test"], args.batch_size))
    metrics.update({key: run[key] for key in ("train_seconds", "epochs_run", "train_images_per_second")})
    config = {**vars(args), "source": source.kind, "data_root": source.root, "class_names": source.class_names,
              "split_sizes": {name: len(split) for name, split in source.splits.items()},
              "model": model.get_config(), "versions": {"tensorflow": tf.__version__, "keras": keras.__version__}}
    with atomic_directory(args.out) as tmp:
        export_savedmodel(model, tmp, args.image_size,
                          {"image_size": args.image_size, "class_names": source.class_names,
                           "num_codes": args.num_codes, "grid": args.image_size // model.downsampling_factor})
        model.save(tmp / "model.keras")
        write_json(tmp / "config.json", config)
        write_json(tmp / "metrics.json", metrics)
    print(f"Test ({metrics['n_images']} images): SSIM {metrics['ssim_mean']:.4f} ± {metrics['ssim_std']:.4f}, "
          f"PSNR {metrics['psnr_mean']:.2f} dB, codes used {metrics['codes_used']}/{args.num_codes}, "
          f"perplexity {metrics['perplexity']:.1f}; trained {run['train_seconds'] / 60:.1f} min at "
          f"{run['train_images_per_second']:.1f} images/s")
    print(f"SavedModel:  {args.out}  (tf.saved_model.load; encode, decode, reconstruct)")
    print(f"Keras model: {Path(args.out) / 'model.keras'}")
    print(f"Config:      {Path(args.out) / 'config.json'}")
    print(f"Metrics:     {Path(args.out) / 'metrics.json'}")
    print(f"Checkpoint:  {run['checkpoint']}")
    print(f"TensorBoard: tensorboard --logdir {args.logdir}")


if __name__ == "__main__":
    main()
