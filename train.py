"""Train the VQ-VAE and its gated PixelCNN prior on brain MRI slices; export both as one SavedModel.

    python train.py                                  # the embedded demo (MNI152 template cohort), 128x128
    python train.py --data /data/ADNI --image-size 128 --max-minutes 15
    python train.py --data /data/OASIS --image-size 256 --batch-size 64

Outputs: the SavedModel at --out (with model.keras, prior.keras, config.json, metrics.json and
training_curves.png inside it), per-epoch checkpoints in --out_checkpoints/{vqvae,prior}/ (the latest
and the best by validation reconstruction loss), and TensorBoard logs under --logdir/vqvae and --logdir/prior
(`tensorboard --logdir logs`).

Interrupted runs (a kill, Ctrl-C, a job time limit, --max-minutes) continue from their last completed
epoch with the same command plus --resume. Ctrl-C once finishes and saves the epoch in progress, then
stops; Ctrl-C again or SIGTERM stops at once.
"""

import argparse
import hashlib
import json
import math
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow uses oneDNN's CPU kernels by itself only on CPUs with AVX-512 VNNI or AMX; on others (AMD EPYC,
# older Xeons) its own kernels train this model about 1.25x slower. TF_ENABLE_ONEDNN_OPTS=0 turns oneDNN off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

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
    model.add_argument("--ssim-weight", type=float, default=0.05,
                       help="weight of 1 - SSIM added to the squared error (default: %(default)s)")
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
    run.add_argument("--resume", action="store_true",
                     help="continue the interrupted run with this --out from its last completed epoch")
    run.add_argument("--deterministic", action="store_true",
                     help="deterministic TensorFlow ops: the same seed and data give the same metrics (slower)")
    hardware = parser.add_argument_group("hardware")
    hardware.add_argument("--strategy", default="auto", choices=["auto", "none", "mirrored", "multiworker"],
                          help="auto: MirroredStrategy over all GPUs when there are several; multiworker: "
                          "MultiWorkerMirroredStrategy configured by TF_CONFIG. --batch-size is the global "
                          "batch, split over the replicas (default: %(default)s)")
    hardware.add_argument("--mixed-precision", nargs="?", const="on", default="auto", choices=["auto", "on", "off"],
                          help="mixed_float16 compute (the quantizer stays float32); auto: on for GPUs of "
                          "compute capability 7.0 or newer, off on CPU (default: %(default)s)")
    hardware.add_argument("--jit", nargs="?", const="on", default="auto", choices=["auto", "on", "off"],
                          help="compile the training steps with XLA; auto: on with a GPU, off on CPU, where it "
                          "measured slower (default: %(default)s)")
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
    if args.ssim_weight < 0:
        parser.error(f"--ssim-weight {args.ssim_weight}: expected a weight >= 0")
    if not 0 <= args.ema_decay < 1:
        parser.error(f"--ema-decay {args.ema_decay}: expected 0 (off) or a value in (0, 1)")


def configure_hardware(args):
    """Set determinism and the dtype policy; return (distribution strategy, whether to jit-compile).

    Runs before any other TensorFlow work: the multi-worker strategy must be created first.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if args.strategy == "multiworker":
        if not os.environ.get("TF_CONFIG"):
            fail("--strategy multiworker: set TF_CONFIG on every worker (see README, 'Several GPUs and nodes')")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif args.strategy == "mirrored" or (args.strategy == "auto" and len(gpus) > 1):
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    if args.batch_size % strategy.num_replicas_in_sync:
        fail(f"--batch-size {args.batch_size}: expected a multiple of the {strategy.num_replicas_in_sync} replicas")
    if args.deterministic:
        tf.config.experimental.enable_op_determinism()
    modern_gpus = [gpu for gpu in gpus
                   if tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0)) >= (7, 0)]
    if args.mixed_precision == "on" or (args.mixed_precision == "auto" and gpus and len(modern_gpus) == len(gpus)):
        keras.mixed_precision.set_global_policy("mixed_float16")
    jit = args.jit == "on" or (args.jit == "auto" and bool(gpus))
    return strategy, jit


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


class EpochCheckpoints(keras.callbacks.Callback):
    """After every epoch, save the training state so that --resume loses at most the epoch in progress.

    The folder holds `epoch-NNNN.weights.h5` files (weights, codebook and optimizer state after epoch N) for
    the latest epoch and the best (lowest logged `monitor`), and `state.json`, which names them: each file is
    written under a temporary name and renamed, and state.json is replaced only once the files it names are
    complete, so a kill at any moment leaves the previous or the new state, never a mix.
    """

    def __init__(self, folder, state, clock, monitor):
        super().__init__()
        self.folder = Path(folder)
        self.state = state
        self.clock = clock
        self.monitor = monitor

    def on_epoch_end(self, epoch, logs=None):
        if not math.isfinite(logs.get("loss", math.nan)):
            return  # never checkpoint a diverged model; TerminateOnNaN stops the run
        latest = f"epoch-{epoch + 1:04d}.weights.h5"
        state = self.state
        state.update(epochs_done=epoch + 1, latest=latest, train_seconds=self.clock.seconds,
                     train_steps=self.clock.steps, optimizer_iterations=int(self.model.optimizer.iterations.numpy()))
        score = logs.get(self.monitor, math.nan)
        if state.get("best_score") is None or score < state["best_score"]:
            state.update(best=latest, best_score=score, best_epoch=epoch + 1, monitor=self.monitor)
        tmp = self.folder / f"tmp-{os.getpid()}.weights.h5"
        self.model.save_weights(tmp)
        os.replace(tmp, self.folder / latest)
        write_json(self.folder / "state.json", state)
        for old in self.folder.glob("epoch-*.weights.h5"):
            if old.name not in (state["latest"], state["best"]):
                old.unlink()


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


# The flags a run's checkpoints depend on: --resume refuses to continue a run that had other values.
VQVAE_SETTINGS = ("data", "dataset", "image_size", "validation_fraction", "num_codes", "code_dim", "channels",
                  "downsamplings", "res_blocks", "beta", "ema_decay", "ssim_weight", "batch_size", "learning_rate",
                  "seed")
PRIOR_SETTINGS = ("data", "dataset", "image_size", "validation_fraction", "batch_size", "seed", "prior_channels",
                  "prior_layers", "prior_learning_rate", "unconditional")


def checkpoint_state(folder, settings, resume, writer, required):
    """The saved training state of one stage to continue from, or a fresh one.

    With `resume`, the state must have been saved with the same `settings` (and must exist if `required`);
    without it, an earlier run's checkpoints in `folder` are replaced.
    """
    path = folder / "state.json"
    if resume and path.exists():
        state = json.loads(path.read_text())
        saved = state["settings"]
        for key, value in settings.items():
            if key != "vqvae_fingerprint" and saved.get(key, value) != value:
                fail(f"--resume: the run in {folder} used --{key.replace('_', '-')} {saved[key]}, not {value}")
        if saved.get("vqvae_fingerprint") == settings.get("vqvae_fingerprint"):
            print(f"Resuming from {folder} after epoch {state['epochs_done']}.")
            return state
        print(f"The VQ-VAE changed since {folder} was saved: training the prior from the start.")
    if resume and required and not path.exists():
        fail(f"--resume: no saved run at {path}; start one without --resume")
    if writer:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    return {"settings": settings, "epochs_done": 0}


def fit(model, stage, train, validate, steps_per_epoch, epochs, state, args, writer, extra_callbacks=()):
    """model.fit of one stage ("vqvae" or "prior") from the state's epoch on, with checkpoints every epoch,
    TensorBoard, and stops on NaN, on signals and at the time limit.

    Restores the best weights at the end, by the validation reconstruction loss for the VQ-VAE (its VQ
    commitment loss grows with the encoder's output scale and says nothing of quality) and by the validation
    loss for the prior; returns the TrainingClock.
    Raises KeyboardInterrupt after a Ctrl-C (the last completed epoch is saved).
    """
    folder, logdir = Path(f"{args.out}_checkpoints") / stage, Path(args.logdir) / stage
    if state["epochs_done"]:
        model.optimizer.build(model.trainable_variables)  # so that its saved state has somewhere to go
        model.load_weights(folder / state["latest"])
    # Every worker of a multi-worker run saves (saving may need them all); the others into a scratch folder.
    save_folder = folder if writer else Path(tempfile.mkdtemp(prefix="brain_vqvae_worker_checkpoints_"))
    clock = TrainingClock(args.max_minutes, state.get("train_seconds", 0.0), state.get("train_steps", 0))
    stop = StopOnSignal()
    monitor = "val_reconstruction_loss" if stage == "vqvae" else "val_loss"
    callbacks = [EpochCheckpoints(save_folder, state, clock, monitor),
                 keras.callbacks.TensorBoard(str(logdir), write_graph=False), *extra_callbacks,
                 keras.callbacks.TerminateOnNaN(), clock, stop]
    if state["epochs_done"] < epochs:
        # A progress bar on a terminal; one line per epoch in a cluster job's log file.
        history = model.fit(train, validation_data=validate, epochs=epochs, initial_epoch=state["epochs_done"],
                            steps_per_epoch=steps_per_epoch, callbacks=callbacks, shuffle=False,
                            verbose=1 if sys.stdout.isatty() else 2)
        if any(not math.isfinite(loss) for loss in history.history["loss"]):
            flag = "--learning-rate" if stage == "vqvae" else "--prior-learning-rate"
            fail(f"{flag} {getattr(args, flag[2:].replace('-', '_')):g}: the {stage} training loss became NaN in "
                 f"epoch {len(history.history['loss'])}; try a lower learning rate")
    if stop.requested:
        raise KeyboardInterrupt
    if clock.stopped:
        print(f"Stopped the {stage} training after --max-minutes {args.max_minutes} in epoch {state['epochs_done']} of "
              f"{epochs}; to train the rest, run: {resume_command()}")
    model.load_weights(save_folder / state["best"] if (save_folder / state["best"]).exists()
                       else folder / state["best"])
    return clock


def resume_command():
    """This run's command line with --resume, for the messages that say how to continue."""
    argv = [arg for arg in sys.argv[1:] if arg != "--resume"]
    return shlex.join(["python", "train.py", *argv, "--resume"])


def cosine_adam(learning_rate, epochs, steps_per_epoch):
    """Adam whose learning rate follows a cosine decay to a tenth of its start over the planned epochs.

    In the short runs this tool is used for, annealing gives a clearly better final model than a constant rate.
    """
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * steps_per_epoch, alpha=0.1)
    return keras.optimizers.Adam(schedule)


def steps_per_epoch_of(split, batch_size):
    """Full batches in one epoch of a decoded split; exits if the split is smaller than one batch."""
    size = int(split.cardinality())
    if size < batch_size:
        fail(f"--batch-size {batch_size}: the training split has only {size} images")
    return size // batch_size


def train_vqvae(args, decoded, strategy, jit, writer, extra_callbacks=()):
    """Train (or resume) the VQ-VAE stage; returns the model and its test metrics."""
    folder = Path(f"{args.out}_checkpoints") / "vqvae"
    settings = {key: getattr(args, key) for key in VQVAE_SETTINGS}
    settings["dtype_policy"] = keras.mixed_precision.global_policy().name
    state = checkpoint_state(folder, settings, args.resume, writer, required=True)
    steps_per_epoch = steps_per_epoch_of(decoded["train"], args.batch_size)
    with strategy.scope():
        model = VQVAETrainer(num_codes=args.num_codes, code_dim=args.code_dim, channels=args.channels,
                             downsamplings=args.downsamplings, res_blocks=args.res_blocks, beta=args.beta,
                             ema_decay=args.ema_decay or None, ssim_weight=args.ssim_weight, seed=args.seed)
        model.compile(optimizer=cosine_adam(args.learning_rate, args.epochs, steps_per_epoch), jit_compile=jit)
        # Images alone, without labels: Keras' fit cannot start on nested batches under multi-worker training
        # (keras-team/keras#20585), and the VQ-VAE has no use for labels.
        images = {name: decoded[name].map(lambda image, label: image) for name in ("train", "validate")}
        train = dataset.epochs_of_batches(images["train"], args.batch_size, args.seed, state["epochs_done"],
                                          args.epochs)
        validate = dataset.batched(images["validate"], args.batch_size)
        preview = next(iter(images["validate"].batch(8)))
        clock = fit(model, "vqvae", train, validate, steps_per_epoch, args.epochs, state, args, writer,
                    [ReconstructionImages(preview, Path(args.logdir) / "vqvae"), *extra_callbacks])
    metrics, _, _ = evaluate_reconstructions(model, dataset.batched(decoded["test"], args.batch_size), args.num_codes)
    metrics.update(train_seconds=clock.seconds, epochs_run=state["epochs_done"], best_epoch=state["best_epoch"],
                   train_images_per_second=clock.steps * args.batch_size / max(clock.seconds, 1e-9))
    return model, metrics


def encode_split(vqvae, decoded, batch_size):
    """All code grids [N, G, G] and labels [N] of a decoded split, as numpy arrays."""
    encode = tf.function(vqvae.encode)
    codes, labels = [], []
    for images, batch_labels in dataset.batched(decoded, batch_size):
        codes.append(encode(images).numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(codes), np.concatenate(labels)


def fingerprint(vqvae):
    """A short hash of the codebook: which VQ-VAE a prior's checkpoints were trained on."""
    return hashlib.sha256(np.asarray(vqvae.quantizer.codebook).tobytes()).hexdigest()[:16]


def train_prior(args, vqvae, decoded, class_names, strategy, jit, writer):
    """Train (or resume) the gated PixelCNN on the code grids of the train split; returns it and its metrics."""
    folder = Path(f"{args.out}_checkpoints") / "prior"
    settings = {key: getattr(args, key) for key in PRIOR_SETTINGS}
    settings.update(dtype_policy=keras.mixed_precision.global_policy().name, vqvae_fingerprint=fingerprint(vqvae))
    state = checkpoint_state(folder, settings, args.resume, writer, required=args.stage == "prior")
    codes = {name: encode_split(vqvae, decoded[name], args.batch_size) for name in ("train", "validate")}
    num_classes = len(class_names) if class_names and not args.unconditional else 0

    def pairs(split):
        split_codes, split_labels = codes[split]
        inputs = (split_codes, split_labels) if num_classes else split_codes
        return tf.data.Dataset.from_tensor_slices((inputs, split_codes))

    steps_per_epoch = steps_per_epoch_of(pairs("train"), args.batch_size)
    with strategy.scope():
        prior = GatedPixelCNN(num_codes=args.num_codes, grid_size=args.image_size // vqvae.downsampling_factor,
                              channels=args.prior_channels, num_layers=args.prior_layers, num_classes=num_classes,
                              name="prior")
        prior.compile(optimizer=cosine_adam(args.prior_learning_rate, args.prior_epochs, steps_per_epoch),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[keras.metrics.MeanMetricWrapper(bits_per_code, name="bits_per_code")],
                      jit_compile=jit)
        train = dataset.epochs_of_batches(pairs("train"), args.batch_size, args.seed, state["epochs_done"],
                                          args.prior_epochs)
        validate = dataset.batched(pairs("validate"), args.batch_size)
        sample_labels = tf.constant([i % max(num_classes, 1) for i in range(8)], tf.int32)
        clock = fit(prior, "prior", train, validate, steps_per_epoch, args.prior_epochs, state, args, writer,
                    [PriorSamples(vqvae, sample_labels, Path(args.logdir) / "prior", every=4)])
    validation = prior.evaluate(validate, verbose=0, return_dict=True)
    train_labels = codes["train"][1]
    class_counts = [int((train_labels == k).sum()) for k in range(num_classes)]
    return prior, {"prior_validation_bits_per_code": validation["bits_per_code"],
                   "prior_uniform_bits_per_code": math.log2(args.num_codes),
                   "prior_train_seconds": clock.seconds, "prior_epochs_run": state["epochs_done"],
                   "prior_conditional": bool(num_classes), "prior_class_counts": class_counts}


def load_trained_vqvae(out):
    """The VQ-VAE and its metrics from an earlier run's export at `out` (for --stage prior)."""
    path = Path(out) / "model.keras"
    if not path.exists():
        fail(f"--stage prior: no trained VQ-VAE at {path}; run with --stage vqvae (or all) first")
    return keras.models.load_model(path), json.loads((Path(out) / "metrics.json").read_text())


def main(argv=None):
    args = parse_args(argv)
    strategy, jit = configure_hardware(args)
    keras.utils.set_random_seed(args.seed)
    writer = strategy.extended.should_checkpoint  # False only on the non-chief workers of a multi-worker run
    replicas = strategy.num_replicas_in_sync
    if not writer:  # the other workers log to a scratch folder; the chief writes every output
        args.logdir = tempfile.mkdtemp(prefix="brain_vqvae_worker_logs_")
    if args.stage == "prior":  # before decoding any data, so that a missing model fails at once
        vqvae, metrics = load_trained_vqvae(args.out)
    try:
        source, decoded = load_data(args)
    except dataset.DataError as error:
        fail(f"--data {error}")
    try:
        if args.stage != "prior":
            vqvae, metrics = train_vqvae(args, decoded, strategy, jit, writer)
        prior = None
        if args.stage in ("all", "prior") and writer:
            # The prior over small code grids is a few percent of the work; a multi-worker run trains it on
            # the chief alone, whose local devices suffice (and Keras 3 cannot fit its nested batches there).
            if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
                strategy = tf.distribute.get_strategy()
            prior, prior_metrics = train_prior(args, vqvae, decoded, source.class_names, strategy, jit, writer)
            metrics.update(prior_metrics)
    except KeyboardInterrupt:
        print(f"Interrupted; the last completed epoch is saved in {args.out}_checkpoints/. To continue, run: "
              f"{resume_command()}", file=sys.stderr)
        sys.exit(130)
    if not writer:
        print("Training done; the chief worker writes the outputs.")
        return
    config = {**vars(args), "source": source.kind, "data_root": source.root, "class_names": source.class_names,
              "split_sizes": {name: len(split) for name, split in source.splits.items()},
              "dtype_policy": keras.mixed_precision.global_policy().name, "jit_compile": jit,
              "replicas": replicas,
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
    prior = f", {out / 'prior.keras'}" if (out / "prior.keras").exists() else ""
    print(f"Keras:       {out / 'model.keras'}{prior}")
    print(f"Config:      {out / 'config.json'}")
    print(f"Metrics:     {out / 'metrics.json'}")
    print(f"Curves:      {out / 'training_curves.png'}")
    print(f"Checkpoints: {args.out}_checkpoints/  (--resume continues from the latest epoch)")
    print(f"TensorBoard: tensorboard --logdir {args.logdir}")


if __name__ == "__main__":
    main()
