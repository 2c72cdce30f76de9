"""Helpers shared by train.py and predict.py: evaluation, SavedModel export, atomic outputs, errors."""

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from modules import psnr, ssim


def fail(message):
    """Print one line to stderr and exit with status 2 (for errors in the user's input, not our bugs)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def write_json(path, data):
    """Write `data` as indented JSON, atomically (a temporary name, then a rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_directory(path):
    """Yield a temporary folder beside `path`; on success it replaces `path`, on error it is removed.

    Readers of `path` see the old folder or the complete new one, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def evaluate_reconstructions(model, dataset):
    """Reconstruct every image of a batched dataset; per-image metrics and codebook usage over all of it.

    Returns (summary dict, per-image dict of numpy arrays ssim, psnr, mse).
    """
    num_codes = model.quantizer.num_codes

    @tf.function
    def batch_metrics(images):
        indices = model.encode(images)
        reconstructions = model.decode(indices)
        mse = tf.reduce_mean((images - reconstructions) ** 2, axis=[1, 2, 3])
        counts = tf.math.bincount(tf.reshape(indices, [-1]), minlength=num_codes, maxlength=num_codes)
        return ssim(images, reconstructions), psnr(images, reconstructions), mse, counts

    per_image = {"ssim": [], "psnr": [], "mse": []}
    counts = np.zeros(num_codes, np.int64)
    for batch in dataset:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        batch_ssim, batch_psnr, batch_mse, batch_counts = batch_metrics(images)
        for name, values in zip(per_image, (batch_ssim, batch_psnr, batch_mse)):
            per_image[name].append(values.numpy())
        counts += batch_counts.numpy()
    per_image = {name: np.concatenate(values) for name, values in per_image.items()}
    probs = counts[counts > 0] / counts.sum()
    summary = {
        "n_images": int(per_image["ssim"].size),
        "ssim_mean": float(per_image["ssim"].mean()), "ssim_std": float(per_image["ssim"].std()),
        "psnr_mean": float(per_image["psnr"].mean()), "mse_mean": float(per_image["mse"].mean()),
        "codes_used": int((counts > 0).sum()), "num_codes": int(num_codes),
        "perplexity": float(np.exp(-(probs * np.log(probs)).sum())),
    }
    return summary, per_image


def export_savedmodel(model, path, image_size, metadata):
    """Write `model` as a SavedModel that TensorFlow code loads without this project.

    Endpoints: encode(images) -> int32 codes [N, h, w]; decode(codes) -> images; reconstruct(images) ->
    images; metadata() -> the JSON of `metadata` as a string. Images are float32 [N, S, S, 1] in [0, 1].
    """
    from keras.export import ExportArchive

    grid = image_size // model.downsampling_factor
    images_spec = tf.TensorSpec([None, image_size, image_size, 1], tf.float32, name="images")
    codes_spec = tf.TensorSpec([None, grid, grid], tf.int32, name="codes")
    metadata_json = json.dumps(metadata, sort_keys=True)
    archive = ExportArchive()
    archive.track(model)
    archive.add_endpoint("encode", model.encode, input_signature=[images_spec])
    archive.add_endpoint("decode", model.decode, input_signature=[codes_spec])
    archive.add_endpoint("reconstruct", model.reconstruct, input_signature=[images_spec])
    archive.add_endpoint("metadata", lambda: tf.constant(metadata_json), input_signature=[])
    archive.write_out(str(path), verbose=False)
