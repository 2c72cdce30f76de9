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


def evaluate_reconstructions(model, dataset, num_codes, log_prob=None):
    """Reconstruct every image of a batched (images, labels) dataset through the codebook.

    `model` is a VQVAETrainer or the exported SavedModel (anything with encode and decode); `log_prob`, if
    given, maps (images, labels) to each image's log-likelihood under the prior. Returns (summary dict,
    per-image dict of numpy arrays, code counts). MS-SSIM (5 scales) needs images of at least 161 pixels.
    """
    per_image = {"ssim": [], "psnr": [], "mse": [], "ms_ssim": [], "bits_per_code": []}
    counts = np.zeros(num_codes, np.int64)
    for images, labels in dataset:
        codes = model.encode(images)
        reconstructions = model.decode(codes)
        per_image["ssim"].append(ssim(images, reconstructions).numpy())
        per_image["psnr"].append(psnr(images, reconstructions).numpy())
        per_image["mse"].append(tf.reduce_mean((images - reconstructions) ** 2, axis=[1, 2, 3]).numpy())
        if images.shape[1] >= 161:
            per_image["ms_ssim"].append(tf.image.ssim_multiscale(images, reconstructions, max_val=1.0).numpy())
        if log_prob is not None:
            positions = codes.shape[1] * codes.shape[2]
            per_image["bits_per_code"].append(-log_prob(images, labels).numpy() / (positions * np.log(2.0)))
        counts += np.bincount(codes.numpy().reshape(-1), minlength=num_codes)
    per_image = {name: np.concatenate(values) for name, values in per_image.items() if values}
    probs = counts[counts > 0] / counts.sum()
    summary = {
        "n_images": int(per_image["ssim"].size),
        "ssim_mean": float(per_image["ssim"].mean()), "ssim_std": float(per_image["ssim"].std()),
        "psnr_mean": float(per_image["psnr"].mean()), "mse_mean": float(per_image["mse"].mean()),
        "ms_ssim_mean": float(per_image["ms_ssim"].mean()) if "ms_ssim" in per_image else None,
        "codes_used": int((counts > 0).sum()), "num_codes": int(num_codes),
        "perplexity": float(np.exp(-(probs * np.log(probs)).sum())),
    }
    if "bits_per_code" in per_image:
        summary["prior_bits_per_code"] = float(per_image["bits_per_code"].mean())
    return summary, per_image, counts


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


def read_scalars(logdir):
    """Every scalar Keras' TensorBoard callback wrote under `logdir`: {"vqvae/train": {"epoch_loss": [(step,
    value), ...]}, ...}, keyed by the folder relative to `logdir`. Where a step was written twice (a rerun
    into the same logdir), the later value wins."""
    runs = {}
    for path in sorted(tf.io.gfile.glob(f"{logdir}/*/*/events.out.tfevents.*")):
        run = os.path.relpath(os.path.dirname(path), logdir)
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars" or value.HasField("simple_value"):
                    number = value.simple_value if value.HasField("simple_value") else tf.make_ndarray(value.tensor)
                    runs.setdefault(run, {}).setdefault(value.tag, {})[event.step] = float(number)
    return {run: {tag: sorted(points.items()) for tag, points in tags.items()} for run, tags in runs.items()}


def plot_training_curves(logdir, path):
    """Plot train and validation loss and SSIM of the VQ-VAE, and the prior's bits per code, per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = read_scalars(logdir)
    panels = [("vqvae", "epoch_loss", "VQ-VAE loss", True), ("vqvae", "epoch_ssim", "VQ-VAE SSIM", False),
              ("prior", "epoch_bits_per_code", "prior NLL (bits per code)", False)]
    panels = [p for p in panels if f"{p[0]}/train" in runs]
    if not panels:
        raise FileNotFoundError(f"{logdir}: no TensorBoard logs of train.py (vqvae/train, prior/train) there")
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3), squeeze=False)
    for axis, (stage, tag, title, log_scale) in zip(axes[0], panels):
        for split in ("train", "validation"):
            points = sorted(runs.get(f"{stage}/{split}", {}).get(tag, []))
            if points:
                axis.plot([step + 1 for step, _ in points], [value for _, value in points], marker=".", label=split)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("epoch")
        if log_scale:
            axis.set_yscale("log")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
