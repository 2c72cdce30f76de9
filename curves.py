"""Training curves: the scalars that Keras' TensorBoard callback wrote, read back and plotted per epoch."""

import os

import tensorflow as tf
from matplotlib.figure import Figure


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


def training_curves_figure(logdir):
    """A matplotlib Figure of the train and validation loss and SSIM of the VQ-VAE, and the prior's bits per
    code, per epoch; raises FileNotFoundError if `logdir` holds no logs of train.py."""
    runs = read_scalars(logdir)
    panels = [("vqvae", "epoch_loss", "VQ-VAE loss", True), ("vqvae", "epoch_ssim", "VQ-VAE SSIM", False),
              ("prior", "epoch_bits_per_code", "prior NLL (bits per code)", False)]
    panels = [p for p in panels if f"{p[0]}/train" in runs]
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
