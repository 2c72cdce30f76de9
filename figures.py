"""The figures and images the tools write: generated slices as PNGs and a grid, inputs above their
reconstructions, codebook usage, three views of a volume, anomaly maps, and the training curves read back
from the TensorBoard logs. Each builder returns a matplotlib Figure; `utils.save_figure` writes it."""

import math
import os

import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure

ANOMALY_OPACITY = 0.8  # of the anomaly map where it is highest: the anatomy under it stays visible


def png_bytes(image):
    """An 8-bit grayscale PNG of one image float [S, S, 1] in [0, 1]."""
    return tf.io.encode_png(tf.cast(tf.round(image * 255), tf.uint8)).numpy()


def image_grid_figure(images, title):
    """Images [N, S, S, 1] in a square grid under a title."""
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    figure = Figure(figsize=(1.6 * columns, 1.6 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image in zip(axes.flat, images):
        axis.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    figure.suptitle(title, fontsize=9)
    return figure


def reconstructions_figure(images, reconstructions, captions, title=None, captions_above=False):
    """Inputs [N, S, S, 1] (top row) above their reconstructions (bottom row), one caption per column under
    the reconstruction, or above the input with `captions_above`."""
    figure = Figure(figsize=(1.8 * len(images), 3.8))
    axes = figure.subplots(2, len(images), squeeze=False)
    for column, (image, reconstruction, caption) in enumerate(zip(images, reconstructions, captions)):
        axes[0, column].imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
        axes[1, column].imshow(reconstruction[..., 0], cmap="gray", vmin=0, vmax=1)
        axes[0 if captions_above else 1, column].set_title(caption, fontsize=8)
    for axis in axes.flat:
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=9)
    return figure


def codebook_figure(counts):
    """How often each code occurs (`counts` [K]), codes sorted from most to least used, on a log scale."""
    figure = Figure(figsize=(6, 2.6))
    axis = figure.subplots()
    axis.bar(np.arange(len(counts)), np.sort(counts)[::-1] / counts.sum(), width=1.0)
    axis.set_yscale("log")
    axis.set_xlabel(f"code, by use ({int((counts > 0).sum())} of {len(counts)} used)")
    axis.set_ylabel("share of positions")
    return figure


def volume_views_figure(original, reconstruction, title):
    """Three orthogonal views (nilearn) of the nibabel image `original` above `reconstruction`, at the same
    cuts; `title` goes over the reconstruction."""
    from nilearn import plotting  # slow to import, and only this figure needs it

    figure = Figure(figsize=(10, 6.4))
    top, bottom = figure.subplots(2, 1)
    cuts = plotting.find_xyz_cut_coords(original)
    plotting.plot_anat(original, cut_coords=cuts, axes=top, figure=figure, title="input", colorbar=False)
    plotting.plot_anat(reconstruction, cut_coords=cuts, axes=bottom, figure=figure, colorbar=False, title=title)
    return figure


def anomaly_figure(image, anomaly, healed, title):
    """An image [H, W, 1] under its anomaly map [H, W, 1] (magma, more opaque where higher; its colour bar
    gives the scale), beside its healed image [H, W, 1]."""
    figure = Figure(figsize=(7, 3.6))
    left, right = figure.subplots(1, 2)
    left.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    highest = max(float(anomaly.max()), 1e-6)
    shown = left.imshow(anomaly[..., 0], cmap="magma", vmin=0, vmax=highest,
                        alpha=np.clip(anomaly[..., 0] / highest, 0, 1) * ANOMALY_OPACITY)
    figure.colorbar(shown, ax=[left, right], fraction=0.03, pad=0.02, label="anomaly")
    right.imshow(healed[..., 0], cmap="gray", vmin=0, vmax=1)
    left.set_title("input and anomaly map", fontsize=8)
    right.set_title("healed", fontsize=8)
    for axis in (left, right):
        axis.axis("off")
    figure.suptitle(title, fontsize=9)
    return figure


def anomaly_views_figure(original, anomaly, title):
    """Three orthogonal views (nilearn) of the nibabel image `original` above its anomaly map `anomaly` over it
    (more opaque where higher), cut through the map's largest blob; `title` goes over the map."""
    from nilearn import plotting  # slow to import, and only the volumes' figures need it

    figure = Figure(figsize=(10, 6.4))
    top, bottom = figure.subplots(2, 1)
    highest = float(np.max(anomaly.get_fdata()))
    cuts = plotting.find_xyz_cut_coords(anomaly if highest > 0 else original)
    plotting.plot_anat(original, cut_coords=cuts, axes=top, figure=figure, title="input", colorbar=False)
    plotting.plot_stat_map(anomaly, bg_img=original, cut_coords=cuts, axes=bottom, figure=figure, title=title,
                           cmap="magma", colorbar=highest > 0, transparency=anomaly if highest > 0 else None)
    return figure


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


CURVES = (("vqvae", "epoch_loss", "VQ-VAE loss", True), ("vqvae", "epoch_ssim", "VQ-VAE SSIM", False),
          ("prior", "epoch_bits_per_code", "prior NLL (bits per code)", False))


def training_curves_figure(logdir):
    """The train and validation loss and SSIM of the VQ-VAE, and the prior's bits per code, per epoch;
    raises FileNotFoundError if `logdir` holds no logs of train.py."""
    runs = read_scalars(logdir)
    panels = [panel for panel in CURVES if f"{panel[0]}/train" in runs]
    if not panels:
        raise FileNotFoundError(f"{logdir}: no TensorBoard logs of train.py (vqvae/train, prior/train) there")
    figure = Figure(figsize=(4 * len(panels), 3))
    axes = figure.subplots(1, len(panels), squeeze=False)
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
    return figure
