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

import runtime  # noqa: F401  (first: it sets TensorFlow's environment before TensorFlow loads)

import argparse
import collections
import dataclasses
import functools
import hashlib
import json
import math
import os
import shlex
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import dataset
import orders
import settings
from callbacks import PriorSamples, ReconstructionImages
from figures import training_curves_figure
from export import PRIOR_ENDPOINTS, export_savedmodel
from metrics import evaluate_reconstructions, psnr_text
from hierarchy import HierarchicalPrior
from modules import VQVAETrainer
from prior import GatedPixelCNN, bits_per_code
from denoiser import fit_denoiser
from texture import fit_texture
from stages import Run, Stage, cosine_adam, fit_stage, resume_command, stage_batches
from utils import atomic_directory, describe, fail, first_line, mark_as_ours, marker_of, write_json


def build_parser():
    """The command line: every flag is declared in settings.py."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    settings.add_arguments(parser)
    return parser


def parse_args(argv=None):
    """The checked command line; with no flags it trains on the embedded demo."""
    parser = build_parser()
    args = parser.parse_args(argv)
    settings.check_arguments(parser, args)
    return args


def configure_hardware(args):
    """Set determinism and the dtype policy; return (distribution strategy, whether to jit-compile).

    Runs before any other TensorFlow work: the multi-worker strategy must be created first.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if args.strategy == "multiworker":
        if not os.environ.get("TF_CONFIG"):
            fail("--strategy multiworker: set TF_CONFIG on every worker (see docs/gpus.md, 'Several GPUs and nodes')")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif args.strategy == "mirrored" or (args.strategy == "auto" and len(gpus) > 1):
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    for flag in ("batch_size", "prior_batch_size"):
        if getattr(args, flag) % strategy.num_replicas_in_sync:
            fail(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected a multiple of the "
                 f"{strategy.num_replicas_in_sync} replicas")
    if args.deterministic:
        tf.config.experimental.enable_op_determinism()
    modern_gpus = [gpu for gpu in gpus
                   if tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0)) >= (7, 0)]
    if args.mixed_precision == "on" or (args.mixed_precision == "auto" and gpus and len(modern_gpus) == len(gpus)):
        keras.mixed_precision.set_global_policy("mixed_float16")
    jit = args.jit == "on" or (args.jit == "auto" and bool(gpus))
    return strategy, jit


def workers_of(strategy):
    """How many workers train together: more than one only under a multi-worker strategy."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    return sum(len(tasks) for tasks in strategy.cluster_resolver.cluster_spec().as_dict().values())


Data = collections.namedtuple("Data", ["source", "decoded", "fingerprint"])
Data.__doc__ = """The data of a run: the source and its splits, each split decoded to a dataset of (image, label),
and the fingerprint of the splits that --resume checks."""


def load_data(args):
    """The chosen source and its splits, decoded; exits with one line on bad input."""
    try:
        source = dataset.load_source(args.data, args.dataset, seed=args.seed,
                                     validation_fraction=args.validation_fraction, axis=args.axis,
                                     slices=args.slices)
        decoded = {name: dataset.decoded_split(split, args.image_size, skip_bad=args.skip_bad)
                   for name, split in source.splits.items()}
    except dataset.UnreadableImages as error:
        fail(f"--data {error}, or pass --skip-bad")
    except dataset.DataError as error:
        fail(f"--data {error}")
    skipped = sum(split.skipped for split in decoded.values())
    if skipped:
        print(f"Skipped {skipped} unreadable image files (--skip-bad).")
    upscaled = sum(split.upscaled for split in decoded.values())
    if upscaled:
        print(f"Note: {upscaled} images are smaller than --image-size {args.image_size} and were upscaled to it.")
    print(f"Data: {source.kind} at {source.root}: " + ", ".join(
        f"{name} {int(decoded[name].images.cardinality())} images of {len(set(split.patients))} patients"
        + (f" ({len(split) - decoded[name].skipped} volumes, {split.axis} slices)" if split.axis else "")
        for name, split in source.splits.items()))
    images = {name: split.images for name, split in decoded.items()}
    check_batch_sizes(args, int(images["train"].cardinality()))
    return Data(source, images, dataset.data_fingerprint(source))


def check_batch_sizes(args, train_size):
    """Exit with one line, before any training, if the batch of a stage that --stage trains is larger than
    the training split (`train_size` images, or code grids for the prior)."""
    trained = {"batch_size": args.stage != "prior", "prior_batch_size": args.stage != "vqvae"}
    for name, trains in trained.items():
        if trains and getattr(args, name) > train_size:
            fail(f"--{name.replace('_', '-')} {getattr(args, name)}: the training split has only {train_size} "
                 f"images; expected at most that")


def train_vqvae(args, data, run, extra_callbacks=()):
    """Train (or resume) the VQ-VAE stage; returns the model and its test metrics."""
    stage = Stage("vqvae", args.epochs, "val_reconstruction_loss", "--learning-rate", args.learning_rate)
    # The VQ commitment loss grows with the encoder's output scale and says nothing of quality: the best epoch
    # is picked by the validation reconstruction loss, not the total.
    stage_settings = {**settings.checkpoint_settings(args, stage.name),
                      "dtype_policy": keras.mixed_precision.global_policy().name}
    state = run.open_checkpoints(stage.name, stage_settings, args.resume, required=True, data=data.fingerprint)
    decoded = data.decoded
    # Images alone, without labels: Keras' fit cannot start on nested batches under multi-worker training
    # (keras-team/keras#20585), and the VQ-VAE has no use for labels.
    images = {name: decoded[name].map(lambda image, label: image) for name in ("train", "validate")}
    batches = stage_batches(images["train"], images["validate"], args.batch_size, args.seed, state.epochs_done,
                            args.epochs)
    preview = next(iter(images["validate"].batch(8)))
    with run.strategy.scope():
        model = VQVAETrainer(**settings.model_arguments(args, settings.VQVAE))
        model.logs_with_batch_axis = workers_of(run.strategy) > 1
        model.compile(optimizer=cosine_adam(args.learning_rate, args.epochs, batches.steps_per_epoch),
                      jit_compile=run.jit)
        clock = fit_stage(model, stage, state, batches, run,
                          [ReconstructionImages(preview, run.log_folder(stage.name)), *extra_callbacks])
    test = dataset.batched(decoded["test"], args.batch_size)
    metrics, _, _ = evaluate_reconstructions(model, test, model.quantizer.num_codes)
    metrics.update(train_seconds=clock.seconds, epochs_run=state.epochs_done, best_epoch=state.best_epoch,
                   train_images_per_second=clock.steps * args.batch_size / max(clock.seconds, 1e-9))
    return model, metrics


def encode_split(vqvae, decoded, batch_size):
    """The code grids of each level ([N, G, G], or [N, T, T] and [N, G, G]) and the labels [N] of a decoded
    split, as numpy arrays."""
    encode = tf.function(vqvae.encode_levels)
    levels, labels = [], []
    for images, batch_labels in dataset.batched(decoded, batch_size):
        levels.append([codes.numpy() for codes in encode(images)])
        labels.append(batch_labels.numpy())
    return [np.concatenate(level) for level in zip(*levels)], np.concatenate(labels)


def vqvae_fingerprint(vqvae):
    """A short hash of the codebook: which VQ-VAE a prior's checkpoints were trained on."""
    return hashlib.sha256(np.asarray(vqvae.quantizer.codebook).tobytes()).hexdigest()[:16]


def train_prior(args, vqvae, texture, data, run):
    """Train (or resume) the prior on the code grids of the train split: a gated PixelCNN, or for a
    hierarchical VQ-VAE one over the top grid and then one over the bottom grid given the top codes; returns
    the prior and its metrics."""
    class_names = data.source.class_names
    num_classes = len(class_names) if class_names and not args.unconditional else 0
    codes = {name: encode_split(vqvae, data.decoded[name], args.batch_size) for name in ("train", "validate")}
    grid = args.image_size // vqvae.downsampling_factor
    shape = dict(num_codes=vqvae.quantizer.num_codes, num_classes=num_classes,
                 **settings.model_arguments(args, settings.PRIOR))
    samples = functools.partial(PriorSamples, vqvae, texture, tf.constant([i % max(num_classes, 1) for i in range(8)]),
                                run.log_folder("prior"), every=4)
    stage = Stage("prior", args.prior_epochs, "val_loss", "--prior-learning-rate", args.prior_learning_rate)
    if not vqvae.hierarchical:
        return fit_prior(args, vqvae, data, run, stage, lambda: GatedPixelCNN(name="prior", grid_size=grid, **shape),
                         codes, samples)
    top_grid = grid // vqvae.top_factor
    top_stage = dataclasses.replace(stage, name="top_prior", epochs=args.top_prior_epochs)
    # The top grid is small: attention over every top code costs little.
    top, top_metrics = fit_prior(args, vqvae, data, run, top_stage, lambda: GatedPixelCNN(
        name="top_prior", grid_size=top_grid, **{**shape, "attention_pool": 1}), codes, level=0)
    bottom, metrics = fit_prior(args, vqvae, data, run, stage, lambda: GatedPixelCNN(
        name="prior", grid_size=grid, condition_grid=top_grid, condition_codes=vqvae.top_quantizer.num_codes,
        **shape), codes, functools.partial(samples, top_prior=top))
    metrics.update({f"prior_top_{name[len('prior_'):]}": value for name, value in top_metrics.items()
                    if name.endswith(("bits_per_code", "seconds", "epochs_run"))})
    return HierarchicalPrior(top, bottom, name="hierarchical_prior"), metrics


def fit_prior(args, vqvae, data, run, stage, build, codes, samples=None, level=-1):
    """Train (or resume) one prior, made by `build()`, on the code grids of one `level` of `codes` (a split's
    (levels, labels)); a conditioned prior gets the top level's codes too. Returns the prior and its metrics."""
    stage_settings = {**settings.checkpoint_settings(args, "prior"), "vqvae_fingerprint": vqvae_fingerprint(vqvae),
                      "dtype_policy": keras.mixed_precision.global_policy().name}
    state = run.open_checkpoints(stage.name, stage_settings, args.resume, required=args.stage == "prior",
                                 data=data.fingerprint)
    with run.strategy.scope():
        prior = build()
        pairs = {name: code_pairs(prior, *codes[name], level) for name in codes}
        batches = stage_batches(pairs["train"], pairs["validate"], args.prior_batch_size, args.seed,
                                state.epochs_done, stage.epochs, turned_by_random_orders(prior))
        prior.compile(optimizer=cosine_adam(stage.learning_rate, stage.epochs, batches.steps_per_epoch),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[keras.metrics.MeanMetricWrapper(bits_per_code, name="bits_per_code")],
                      jit_compile=run.jit)
        clock = fit_stage(prior, stage, state, batches, run, [samples()] if samples else [])
    validation = prior.evaluate(batches.validate, verbose=0, return_dict=True)
    train_labels = codes["train"][1]
    return prior, {"prior_validation_bits_per_code": validation["bits_per_code"],
                   "prior_uniform_bits_per_code": math.log2(prior.num_codes),
                   "prior_train_seconds": clock.seconds, "prior_epochs_run": state.epochs_done,
                   "prior_conditional": bool(prior.num_classes),
                   "prior_class_counts": [int((train_labels == k).sum()) for k in range(prior.num_classes)]}


def code_pairs(prior, levels, labels, level):
    """(prior inputs, target codes) pairs of a split's code grids at `level`: the inputs add the top codes
    for a conditioned prior and the labels for a class-conditional one."""
    return tf.data.Dataset.from_tensor_slices((prior.inputs_of(levels[level], labels, levels[0]), levels[level]))


def turned_by_random_orders(prior):
    """For a prior of several scan orders, what turns each training pair (inputs, target) by one of them drawn
    from its stateless seed, labelled with that order (`orders`); None for a prior of one order. Validation
    stays in order 0, so that its figures compare with a prior of one order."""
    if prior.scan_orders == 1:
        return None

    def turn(pair, seed):
        (*grids, labels), target = pair
        order = orders.random_orders(1, tf.cast(tf.stack(seed), tf.int64), prior.scan_orders)
        turned = [orders.orient(grid[None], order)[0] for grid in (*grids, target)]
        return (*turned[:-1], labels + order[0] * max(prior.num_classes, 1)), turned[-1]
    return turn


def load_trained_vqvae(out):
    """The VQ-VAE and its metrics from an earlier run's export at `out` (for --stage prior)."""
    path = Path(out) / "model.keras"
    if not path.exists():
        fail(f"--stage prior: no trained VQ-VAE at {path}; run with --stage vqvae (or all) first")
    return keras.models.load_model(path), json.loads((Path(out) / "metrics.json").read_text())


def main(argv=None):
    """`python train.py`: check the outputs, load the data, train the stages, export, report."""
    args = parse_args(argv)
    strategy, jit = configure_hardware(args)
    keras.utils.set_random_seed(args.seed)
    run = Run.of(args, strategy, jit)
    with run.claim_outputs():
        # --stage prior loads the VQ-VAE before decoding any data, so that a missing model fails at once.
        trained = load_trained_vqvae(run.out) if args.stage == "prior" else None
        data = load_data(args)
        try:
            vqvae, texture, denoiser, prior, metrics = train_stages(args, run, data, trained)
        except KeyboardInterrupt:
            print(f"Interrupted; the last completed epoch is saved in {run.checkpoints}/. To continue, run: "
                  f"{resume_command()}", file=sys.stderr)
            sys.exit(130)
        if not run.is_chief:
            print("Training done; the chief worker writes the outputs.")
            return
        export_run(args, run, data, vqvae, texture, denoiser, prior, metrics)
    report(run, metrics)


def train_stages(args, run, data, trained=None):
    """Train the stages that --stage names, starting from the `trained` (VQ-VAE, metrics) for --stage prior;
    returns the VQ-VAE, its texture and denoiser fitted on the training split (None on workers other than the
    chief), the prior (None if not trained here) and their metrics."""
    vqvae, metrics = trained or train_vqvae(args, data, run)
    texture = denoiser = None
    if run.is_chief:
        slices = texture_slices(data.decoded["train"])
        texture, denoiser = fit_texture(vqvae, slices), fit_denoiser(vqvae, slices)
    prior = None
    if args.stage in ("all", "prior") and run.is_chief:
        # The prior over small code grids is a small part of the work; a multi-worker run trains it on the
        # chief alone, whose local devices suffice (and Keras 3 cannot fit its nested batches there).
        prior, prior_metrics = train_prior(args, vqvae, texture, data, run.on_chief_alone())
        metrics.update(prior_metrics)
    return vqvae, texture, denoiser, prior, metrics


def export_run(args, run, data, vqvae, texture, denoiser, prior, metrics):
    """Write the SavedModel, the Keras models, config.json, metrics.json and the training curves to --out,
    all at once (atomically); exits with one line if --out cannot be written."""
    source = data.source
    config = {**vars(args), "source": source.kind, "data_root": os.path.abspath(source.root),
              "data_fingerprint": data.fingerprint, "class_names": source.class_names,
              "split_sizes": {name: len(split) for name, split in source.splits.items()},
              "dtype_policy": keras.mixed_precision.global_policy().name, "jit_compile": run.jit,
              "replicas": run.strategy.num_replicas_in_sync,
              "model": vqvae.get_config(), "prior": prior.get_config() if prior else None,
              "versions": {"tensorflow": tf.__version__, "keras": keras.__version__}}
    grid = args.image_size // vqvae.downsampling_factor
    metadata = {"image_size": args.image_size, "grid": grid,
                "top_grid": grid // vqvae.top_factor if vqvae.hierarchical else 0,
                "num_codes": vqvae.quantizer.num_codes, "has_prior": prior is not None,
                "class_names": source.class_names if prior and prior.num_classes else [],
                "class_counts": metrics.get("prior_class_counts") or [], "has_texture": True,
                "has_denoiser": True, "scan_orders": prior.scan_orders if prior else 0}
    record = marker_of(run.out)
    foreign = record is None and run.out.exists() and (not run.out.is_dir() or any(run.out.iterdir()))
    if foreign or (record is not None and record.get("kind") != "export"):  # it appeared while this run trained
        what = describe(record) if record is not None else "something that this tool did not write"
        fail(f"--out {run.out}: {what} appeared there during training; move it away and run: {resume_command()}")
    try:
        with atomic_directory(run.out) as tmp:
            export_savedmodel(vqvae, tmp, args.image_size, metadata, prior, metadata["class_counts"] or None,
                              texture, denoiser)
            vqvae.save(tmp / "model.keras")
            if prior is not None:
                prior.save(tmp / "prior.keras")
            write_json(tmp / "config.json", config)
            write_json(tmp / "metrics.json", metrics)
            training_curves_figure(run.logdir).savefig(tmp / "training_curves.png", dpi=100)
            mark_as_ours(tmp, "export")
    except (OSError, tf.errors.ResourceExhaustedError) as error:  # TensorFlow's writes raise the latter on a full disk
        fail(f"--out {run.out}: cannot write the export ({first_line(error)}); the checkpoints are kept in "
             f"{run.checkpoints}/, so free some space or fix it and run: {resume_command()}")


def texture_slices(decoded, count=512):
    """About `count` training images (numpy) to fit the decoder's texture and the denoiser on: spread over the
    split where its size is known, else its first `count` (slices of volumes, counted only as they are read)."""
    total = int(decoded.cardinality())
    every = max(1, total // count) if total > 0 else 1
    return np.stack([image for image, _ in decoded.shard(every, 0).take(count).as_numpy_iterator()])


def report(run, metrics):
    """Print the test metrics and where every output went."""
    print(f"Test ({metrics['n_images']} images): SSIM {metrics['ssim_mean']:.4f} ± {metrics['ssim_std']:.4f}, "
          f"{psnr_text(metrics)}, codes used {metrics['codes_used']}/{metrics['num_codes']}, "
          f"perplexity {metrics['perplexity']:.1f}; trained {metrics['train_seconds'] / 60:.1f} min at "
          f"{metrics['train_images_per_second']:.1f} images/s")
    top = "prior_top_validation_bits_per_code" in metrics
    if "prior_validation_bits_per_code" in metrics:
        print(f"Prior: validation NLL {metrics['prior_validation_bits_per_code']:.3f} bits per code "
              f"(uniform: {metrics['prior_uniform_bits_per_code']:.0f}"
              + (f"; top level {metrics['prior_top_validation_bits_per_code']:.3f}" if top else "") + "); trained "
              f"{(metrics['prior_train_seconds'] + metrics.get('prior_top_train_seconds', 0)) / 60:.1f} min")
    out = run.out
    prior_endpoints = list(PRIOR_ENDPOINTS) if "prior_validation_bits_per_code" in metrics else []
    prior_endpoints += [f"top_{name}" for name in prior_endpoints if name.startswith("prior_")] if top else []
    endpoints = ", ".join(["encode", *(["encode_top"] if top else []),
                           "decode, reconstruct, texture, denoise, noise_sigma", *prior_endpoints])
    print(f"SavedModel:  {out}  (tf.saved_model.load; {endpoints})")
    prior = f", {out / 'prior.keras'}" if (out / "prior.keras").exists() else ""
    print(f"Keras:       {out / 'model.keras'}{prior}")
    print(f"Run record:  {out / 'config.json'}, {out / 'metrics.json'}, {out / 'training_curves.png'}")
    print(f"Checkpoints: {run.checkpoints}/  (--resume continues from the latest epoch)")
    print(f"TensorBoard: tensorboard --logdir {shlex.quote(str(run.logdir))}")


if __name__ == "__main__":
    main()
