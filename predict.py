"""Use an exported model: generate new brain slices, or reconstruct test slices.

    python predict.py --reconstruct /data/ADNI           # test inputs above their reconstructions, with SSIM
    python predict.py --n 16                             # 16 new slices from the prior, one PNG each and a grid
    python predict.py --n 16 --label AD                  # of one class, for a class-conditional (ADNI) model

Only the SavedModel written by train.py is loaded; no training code runs.
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dataset  # noqa: E402
from modules import ssim  # noqa: E402
from utils import fail  # noqa: E402


def parse_args(argv=None):
    """The command line; with no flags it uses train.py's default export."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="saved_models/vqvae", help="SavedModel folder (default: %(default)s)")
    parser.add_argument("--out", default="saved_models/predictions", help="output folder (default: %(default)s)")
    parser.add_argument("--n", type=int, default=16, help="how many images to generate or show (default: %(default)s)")
    parser.add_argument("--reconstruct", metavar="DATA",
                        help="show test slices of DATA (or 'demo') above their reconstructions")
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


def load_export(path):
    """The SavedModel at `path` and its metadata; exits with one line if it is not one of ours."""
    if not (Path(path) / "saved_model.pb").exists():
        fail(f"--model {path}: no SavedModel there (train one with `python train.py --out {path}`)")
    model = tf.saved_model.load(str(path))
    if not all(hasattr(model, name) for name in ("encode", "decode", "reconstruct", "metadata")):
        fail(f"--model {path}: a SavedModel without this project's encode/decode/reconstruct endpoints")
    return model, json.loads(model.metadata().numpy().decode())


def reconstruct_figure(model, metadata, data, n, seed, out):
    """Write a figure of `n` test slices above their reconstructions, each annotated with its SSIM."""
    try:
        source = dataset.load_source(None if data == "demo" else data, seed=seed)
        decoded, _ = dataset.decoded_split(source.splits["test"], metadata["image_size"])
    except dataset.DataError as error:
        fail(str(error))
    test = len(source.splits["test"])
    step = max(1, test // n)  # spread the picks over the whole split (and so over its patients)
    images = np.stack([image for image, _ in decoded.as_numpy_iterator()][::step][:n])
    reconstructions = model.reconstruct(tf.constant(images)).numpy()
    scores = ssim(images, reconstructions).numpy()
    figure, axes = plt.subplots(2, len(images), figsize=(1.6 * len(images), 3.6), squeeze=False)
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
    plt.close(figure)
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
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.6 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image in zip(axes.flat, images):
        axis.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    figure.suptitle(f"{args.label or 'generated'} (temperature {args.temperature}, seed {args.seed})", fontsize=9)
    grid_path = out / f"{stem}_grid.png"
    figure.savefig(grid_path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return grid_path, paths


def main(argv=None):
    args = parse_args(argv)
    model, metadata = load_export(args.model)
    out = Path(args.out)
    if args.reconstruct:
        path = reconstruct_figure(model, metadata, args.reconstruct, min(args.n, 16), args.seed, out)
        print(f"Reconstructions: {path}")
        return
    grid_path, paths = generate(model, metadata, args, out)
    print(f"Grid:   {grid_path}")
    print(f"Images: {len(paths)} PNGs, {paths[0]} ... {paths[-1]}")


if __name__ == "__main__":
    main()
