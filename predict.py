"""Use an exported model: generate new brain slices, or reconstruct test slices.

    python predict.py --reconstruct /data/ADNI           # test inputs above their reconstructions, with SSIM
    python predict.py --evaluate /data/ADNI              # metrics JSON, per-image CSV and figures of a split
    python predict.py --curves logs                      # train/validation loss, SSIM and prior NLL per epoch
    python predict.py --n 16                             # 16 new slices from the prior, one PNG each and a grid
    python predict.py --n 16 --label AD                  # of one class, for a class-conditional (ADNI) model

Only the SavedModel written by train.py is loaded (and, for --curves, its TensorBoard logs).
"""

import runtime  # noqa: F401  (first: it sets TensorFlow's environment before TensorFlow loads)

import argparse
import csv
import math
from pathlib import Path

import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure

import dataset
from curves import plot_training_curves
from export import load_export
from metrics import evaluate_reconstructions, ssim
from utils import fail, write_json


def parse_args(argv=None):
    """The command line; with no flags it uses train.py's default export."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="saved_models/vqvae", help="SavedModel folder (default: %(default)s)")
    parser.add_argument("--out", default="saved_models/predictions", help="output folder (default: %(default)s)")
    parser.add_argument("--n", type=int, default=16, help="how many images to generate or show (default: %(default)s)")
    parser.add_argument("--reconstruct", metavar="DATA",
                        help="show test slices of DATA (or 'demo') above their reconstructions")
    parser.add_argument("--evaluate", metavar="DATA", help="evaluate on a split of DATA (or 'demo'): metrics "
                        "JSON, per-image CSV, best/median/worst figure and codebook-usage histogram")
    parser.add_argument("--curves", metavar="LOGDIR", help="plot the training curves of train.py's --logdir")
    parser.add_argument("--split", default="test", choices=dataset.SPLITS, help="split to evaluate (default: test)")
    parser.add_argument("--metrics-out", help="metrics JSON of --evaluate (default: OUT/evaluation_SPLIT.json)")
    parser.add_argument("--label", help="class to generate, e.g. AD or NC (conditional models only)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature; lower is more conservative (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler and of the data split")
    args = parser.parse_args(argv)
    if args.n <= 0:
        parser.error(f"--n {args.n}: expected a positive number of images")
    if args.temperature <= 0:
        parser.error(f"--temperature {args.temperature}: expected a positive number")
    return args


def open_model(path):
    """The export at `path` and its metadata; exits with one line if it is not one of this project's."""
    try:
        return load_export(path)
    except ValueError as error:
        hint = f" (train one with `python train.py --out {path}`)" if "no SavedModel" in str(error) else ""
        fail(f"--model {error}{hint}")


def load_split(flag, data, split, image_size, seed):
    """(source, decoded dataset) of one split of DATA ('demo' for the embedded demo); exits on bad input."""
    try:
        source = dataset.load_source(None if data == "demo" else data, seed=seed)
        return source, dataset.decoded_split(source.splits[split], image_size)[0]
    except dataset.DataError as error:
        fail(f"{flag} {error}")


def reconstruct_figure(model, metadata, data, n, seed, out):
    """Write a figure of `n` test slices above their reconstructions, each annotated with its SSIM."""
    source, decoded = load_split("--reconstruct", data, "test", metadata["image_size"], seed)
    test = len(source.splits["test"])
    step = max(1, test // n)  # spread the picks over the whole split (and so over its patients)
    images = np.stack([image for image, _ in decoded.as_numpy_iterator()][::step][:n])
    reconstructions = model.reconstruct(tf.constant(images)).numpy()
    scores = ssim(images, reconstructions).numpy()
    figure = Figure(figsize=(1.6 * len(images), 3.6))
    axes = figure.subplots(2, len(images), squeeze=False)
    for column, (image, reconstruction, score) in enumerate(zip(images, reconstructions, scores)):
        axes[0, column].imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
        axes[1, column].imshow(reconstruction[..., 0], cmap="gray", vmin=0, vmax=1)
        axes[1, column].set_title(f"SSIM {score:.3f}", fontsize=8)
    for axis in axes.flat:
        axis.axis("off")
    figure.suptitle(f"{source.kind} test slices (top) and reconstructions (bottom); mean SSIM {scores.mean():.3f}",
                    fontsize=9)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"reconstructions_{source.kind}.png"
    figure.savefig(path, dpi=100, bbox_inches="tight")
    return path


def generate(model, metadata, args, out):
    """Sample `args.n` new slices; write them one PNG each and as a grid. Returns (grid path, image paths)."""
    if not metadata.get("has_prior"):
        fail(f"--model {args.model}: this export has no prior to sample from; "
             f"use --reconstruct DATA, or train one with train.py --stage prior")
    classes = metadata["class_names"]
    if args.label is not None and not classes:
        fail(f"--label {args.label}: the model at {args.model} is not class-conditional")
    if args.label is not None and args.label not in classes:
        fail(f"--label {args.label}: expected one of {', '.join(classes)}")
    n, temperature, seed = tf.constant(args.n), tf.constant(args.temperature), tf.constant(args.seed)
    if args.label is not None:
        images = model.sample_class(n, tf.constant(classes.index(args.label)), temperature, seed).numpy()
    else:
        images = model.sample(n, temperature, seed).numpy()
    out.mkdir(parents=True, exist_ok=True)
    stem = f"sample_{args.label}" if args.label else "sample"
    paths = []
    for index, image in enumerate(images):
        paths.append(out / f"{stem}_{index:03d}.png")
        tf.io.write_file(str(paths[-1]), tf.io.encode_png(tf.cast(tf.round(image * 255), tf.uint8)))
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    figure = Figure(figsize=(1.6 * columns, 1.6 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image in zip(axes.flat, images):
        axis.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    figure.suptitle(f"{args.label or 'generated'} (temperature {args.temperature}, seed {args.seed})", fontsize=9)
    grid_path = out / f"{stem}_grid.png"
    figure.savefig(grid_path, dpi=100, bbox_inches="tight")
    return grid_path, paths


def evaluate_split(model, metadata, args, out):
    """Evaluate one split: metrics JSON, per-image CSV, best/median/worst figure, codebook histogram."""
    source, decoded = load_split("--evaluate", args.evaluate, args.split, metadata["image_size"], args.seed)
    conditional = bool(metadata["class_names"])
    log_prob = None
    if metadata.get("has_prior"):
        log_prob = (lambda images, labels: model.log_prob(images, labels)) if conditional else \
            (lambda images, labels: model.log_prob(images))
    summary, per_image, counts = evaluate_reconstructions(model, dataset.batched(decoded, 32),
                                                         metadata["num_codes"], log_prob)
    summary.update(data=source.root, source=source.kind, split=args.split, model=str(args.model))
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": Path(args.metrics_out or out / f"evaluation_{args.split}.json"),
             "csv": out / f"evaluation_{args.split}.csv",
             "examples": out / f"evaluation_{args.split}_examples.png",
             "codebook": out / f"evaluation_{args.split}_codebook_usage.png"}
    paths["metrics"].parent.mkdir(parents=True, exist_ok=True)
    write_json(paths["metrics"], summary)
    split = source.splits[args.split]
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "patient", "label", *per_image])
        for row, (file, patient, label) in enumerate(zip(split.files, split.patients, split.labels)):
            name = source.class_names[label] if label >= 0 and source.class_names else ""
            writer.writerow([file, patient, name, *(f"{values[row]:.6g}" for values in per_image.values())])
    examples_figure(model, decoded, per_image["ssim"], paths["examples"])
    codebook_figure(counts, paths["codebook"])
    return summary, paths


def examples_figure(model, decoded, scores, path):
    """Inputs above reconstructions for the best, median and worst SSIM of the split."""
    order = np.argsort(scores)
    picks = {"worst": order[0], "median": order[len(order) // 2], "best": order[-1]}
    images = np.stack([image for image, _ in decoded.as_numpy_iterator()])[list(picks.values())]
    reconstructions = model.reconstruct(tf.constant(images)).numpy()
    figure = Figure(figsize=(5.4, 3.8))
    axes = figure.subplots(2, 3)
    for column, (name, index) in enumerate(picks.items()):
        axes[0, column].imshow(images[column, ..., 0], cmap="gray", vmin=0, vmax=1)
        axes[0, column].set_title(f"{name}: SSIM {scores[index]:.3f}", fontsize=8)
        axes[1, column].imshow(reconstructions[column, ..., 0], cmap="gray", vmin=0, vmax=1)
    for axis in axes.flat:
        axis.axis("off")
    figure.savefig(path, dpi=100, bbox_inches="tight")


def codebook_figure(counts, path):
    """How often each code occurs in the split, codes sorted from most to least used."""
    figure = Figure(figsize=(6, 2.6))
    axis = figure.subplots()
    axis.bar(np.arange(len(counts)), np.sort(counts)[::-1] / counts.sum(), width=1.0)
    axis.set_yscale("log")
    axis.set_xlabel(f"code, by use ({int((counts > 0).sum())} of {len(counts)} used)")
    axis.set_ylabel("share of positions")
    figure.savefig(path, dpi=100, bbox_inches="tight")


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    if args.curves:
        out.mkdir(parents=True, exist_ok=True)
        try:
            print(f"Training curves: {plot_training_curves(args.curves, out / 'training_curves.png')}")
        except FileNotFoundError as error:
            fail(f"--curves {error}")
        return
    model, metadata = open_model(args.model)
    if args.reconstruct:
        path = reconstruct_figure(model, metadata, args.reconstruct, min(args.n, 16), args.seed, out)
        print(f"Reconstructions: {path}")
        return
    if args.evaluate:
        summary, paths = evaluate_split(model, metadata, args, out)
        bits = summary.get("prior_bits_per_code")
        prior = f", prior {bits:.3f} bits per code" if bits is not None else ""
        print(f"{summary['source']} {args.split} ({summary['n_images']} images): SSIM {summary['ssim_mean']:.4f} "
              f"± {summary['ssim_std']:.4f}, PSNR {summary['psnr_mean']:.2f} dB, codes used "
              f"{summary['codes_used']}/{summary['num_codes']}{prior}")
        for name, path in paths.items():
            print(f"{name:>9}: {path}")
        return
    grid_path, paths = generate(model, metadata, args, out)
    print(f"Grid:   {grid_path}")
    print(f"Images: {len(paths)} PNGs, {paths[0]} ... {paths[-1]}")


if __name__ == "__main__":
    main()
