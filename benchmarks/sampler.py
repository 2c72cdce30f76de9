"""Sampling speed of the gated PixelCNN prior: the row-cached sampler against full recompute.

The fast sampler runs the vertical stack once per row and only the current row's horizontal stack per
position; the full sampler recomputes the whole network for every position. Both draw identical codes
(tests/test_prior.py). The full sampler is timed on --full-rows rows and scaled to the whole grid (its cost
per row is the same for every row); the fast sampler is timed on the whole grid. Prints one JSON line.

    python -m benchmarks.sampler                       # default prior size, random weights
    python -m benchmarks.sampler --prior saved_models/vqvae/prior.keras
"""

import runtime  # noqa: F401  (first: it sets TensorFlow's environment before TensorFlow loads)

import argparse
import json
import sys
import time

import keras
import tensorflow as tf

import settings
from modules import GatedPixelCNN


def timed(function, *args):
    """Seconds of one call after a warm-up call (which traces and compiles)."""
    function(*args)
    start = time.perf_counter()
    function(*args).numpy()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", help="a prior.keras from train.py (default: train.py's default size, random)")
    parser.add_argument("--n", type=int, default=16, help="grids sampled at once (default: %(default)s)")
    parser.add_argument("--full-rows", type=int, default=2, help="rows the full sampler is timed on")
    args = parser.parse_args()
    if args.prior:
        prior = keras.models.load_model(args.prior)
    else:
        defaults = settings.defaults()
        grid = defaults.image_size // 2 ** defaults.downsamplings
        prior = GatedPixelCNN(num_codes=defaults.num_codes, grid_size=grid, **settings.model_arguments(defaults,
                                                                                                       settings.PRIOR))
    n, g = args.n, prior.grid_size
    labels = tf.zeros([n], tf.int32) if prior.num_classes else None

    fast = tf.function(lambda: prior.sample(n, labels, seed=0, fast=True))
    fast_seconds = timed(fast)

    @tf.function
    def full_rows():
        codes = tf.zeros((n, g, g), tf.int32)
        for i in tf.range(args.full_rows):
            codes = prior._sample_row(codes, i, labels, 1.0, 0)
        return codes

    full_seconds = timed(full_rows) * g / args.full_rows
    print(json.dumps({
        "benchmark": "sampler", "n": n, "grid": g, "channels": prior.channels, "layers": prior.num_layers,
        "fast_seconds": round(fast_seconds, 3), "full_recompute_seconds_extrapolated": round(full_seconds, 3),
        "full_rows_timed": args.full_rows, "speedup": round(full_seconds / fast_seconds, 1),
        "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
        "command": "python -m benchmarks.sampler " + " ".join(sys.argv[1:]),
    }))


if __name__ == "__main__":
    main()
