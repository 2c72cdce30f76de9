"""Speed of the cached prior: sampling against G*G full passes of the same prior on the same batch, and
the codec's time to decode one image.

The cached sampler (`GatedPixelCNN.sample`) does constant work per position; the alternative recomputes the
whole network at every position, G*G full passes, timed here as one full pass times G*G. Both draw the same
codes (tests/test_prior.py). Times are of a second call, after the first has traced and compiled. With
--model, also the seconds to compress and to decompress one image with that export (`codec.PriorCodec`, one
image at a time, as the codec always works), and decompression's speed-up over G*G full passes on one image.
Prints one JSON line.

    python -m benchmarks.sampler                                  # train.py's default prior size, random
    python -m benchmarks.sampler --model saved_models/adni --n 16
"""

import runtime  # noqa: F401  (first: it sets TensorFlow's environment before TensorFlow loads)

import argparse
import json
import sys
import time

import keras
import numpy as np
import tensorflow as tf

import settings
from codec import PriorCodec, decode_levels, model_fingerprint
from export import load_export
from prior import GatedPixelCNN


def seconds_of_second_call(function, *args):
    """Seconds of one call of `function(*args)` after a first call that traces and compiles it."""
    np.asarray(function(*args))
    start = time.perf_counter()
    np.asarray(function(*args))
    return time.perf_counter() - start


def default_prior():
    """A prior of train.py's default size (random weights: speed does not depend on them)."""
    defaults = settings.defaults()
    grid = defaults.image_size // 2 ** defaults.downsamplings
    return GatedPixelCNN(num_codes=defaults.num_codes, grid_size=grid, num_classes=2,
                         **settings.model_arguments(defaults, settings.PRIOR))


def codec_seconds(path):
    """(seconds to compress, seconds to decompress) one image with the export at `path`."""
    model, metadata = load_export(path)
    codec = PriorCodec(model, metadata, model_fingerprint(path))
    rng = np.random.default_rng(0)
    sides = [metadata["top_grid"], metadata["grid"]] if metadata["top_grid"] else [metadata["grid"]]
    image = decode_levels(model, [rng.integers(0, metadata["num_codes"], (1, side, side)) for side in sides])
    files = codec.compress(image)
    codec.decompress(files[0])
    start = time.perf_counter()
    files = codec.compress(image)
    compress = time.perf_counter() - start
    start = time.perf_counter()
    codec.decompress(files[0])
    return compress, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an export of train.py: its prior, and its codec timed on one image")
    parser.add_argument("--n", type=int, default=16, help="grids sampled at once (default: %(default)s)")
    args = parser.parse_args()
    prior = keras.models.load_model(f"{args.model}/prior.keras") if args.model else default_prior()
    n, g = args.n, prior.grid_size
    labels = tf.zeros([n], tf.int32) if prior.num_classes else None
    codes = tf.zeros((n, g, g), tf.int32)
    full_pass = seconds_of_second_call(tf.function(lambda: prior((codes, labels) if prior.num_classes else codes)))
    seed = tf.constant(1)
    compiled = seconds_of_second_call(tf.function(lambda: prior.sample(n, labels, seed=seed), jit_compile=True))
    graph = seconds_of_second_call(tf.function(lambda: prior.sample(n, labels, seed=seed)))
    result = {"benchmark": "sampler", "n": n, "grid": g, "channels": prior.channels, "layers": prior.num_layers,
              "attention_layers": prior.attention_layers, "full_pass_seconds": round(full_pass, 4),
              "full_passes_seconds": round(full_pass * g * g, 2), "sample_seconds_xla": round(compiled, 3),
              "sample_seconds_graph": round(graph, 3), "speedup_xla": round(full_pass * g * g / compiled, 1),
              "speedup_graph": round(full_pass * g * g / graph, 1)}
    if args.model:
        compress, decompress = codec_seconds(args.model)
        one = tf.zeros((1, g, g), tf.int32)
        label = tf.zeros([1], tf.int32)
        full_pass_one = seconds_of_second_call(tf.function(lambda: prior((one, label) if prior.num_classes else one)))
        result.update(compress_seconds_per_image=round(compress, 3), decompress_seconds_per_image=round(decompress, 3),
                      full_passes_seconds_one_image=round(full_pass_one * g * g, 2),
                      decompress_speedup=round(full_pass_one * g * g / decompress, 1))
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    print(json.dumps({**result, "device": device, "command": "python -m benchmarks.sampler " + " ".join(sys.argv[1:])}))


if __name__ == "__main__":
    main()
