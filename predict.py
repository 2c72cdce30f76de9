"""Use an exported model: generate new brain slices, or reconstruct test slices.

    python predict.py --reconstruct /data/ADNI           # test inputs above their reconstructions, with SSIM
    python predict.py --evaluate /data/ADNI              # metrics JSON, per-image CSV and figures of a split
    python predict.py --curves logs                      # train/validation loss, SSIM and prior NLL per epoch
    python predict.py --n 16                             # 16 new slices from the prior, one PNG each and a grid
    python predict.py --n 16 --label AD                  # of one class, for a class-conditional (ADNI) model
    python predict.py --compress /data/ADNI/AD_NC/test --out coded    # one small .vqz file per image
    python predict.py --decompress coded --out decoded                # and back to PNGs
    python predict.py --reconstruct-volume scan.nii.gz --out recon.nii.gz   # a whole volume, slice by slice

Only the SavedModel written by train.py is loaded (and, for --curves, its TensorBoard logs).
"""

import runtime  # noqa: F401  (first: it sets TensorFlow's environment before TensorFlow loads)

import argparse
import csv
import gzip
import json
import math
import shlex
import shutil
import time
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure

import dataset
import volumes
from codec import SUFFIX, CodecError, PriorCodec, model_fingerprint, prior_bits
from curves import training_curves_figure
from export import add_texture, load_export, sample_images
from metrics import evaluate_reconstructions, psnr, psnr_text, ssim
from utils import (check_output_folder, check_writable, fail, mark_as_ours, nearest_existing, save_figure,
                   write_bytes, write_json)

MAX_SAMPLES = 1_000_000  # --n beyond this is refused as a typo rather than a plan
GRID_SIZE = 64  # the grid shows at most this many of the generated images


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
    parser.add_argument("--compress", nargs="+", metavar="IMAGE_OR_FOLDER",
                        help="write one .vqz file per image (folders: every image below them, same layout): "
                        "its code grid range-coded with the prior's probabilities")
    parser.add_argument("--decompress", nargs="+", metavar="FILE_OR_FOLDER",
                        help="write the PNG of each .vqz file (folders: every .vqz below them) that --compress "
                        "wrote with this --model")
    parser.add_argument("--reconstruct-volume", metavar="VOLUME",
                        help="encode and decode every slice of a NIfTI or Analyze volume along the model's axis and "
                        "write the volume in the input's voxel grid to --out (a new .nii or .nii.gz file), with a "
                        "figure of three orthogonal views beside it")
    parser.add_argument("--split", default="test", choices=dataset.SPLITS, help="split to evaluate (default: test)")
    parser.add_argument("--metrics-out", help="metrics JSON of --evaluate (default: OUT/evaluation_SPLIT.json)")
    parser.add_argument("--label", help="class to generate, e.g. AD or NC (conditional models only)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature; lower is more conservative (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=0,
                        help="draw each code from the K most likely only; 0 keeps all (default: %(default)s)")
    parser.add_argument("--top-p", type=float, default=1.0,
                        help="draw each code from the most likely codes that make up this probability "
                        "(nucleus sampling); 1 keeps all (default: %(default)s)")
    parser.add_argument("--keep-background", action=argparse.BooleanOptionalAction, default=True,
                        help="--temperature, --top-k and --top-p reshape only the codes of anatomy; the codes of "
                        "empty background keep the probability the prior gives them, so heads keep their size "
                        "(--no-keep-background: reshape every code; default: on)")
    parser.add_argument("--texture", action=argparse.BooleanOptionalAction, default=True,
                        help="give generated slices the fine texture that the codes do not carry, drawn from the "
                        "export's model of the decoder's residual (--no-texture: the decoder's smooth mean; "
                        "default: on, where the export has one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler and of the data split")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="images generated at once; memory does not grow with --n (default: %(default)s)")
    args = parser.parse_args(argv)
    if not 0 < args.n <= MAX_SAMPLES:
        parser.error(f"--n {args.n}: expected a number of images from 1 to {MAX_SAMPLES:,}")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        parser.error(f"--temperature {args.temperature}: expected a finite positive number")
    if args.top_k < 0:
        parser.error(f"--top-k {args.top_k}: expected 0 (keep all codes) or a positive number")
    if not 0 < args.top_p <= 1:
        parser.error(f"--top-p {args.top_p}: expected a probability above 0 and at most 1")
    if args.batch_size <= 0:
        parser.error(f"--batch-size {args.batch_size}: expected a positive number")
    return args


def open_model(path):
    """The export at `path` and its metadata; exits with one line if it is not one of this project's."""
    try:
        return load_export(path)
    except ValueError as error:
        hint = ""
        if "no SavedModel" in str(error):
            hint = f" (train one with `{shlex.join(['python', 'train.py', '--out', str(path)])}`)"
        fail(f"--model {error}{hint}")


def check_outputs(args):
    """Exit with one line, before any work, if the outputs cannot be written where the flags say."""
    check_output_folder("--out", args.out, "predict.py's outputs")
    if args.metrics_out:
        metrics_out = Path(args.metrics_out)
        if metrics_out.is_dir() or (metrics_out.exists() and not _is_evaluation(metrics_out)):
            fail(f"--metrics-out {metrics_out}: something that predict.py did not write is there; choose a new file")
        check_writable("--metrics-out", metrics_out.parent)


def _is_evaluation(path):
    """Whether `path` is a metrics JSON that predict.py --evaluate wrote (and may replace)."""
    try:
        return {"n_images", "ssim_mean", "split", "model"} <= set(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return False


def load_split(flag, data, split, image_size, seed):
    """(source, decoded dataset) of one split of DATA ('demo' for the embedded demo); exits on bad input."""
    try:
        source = dataset.load_source(None if data == "demo" else data, seed=seed)
        return source, dataset.decoded_split(source.splits[split], image_size).images
    except dataset.DataError as error:
        fail(f"{flag} {error}")


def spread_picks(decoded, n):
    """`n` images [n, S, S, 1] of a decoded split, spread evenly over it (and so over its patients, whose
    slices come in order)."""
    every = [image for image, _ in decoded.as_numpy_iterator()]
    return np.stack(every[::max(1, len(every) // n)][:n])


def reconstruct_figure(model, metadata, data, n, seed, out):
    """Write a figure of `n` test slices above their reconstructions, each annotated with its SSIM."""
    source, decoded = load_split("--reconstruct", data, "test", metadata["image_size"], seed)
    images = spread_picks(decoded, n)
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
    mark_as_ours(out, "predictions")
    path = out / f"reconstructions_{source.kind}.png"
    figure.savefig(path, dpi=100, bbox_inches="tight")
    return path


def generate(model, metadata, args, out):
    """Sample `args.n` new slices, --batch-size at a time, each written as a PNG as soon as it is drawn (so a
    stopped run leaves complete images), and a grid of the first 64. Returns (grid path, image paths)."""
    classes = metadata["class_names"]
    if not metadata.get("has_prior"):
        fail(f"--model {args.model}: this export has no prior to sample from; "
             f"use --reconstruct DATA, or train one with train.py --stage prior")
    if args.label is not None and not classes:
        fail(f"--label {args.label}: the model at {args.model} is not class-conditional")
    if args.label is not None and args.label not in classes:
        fail(f"--label {args.label}: expected one of {', '.join(classes)}")
    check_disk_space(out, args.n, metadata["image_size"])
    args.texture = args.texture and bool(metadata.get("has_texture"))  # exports from before it sample as before
    # Drawn before the folder is made: an export too old for the controls asked for stops here, writing nothing.
    first = draw(model, metadata, args, min(args.batch_size, args.n), batch_seed(args.seed, 0))
    mark_as_ours(out, "predictions")
    stem = f"sample_{args.label}" if args.label else "sample"
    width = max(3, len(str(args.n - 1)))
    paths, shown = [], []
    progress = keras.utils.Progbar(args.n, unit_name="image")
    for batch, start in enumerate(range(0, args.n, args.batch_size)):
        images = first if batch == 0 else draw(model, metadata, args, min(args.batch_size, args.n - start),
                                                batch_seed(args.seed, batch))
        for image in images:
            paths.append(out / f"{stem}_{len(paths):0{width}d}.png")
            write_bytes(paths[-1], tf.io.encode_png(tf.cast(tf.round(image * 255), tf.uint8)).numpy())
        shown.extend(images[:GRID_SIZE - len(shown)])
        progress.add(len(images))
    texture = ", texture" if args.texture else ""
    title = (f"{args.label or 'generated'} (temperature {args.temperature}{filter_text(args)}{texture}, "
             f"seed {args.seed})")
    if args.n > len(shown):
        title += f": the first {len(shown)} of {args.n}"
    return grid_figure(shown, title, out / f"{stem}_grid.png"), paths


def open_codec(model, metadata, path):
    """The codec of the export at `path`; exits with one line if it cannot code (no prior, or too old)."""
    try:
        return PriorCodec(model, metadata, model_fingerprint(path))
    except CodecError as error:
        fail(f"--model {path}: {error}")


def codec_inputs(flag, given, is_input):
    """[(file, output path relative to --out without suffix)] for each file in `given` and each file below each
    folder in it for which `is_input(path)`; exits with one line if none, or if two would write one output."""
    found = []
    for name in given:
        path = Path(name)
        if path.is_dir():
            found += [(file, file.relative_to(path).with_suffix("")) for file in sorted(path.rglob("*"))
                      if file.is_file() and not file.name.startswith(".") and is_input(file)]
        elif path.is_file():
            found.append((path, Path(path.stem)))
        else:
            fail(f"{flag} {name}: no such file or folder")
    if not found:
        fail(f"{flag} {' '.join(given)}: no input files there")
    outputs = [output for _, output in found]
    if len(set(outputs)) < len(outputs):
        twice = next(output for output in outputs if outputs.count(output) > 1)
        fail(f"{flag}: two inputs would both be written as {twice}; compress them in separate runs")
    return found


def compress_files(model, metadata, args, out):
    """Write one .vqz file per input image below `out`; returns (files, total bytes, ideal bits, seconds)."""
    codec = open_codec(model, metadata, args.model)
    inputs = codec_inputs("--compress", args.compress, lambda path: path.suffix.lower() in dataset.IMAGE_EXTENSIONS)
    written, total, ideal = [], 0, 0.0
    progress = keras.utils.Progbar(len(inputs), unit_name="image")
    started = time.perf_counter()
    for start in range(0, len(inputs), args.batch_size):
        batch = inputs[start:start + args.batch_size]
        images = np.stack([read_image("--compress", path, metadata["image_size"]) for path, _ in batch])
        bits, labels = prior_bits(model, metadata, images)
        ideal += float(bits.sum())
        for (_, name), data in zip(batch, codec.compress(images, labels)):
            mark_as_ours(out, "predictions")
            path = out / name.with_suffix(SUFFIX)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(path, data)
            written.append(path)
            total += len(data)
        progress.add(len(batch))
    return written, total, ideal, time.perf_counter() - started


def read_image(flag, path, image_size):
    """`dataset.decode_image` of one file, or exit with one line naming it."""
    try:
        return dataset.decode_image(str(path), image_size).numpy()
    except (tf.errors.OpError, ValueError):
        fail(f"{flag} {path}: not a readable PNG/JPEG/BMP/GIF image")


def decompress_files(model, metadata, args, out):
    """Write the PNG of each .vqz input below `out`; returns (PNG paths, seconds). A file that does not decode
    stops the run with one line naming it, and nothing is written for it."""
    codec = open_codec(model, metadata, args.model)
    inputs = codec_inputs("--decompress", args.decompress, lambda path: path.suffix == SUFFIX)
    written = []
    progress = keras.utils.Progbar(len(inputs), unit_name="file")
    started = time.perf_counter()
    for path, name in inputs:
        try:
            codes, _ = codec.decompress(path.read_bytes())
        except CodecError as error:
            fail(f"--decompress {path}: {error}")
        image = model.decode(tf.constant(codes[None], tf.int32))[0]
        mark_as_ours(out, "predictions")
        written.append(out / name.with_suffix(".png"))
        written[-1].parent.mkdir(parents=True, exist_ok=True)
        write_bytes(written[-1], tf.io.encode_png(tf.cast(tf.round(image * 255), tf.uint8)).numpy())
        progress.add(1)
    return written, time.perf_counter() - started


def check_volume_outputs(args):
    """(output volume path, figure path), or exit with one line if --out is not a new .nii/.nii.gz file."""
    out = Path(args.out)
    if not out.name.endswith((".nii", ".nii.gz")):
        fail(f"--out {out}: expected a .nii or .nii.gz file name for --reconstruct-volume")
    figure = out.with_name(out.name.rsplit(".nii", 1)[0] + "_views.png")
    for path in (out, figure):
        if path.exists():
            fail(f"--out {out}: {path} is already there; choose a new name (nothing was changed)")
    check_writable("--out", out.parent)
    return out, figure


def model_axis(path):
    """The axis the export was trained on slices of (its config.json), axial if it does not say."""
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("axis") or "axial"
    except (OSError, ValueError):
        return "axial"


def reconstruct_volume(model, metadata, args):
    """Encode and decode every slice of --reconstruct-volume along the model's axis; write the volume in the
    input's voxel grid, orientation and intensity range to --out, and the three-view figure. Returns
    (output path, figure path, summary dict)."""
    out, figure_path = check_volume_outputs(args)
    path, axis, size = Path(args.reconstruct_volume), model_axis(args.model), metadata["image_size"]
    try:
        image, ras, note = volumes.read_ras(path)
        low, high = volumes.intensity_range(path, ras)
    except volumes.VolumeError as error:
        fail(f"--reconstruct-volume {error}")
    if note:
        print(note)
    normalised = volumes.normalise(ras, low, high)
    batches = max(1, math.ceil(normalised.shape[volumes.AXES[axis]] / args.batch_size))
    grids = []

    def encode_and_decode(images):
        codes = [model.encode(batch).numpy() for batch in np.array_split(images, batches)]
        grids.extend(codes)
        return np.concatenate([model.decode(batch).numpy() for batch in codes])

    reconstructed, inputs = through_slices(normalised, axis, size, encode_and_decode)
    codes = np.concatenate(grids)
    brain = volumes.brain_slices(normalised, axis)
    originals = np.stack([volumes.slice_image(normalised, axis, k) for k in brain])[..., None]
    reconstructions = np.stack([volumes.slice_image(reconstructed, axis, k) for k in brain])[..., None]
    summary = {"volume": str(path), "axis": axis, "slices": len(inputs), "brain_slices": len(brain),
               "ssim": float(np.mean(ssim(originals, reconstructions).numpy())),
               "psnr": float(np.mean(psnr(originals, reconstructions).numpy())),
               "code_bits": int(codes.size * math.log2(metadata["num_codes"]))}
    if metadata.get("has_prior"):
        summary["prior_bits"] = float(prior_bits(model, metadata, inputs)[0].sum())
    ras_out = reconstructed * (high - low) + low
    output = nib.Nifti1Image(volumes.to_stored_order(image, ras_out).astype(np.float32), image.affine)
    data = output.to_bytes()
    write_bytes(out, gzip.compress(data) if out.name.endswith(".gz") else data)
    original = nib.Nifti1Image(volumes.to_stored_order(image, ras), image.affine)
    views_figure(original, output, summary, figure_path)
    return out, figure_path, summary


def through_slices(volume, axis, size, transform):
    """(`volume` [X, Y, Z] in [0, 1] after each of its slices along `axis` went through `transform`, the model's
    inputs [N, size, size, 1]). Slices are squared and resized exactly as the training data was, and the
    outputs resized back (bilinear) and cropped, so the result has the volume's shape."""
    along = volumes.AXES[axis]
    planes = np.stack([volumes.slice_image(volume, axis, k) for k in range(volume.shape[along])])
    rows, columns = planes.shape[1:]
    inputs, side = dataset.square_and_resize(tf.constant(planes[..., None]), size)
    outputs = transform(inputs.numpy())
    squares = tf.image.resize(outputs, (side, side), method="bilinear").numpy()[..., 0]
    top, left = (int(side) - rows) // 2, (int(side) - columns) // 2
    back = np.clip(squares[:, top:top + rows, left:left + columns], 0.0, 1.0)
    return np.stack([volumes.plane_of(plane, axis) for plane in back], axis=along), inputs.numpy()


def views_figure(original, reconstruction, summary, path):
    """Three orthogonal views (nilearn) of the input above the reconstruction, at the same cuts."""
    from nilearn import plotting

    figure = Figure(figsize=(10, 6.4))
    top, bottom = figure.subplots(2, 1)
    cuts = plotting.find_xyz_cut_coords(original)
    plotting.plot_anat(original, cut_coords=cuts, axes=top, figure=figure, title="input", colorbar=False)
    plotting.plot_anat(reconstruction, cut_coords=cuts, axes=bottom, figure=figure, colorbar=False,
                       title=f"reconstruction: SSIM {summary['ssim']:.3f}, PSNR {summary['psnr']:.1f} dB "
                             f"over {summary['brain_slices']} {summary['axis']} brain slices")
    save_figure(figure, path, dpi=100)


def filter_text(args):
    """The sampling controls in use, for a figure title: '', ', top-k 20', ', top-p 0.9', ..."""
    return (f", top-k {args.top_k}" if args.top_k else "") + (f", top-p {args.top_p:g}" if args.top_p < 1 else "")


def check_disk_space(out, n, image_size):
    """Exit with one line if `n` PNGs of the image size may not fit on the disk of `out`."""
    existing = nearest_existing(out)
    needed = n * (image_size * image_size * 1.1 + 1024)  # an 8-bit PNG is at most about its raw size
    free = shutil.disk_usage(existing).free
    if needed > free:
        fail(f"--n {n}: {n:,} images of {image_size}x{image_size} may need {needed / 1e9:.1f} GB, and "
             f"{existing} has {free / 1e9:.1f} GB free")


def batch_seed(seed, batch):
    """The sampler's seed for one batch: `seed` itself for the first (so --n up to --batch-size draws what the
    export's sample(n, temperature, seed) draws), then seeds derived from (seed, batch)."""
    if batch == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**32, batch]).generate_state(1)[0] >> 1)


def draw(model, metadata, args, count, seed):
    """`count` images [count, S, S, 1] sampled from the export's prior (of --label's class if given), with
    the export's texture if `args.texture`."""
    classes = metadata["class_names"]
    label = None if args.label is None else classes.index(args.label)
    try:
        images = sample_images(model, count, args.temperature, seed, args.top_k, args.top_p, args.keep_background,
                               label)
    except ValueError as error:
        if "keep_background" in str(error):
            fail(f"--keep-background: the export at {args.model} predates it; retrain it, or pass "
                 f"--no-keep-background")
        fail(f"--top-k/--top-p: the export at {args.model} predates them; retrain it, or sample without them")
    return add_texture(model, images, seed) if args.texture else images


def grid_figure(images, title, path):
    """Write the images as a square grid with a title."""
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    figure = Figure(figsize=(1.6 * columns, 1.6 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image in zip(axes.flat, images):
        axis.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    figure.suptitle(title, fontsize=9)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    return path


def evaluate_split(model, metadata, args, out):
    """Evaluate one split: metrics JSON, per-image CSV, best/median/worst figure, codebook histogram."""
    source, decoded = load_split("--evaluate", args.evaluate, args.split, metadata["image_size"], args.seed)
    log_prob = prior_scorer(model, metadata, source.class_names)
    summary, per_image, counts = evaluate_reconstructions(model, dataset.batched(decoded, 32),
                                                         metadata["num_codes"], log_prob)
    summary.update(data=source.root, source=source.kind, split=args.split, model=str(args.model))
    mark_as_ours(out, "predictions")
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


def prior_scorer(model, metadata, data_class_names):
    """(images, labels) -> the log-likelihood of the images' codes under the export's prior; None without a
    prior. A class-conditional prior scores an image under its own class, matched by name, and an image
    whose class it does not know (unlabelled data, other class names) under the mixture of its classes in
    their training proportions: log sum_c p(c) p(codes | c)."""
    classes = metadata["class_names"]
    if not metadata.get("has_prior"):
        return None
    if not classes:
        return lambda images, labels: model.log_prob(images)
    to_model = tf.constant([classes.index(name) if name in classes else -1 for name in data_class_names] + [-1])
    counts = np.asarray(metadata.get("class_counts") or [1] * len(classes), np.float32)
    log_weights = tf.constant(np.log(counts / counts.sum()))

    def log_prob(images, labels):
        per_class = tf.stack([model.log_prob(images, tf.fill(tf.shape(labels), k)) for k in range(len(classes))], 1)
        known = tf.gather(to_model, tf.where(labels >= 0, labels, len(data_class_names)))  # -1: unknown class
        mixture = tf.reduce_logsumexp(per_class + log_weights, axis=1)
        own = tf.gather(per_class, tf.maximum(known, 0), batch_dims=1)
        return tf.where(known >= 0, own, mixture)

    return log_prob


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
    """`python predict.py`: plot curves, reconstruct, evaluate or generate, as the flags say."""
    args = parse_args(argv)
    out = Path(args.out)
    if args.reconstruct_volume:
        check_volume_outputs(args)
        model, metadata = open_model(args.model)
        written, figure, summary = reconstruct_volume(model, metadata, args)
        prior = f", prior {summary['prior_bits']:,.0f}" if "prior_bits" in summary else ""
        print(f"{summary['volume']}: SSIM {summary['ssim']:.4f}, PSNR {summary['psnr']:.2f} dB over "
              f"{summary['brain_slices']} {summary['axis']} brain slices of {summary['slices']}; code grids "
              f"{summary['code_bits']:,} bits raw{prior}")
        print(f"Volume: {written}")
        print(f"Views:  {figure}")
        return
    check_outputs(args)
    if args.curves:
        try:
            figure = training_curves_figure(args.curves)
        except FileNotFoundError as error:
            fail(f"--curves {error}")
        mark_as_ours(out, "predictions")
        figure.savefig(out / "training_curves.png", dpi=100)
        print(f"Training curves: {out / 'training_curves.png'}")
        return
    model, metadata = open_model(args.model)
    if args.reconstruct:
        path = reconstruct_figure(model, metadata, args.reconstruct, min(args.n, 16), args.seed, out)
        print(f"Reconstructions: {path}")
        return
    if args.compress:
        written, total, ideal, seconds = compress_files(model, metadata, args, out)
        pixels = metadata["image_size"] ** 2
        print(f"Compressed {len(written)} images to {out}: {total / len(written):.1f} bytes per image (prior's "
              f"ideal {ideal / 8 / len(written):.1f} + the 14-byte header), {8 * total / len(written) / pixels:.4f} "
              f"bits per pixel of the {metadata['image_size']}x{metadata['image_size']} image, "
              f"{len(written) / seconds:.2f} images/s")
        return
    if args.decompress:
        written, seconds = decompress_files(model, metadata, args, out)
        print(f"Decompressed {len(written)} files to {out} ({len(written) / seconds:.2f} images/s): "
              f"{written[0]} ... {written[-1]}")
        return
    if args.evaluate:
        summary, paths = evaluate_split(model, metadata, args, out)
        bits = summary.get("prior_bits_per_code")
        prior = f", prior {bits:.3f} bits per code" if bits is not None else ""
        print(f"{summary['source']} {args.split} ({summary['n_images']} images): SSIM {summary['ssim_mean']:.4f} "
              f"± {summary['ssim_std']:.4f}, {psnr_text(summary)}, codes used "
              f"{summary['codes_used']}/{summary['num_codes']}{prior}")
        for name, path in paths.items():
            print(f"{name:>9}: {path}")
        return
    grid_path, paths = generate(model, metadata, args, out)
    print(f"Grid:   {grid_path}")
    print(f"Images: {len(paths)} PNGs, {paths[0]} ... {paths[-1]}")


if __name__ == "__main__":
    main()
