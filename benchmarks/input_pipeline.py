"""Throughput of the tf.data input pipeline alone against what the training step consumes. Prints one JSON
line.

Measures, on a folder of real files, (1) the first pass: read, decode, convert to grayscale, pad to square,
area-resize and cache as 8-bit, as train.py does once per split (for NIfTI/Analyze volumes: read, turn to RAS,
normalise, slice along --axis and keep the brain slices, then the same), and (2) a training epoch from the cache:
shuffle, convert to float, batch and prefetch, as every later epoch does. The ratio compares the epoch
pipeline with the training step's images/s at the same size and batch (measured here, or --train-rate).

    python -m benchmarks.input_pipeline --data ../shared/data/ADNI
    python -m benchmarks.input_pipeline --data /data/OASIS --image-size 256 --batch-size 32
    python -m benchmarks.input_pipeline --data /data/OASIS-3-BIDS --axis axial
"""

import runtime  # noqa: F401  (first: it sets TensorFlow's environment before TensorFlow loads)

import argparse
import json
import os
import sys
import time

import tensorflow as tf

import dataset
from benchmarks.train_speed import CONFIGS, images_per_second


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True,
                        help="an OASIS, ADNI, image or volume folder, as for train.py --data")
    parser.add_argument("--axis", default="axial", choices=sorted(dataset.volumes.AXES), help="volumes only")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-rate", type=float, help="training images/s to compare with (default: measured)")
    args = parser.parse_args()
    source = dataset.load_source(args.data, axis=args.axis)
    split = source.splits["train"]

    start = time.perf_counter()
    decoded = dataset.decoded_split(split, args.image_size).images
    images = int(decoded.cardinality())
    first_pass = images / (time.perf_counter() - start)

    epoch = dataset.epochs_of_batches(decoded, args.batch_size, seed=0, first_epoch=0, last_epoch=2)
    batches = images // args.batch_size
    iterator = iter(epoch)
    next(iterator)  # the first batch builds the pipeline
    start = time.perf_counter()
    for _ in range(batches - 1):
        next(iterator)
    cached = (batches - 1) * args.batch_size / (time.perf_counter() - start)

    config = {**CONFIGS["default"], "image_size": args.image_size, "batch_size": args.batch_size}
    train_rate = args.train_rate or images_per_second(config, steps=20, jit=False)
    print(json.dumps({
        "benchmark": "input_pipeline", "data": source.kind, "files": len(split), "images": images,
        "image_size": args.image_size,
        "batch_size": args.batch_size, "first_pass_images_per_second": round(first_pass, 1),
        "epoch_images_per_second": round(cached, 1), "train_images_per_second": round(train_rate, 1),
        "epoch_over_train": round(cached / train_rate, 1), "first_pass_over_train": round(first_pass / train_rate, 1),
        "cpus": os.cpu_count(), "gpus": len(tf.config.list_physical_devices("GPU")),
        "command": " ".join(["python", "-m", "benchmarks.input_pipeline", *sys.argv[1:]])}))


if __name__ == "__main__":
    main()
