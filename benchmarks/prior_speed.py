"""Training speed of the gated PixelCNN prior at several sizes: images (code grids) per second of
`fit` on random 32x32 grids of 256 codes, after a warm-up epoch. Prints one JSON line per size.

What it tells: what a wider or deeper prior, its attention layer and the attention's pooling cost per epoch
on this machine, for choosing --prior-channels, --prior-layers, --prior-attention, --prior-attention-pool,
--prior-batch-size and --prior-epochs within a time budget.

    python -m benchmarks.prior_speed
    python -m benchmarks.prior_speed --sizes 32:10:1:4 128:15:2:4 --batch-size 64 --jit
"""

import runtime  # noqa: F401  (first: it sets TensorFlow's environment before TensorFlow loads)

import argparse
import json
import time

import keras
import numpy as np

import settings
from prior import GatedPixelCNN


def compiled_prior(channels, layers, attention, pool, jit):
    """A prior of this size, compiled for training as train.py compiles it (Adam, cross-entropy)."""
    prior = GatedPixelCNN(num_codes=256, grid_size=32, channels=channels, num_layers=layers,
                          attention_layers=attention, attention_pool=pool)
    prior.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit)
    return prior


def images_per_second(prior, codes, batch_size):
    """Code grids per second of one epoch of the prior's fit on `codes`."""
    start = time.perf_counter()
    prior.fit(codes, codes, batch_size=batch_size, epochs=1, verbose=0)
    return len(codes) / (time.perf_counter() - start)


def main():
    defaults = settings.defaults()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["32:10:0", "32:10:1:1", "32:10:1:4", "64:10:1:4", "96:10:1:4"],
                        help="CHANNELS:LAYERS:ATTENTION[:POOL] of each prior; POOL as --prior-attention-pool "
                        "(default: %(default)s; POOL left out: 1)")
    parser.add_argument("--batch-size", type=int, default=defaults.prior_batch_size,
                        help="default: %(default)s")
    parser.add_argument("--batches", type=int, default=6, help="batches timed (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timings of each size, taken in turn; the best is printed, since a shared machine "
                        "only ever slows a run down (default: %(default)s)")
    parser.add_argument("--jit", action="store_true", help="compile the step with XLA")
    args = parser.parse_args()
    sizes = [tuple(([int(part) for part in size.split(":")] + [1])[:4]) for size in args.sizes]
    codes = np.random.default_rng(0).integers(0, 256, (args.batch_size * args.batches, 32, 32)).astype("int32")
    priors = [compiled_prior(*size, args.jit) for size in sizes]
    for prior in priors:  # tracing, and the first slow steps
        prior.fit(codes, codes, batch_size=args.batch_size, epochs=1, verbose=0)
    speeds = [[images_per_second(prior, codes, args.batch_size) for prior in priors] for _ in range(args.repeats)]
    for (channels, layers, attention, pool), timings in zip(sizes, zip(*speeds)):
        print(json.dumps({"benchmark": "prior_speed", "channels": channels, "layers": layers,
                          "attention_layers": attention, "attention_pool": pool, "batch_size": args.batch_size,
                          "jit": args.jit, "images_per_second": round(max(timings), 1),
                          "all_timings": [round(speed, 1) for speed in timings]}), flush=True)


if __name__ == "__main__":
    main()
