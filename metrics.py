"""Image-quality and codebook metrics, and the evaluation of a model over a whole dataset.

Used by the model's training step, by train.py's test evaluation and by predict.py; nothing here depends
on the model's code.
"""

import numpy as np
import tensorflow as tf
from keras import ops


def ssim(images, reconstructions):
    """Per-image SSIM of images in [0, 1] (Gaussian window 11, sigma 1.5, as in Wang et al. 2004)."""
    return tf.image.ssim(images, reconstructions, max_val=1.0)


def mean_ssim(images, reconstructions):
    """Mean SSIM of a batch of images [N, H, W, C] in [0, 1]: equal to the mean of `ssim` over the batch.

    tf.image.ssim filters each channel with a depthwise convolution, which TensorFlow's CPU kernel runs
    much faster on one image of N channels than on N images of one channel; so the batch is laid along the
    channel axis, over which tf.image.ssim averages.
    """
    def batch_as_channels(x):
        shape = tf.shape(x)
        return tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, shape[1], shape[2], shape[0] * shape[3]])

    return tf.image.ssim(batch_as_channels(images), batch_as_channels(reconstructions), max_val=1.0)[0]


def psnr(images, reconstructions):
    """Per-image PSNR in dB of images in [0, 1]."""
    return tf.image.psnr(images, reconstructions, max_val=1.0)


def perplexity(counts):
    """exp(entropy) of the code distribution given by `counts` [K]: the effective number of codes in use."""
    counts = ops.cast(counts, "float32")
    probs = counts / ops.sum(counts)
    return ops.exp(-ops.sum(probs * ops.log(ops.maximum(probs, 1e-12))))


def evaluate_reconstructions(model, dataset, num_codes, log_prob=None, top_grid=0):
    """Reconstruct every image of a batched (images, labels) dataset through the codebook.

    `model` is a VQVAETrainer or the exported SavedModel (anything with encode and reconstruct); `log_prob`, if
    given, maps (images, labels) to each image's log-likelihood under the prior, whose bits are spread over the
    image's codes (of a two-level model with a top grid of `top_grid` a side, both levels'). Returns (summary
    dict, per-image dict of numpy arrays, code counts). MS-SSIM (5 scales) needs images of at least 161 pixels.
    """
    per_image = {"ssim": [], "psnr": [], "mse": [], "ms_ssim": [], "bits_per_code": []}
    counts = np.zeros(num_codes, np.int64)
    for images, labels in dataset:
        codes = model.encode(images)  # the bottom level's, of a hierarchical model
        reconstructions = model.reconstruct(images)
        per_image["ssim"].append(ssim(images, reconstructions).numpy())
        per_image["psnr"].append(psnr(images, reconstructions).numpy())
        per_image["mse"].append(tf.reduce_mean((images - reconstructions) ** 2, axis=[1, 2, 3]).numpy())
        if images.shape[1] >= 161:
            per_image["ms_ssim"].append(tf.image.ssim_multiscale(images, reconstructions, max_val=1.0).numpy())
        if log_prob is not None:
            positions = codes.shape[1] * codes.shape[2] + top_grid ** 2
            per_image["bits_per_code"].append(-log_prob(images, labels).numpy() / (positions * np.log(2.0)))
        counts += np.bincount(codes.numpy().reshape(-1), minlength=num_codes)
    per_image = {name: np.concatenate(values) for name, values in per_image.items() if values}
    summary = {
        "n_images": int(per_image["ssim"].size),
        "ssim_mean": float(per_image["ssim"].mean()), "ssim_std": float(per_image["ssim"].std()),
        # An exact reconstruction has an infinite PSNR: the mean is over the others, and they are counted.
        "psnr_mean": _finite_mean(per_image["psnr"]), "n_exact": int(np.isinf(per_image["psnr"]).sum()),
        "mse_mean": float(per_image["mse"].mean()),
        "ms_ssim_mean": float(per_image["ms_ssim"].mean()) if "ms_ssim" in per_image else None,
        "codes_used": int((counts > 0).sum()), "num_codes": int(num_codes),
        "perplexity": float(perplexity(counts)),
    }
    if "bits_per_code" in per_image:
        summary["prior_bits_per_code"] = float(per_image["bits_per_code"].mean())
    return summary, per_image, counts


def _finite_mean(values):
    """The mean of the finite values, or None if there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def psnr_text(summary):
    """The PSNR of an evaluation summary in words, e.g. "PSNR 29.01 dB" or "PSNR 31.20 dB (3 images exact)"."""
    exact = f" ({summary['n_exact']} images exact)" if summary.get("n_exact") else ""
    if summary["psnr_mean"] is None:
        return f"PSNR infinite{exact}"
    return f"PSNR {summary['psnr_mean']:.2f} dB{exact}"


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
    counts = np.asarray(metadata["class_counts"], np.float32)
    log_weights = tf.constant(np.log(counts / counts.sum()))

    def log_prob(images, labels):
        per_class = tf.stack([model.log_prob(images, tf.fill(tf.shape(labels), k)) for k in range(len(classes))], 1)
        known = tf.gather(to_model, tf.where(labels >= 0, labels, len(data_class_names)))  # -1: unknown class
        mixture = tf.reduce_logsumexp(per_class + log_weights, axis=1)
        own = tf.gather(per_class, tf.maximum(known, 0), batch_dims=1)
        return tf.where(known >= 0, own, mixture)

    return log_prob
