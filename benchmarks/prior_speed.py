"""Training speed of the gated PixelCNN prior at several sizes: images (code grids) per second of
`fit` on random 32x32 grids of 256 codes, after one warm-up batch. Prints one JSON line per size.

What it tells: what a wider or deeper prior, or its attention layer, costs per epoch on this machine, for
choosing --prior-channels, --prior-layers, --prior-attention and --prior-epochs within a time budget.

    python -m benchmarks.prior_speed
    python -m benchmarks.prior_speed --sizes 32:10:1 128:15:2 --batch-size 64 --jit
"""

import runtime  # noqa: F401  (first: it sets TensorFlow's environment before TensorFlow loads)

import argparse
import json
import time

import keras
import numpy as np

import settings
from modules import GatedPixelCNN


def images_per_second(channels, layers, attention, batch_size, batches, jit):
    """Code grids per second of one epoch of `batches` batches of the prior's fit."""
    prior = GatedPixelCNN(num_codes=256, grid_size=32, channels=channels, num_layers=layers,
                          attention_layers=attention)
    prior.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit)
    codes = np.random.default_rng(0).integers(0, 256, (batch_size * batches, 32, 32)).astype("int32")
    prior.fit(codes[:batch_size], codes[:batch_size], batch_size=batch_size, epochs=1, verbose=0)
    start = time.perf_counter()
    prior.fit(codes, codes, batch_size=batch_size, epochs=1, verbose=0)
    return len(codes) / (time.perf_counter() - start)


def main():
    defaults = settings.defaults()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["32:10:0", "32:10:1", "64:10:0", "64:10:1", "96:10:0"],
                        help="CHANNELS:LAYERS:ATTENTION of each prior (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="default: %(default)s")
    parser.add_argument("--batches", type=int, default=6, help="batches timed (default: %(default)s)")
    parser.add_argument("--jit", action="store_true", help="compile the step with XLA")
    args = parser.parse_args()
    for size in args.sizes:
        channels, layers, attention = (int(part) for part in size.split(":"))
        speed = images_per_second(channels, layers, attention, args.batch_size, args.batches, args.jit)
        print(json.dumps({"benchmark": "prior_speed", "channels": channels, "layers": layers,
                          "attention_layers": attention, "batch_size": args.batch_size, "jit": args.jit,
                          "images_per_second": round(speed, 1)}), flush=True)


if __name__ == "__main__":
    main()
