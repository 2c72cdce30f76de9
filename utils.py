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


def export_savedmodel(model, path, image_size, metadata, prior=None, class_counts=None):
    """Write `model` (and `prior`) as one SavedModel that TensorFlow code loads without this project.

    Images are float32 [N, S, S, 1] in [0, 1]; codes are int32 [N, G, G]; labels int32 [N].
    Always: encode(images) -> codes; decode(codes) -> images; reconstruct(images) -> images;
    metadata() -> JSON string (image_size, grid, num_codes, class_names, has_prior).
    With a prior: sample(n, temperature=1, seed=0) -> images (a conditional prior draws classes in training
    proportions); prior_logits(codes[, labels]) -> [N, G, G, K]; log_prob(images[, labels]) -> [N], the
    natural-log likelihood of the images' codes under the prior; conditional priors add
    sample_class(n, label, temperature=1, seed=0).
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
    if prior is not None:
        _add_prior_endpoints(archive, model, prior, images_spec, codes_spec, class_counts)
    archive.write_out(str(path), verbose=False)


def _add_prior_endpoints(archive, model, prior, images_spec, codes_spec, class_counts):
    archive.track(prior)
    scalar = {name: tf.TensorSpec([], dtype, name=name) for name, dtype in
              (("n", tf.int32), ("label", tf.int32), ("temperature", tf.float32), ("seed", tf.int32))}
    labels_spec = tf.TensorSpec([None], tf.int32, name="labels")
    # ExportArchive traces endpoints without AutoGraph; the sampler's loops need it.
    sample_codes = tf.function(prior.sample, autograph=True)

    def log_prob(images, labels=None):
        codes = model.encode(images)
        log_probs = tf.nn.log_softmax(prior((codes, labels) if prior.num_classes else codes), axis=-1)
        return tf.reduce_sum(tf.gather(log_probs, codes, batch_dims=3), axis=[1, 2])

    if prior.num_classes:
        log_weights = tf.math.log(tf.constant(class_counts, tf.float32)[None, :])

        def sample(n, temperature=1.0, seed=0):
            labels = tf.random.stateless_categorical(log_weights, n, tf.stack([seed, -1]), dtype=tf.int32)[0]
            return model.decode(sample_codes(n, labels, temperature, seed))

        def sample_class(n, label, temperature=1.0, seed=0):
            return model.decode(sample_codes(n, tf.fill([n], label), temperature, seed))

        archive.add_endpoint("sample", sample, input_signature=[scalar["n"], scalar["temperature"], scalar["seed"]])
        archive.add_endpoint("sample_class", sample_class, input_signature=[
            scalar["n"], scalar["label"], scalar["temperature"], scalar["seed"]])
        archive.add_endpoint("prior_logits", lambda codes, labels: prior((codes, labels)),
                             input_signature=[codes_spec, labels_spec])
        archive.add_endpoint("log_prob", log_prob, input_signature=[images_spec, labels_spec])
    else:
        def sample(n, temperature=1.0, seed=0):
            return model.decode(sample_codes(n, None, temperature, seed))

        archive.add_endpoint("sample", sample, input_signature=[scalar["n"], scalar["temperature"], scalar["seed"]])
        archive.add_endpoint("prior_logits", prior, input_signature=[codes_spec])
        archive.add_endpoint("log_prob", log_prob, input_signature=[images_spec])
