"""Test SSIM of the VQ-VAE against training time: train.py's VQ-VAE stage on a folder for a fixed budget of
training minutes, scoring the whole test split after every minute (scoring time is not counted). Prints one
JSON line per score and a summary line with the minutes taken to reach --target SSIM.

    python -m benchmarks.quality_per_time --data ../shared/data/ADNI --minutes 15 --epochs 9
    python -m benchmarks.quality_per_time --data /data/OASIS --minutes 5 -- --channels 128

Arguments after `--` go to train.py unchanged.
"""

import runtime  # noqa: F401  (first: it sets TensorFlow's environment before TensorFlow loads)

import argparse
import json
import os
import sys
import tempfile

import keras
import tensorflow as tf

import dataset
import train
from callbacks import TrainingClock
from metrics import mean_ssim


class ScoreEveryMinute(TrainingClock):
    """After each further minute of training steps (timed as train.py times them), the mean SSIM of the whole
    test split."""

    def __init__(self, test_images, every_seconds=60):
        super().__init__()
        self.test_images = test_images
        self.every = every_seconds
        self.next_score = every_seconds
        self.scores = []

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if self.seconds >= self.next_score:
            self.score()
            self.next_score += self.every

    def on_train_end(self, logs=None):
        if not self.scores or self.scores[-1]["minutes"] < round(self.seconds / 60, 2):
            self.score()

    def score(self):
        reconstruct = tf.function(self.model.reconstruct)
        totals = [float(mean_ssim(images, reconstruct(images))) * len(images) for images in self.test_images]
        mean = sum(totals) / sum(len(images) for images in self.test_images)
        point = {"minutes": round(self.seconds / 60, 2), "test_ssim": round(mean, 4)}
        self.scores.append(point)
        print(json.dumps(point), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="an OASIS, ADNI or image folder, as for train.py --data")
    parser.add_argument("--minutes", type=float, default=15, help="training minutes (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=9, help="planned epochs of the cosine schedule")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--target", type=float, default=0.77, help="report when the test SSIM first reaches this")
    parser.add_argument("train_args", nargs="*", help="more train.py flags, after --")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="quality_per_time_")
    train_args = train.parse_args(["--data", args.data, "--image-size", str(args.image_size), "--epochs",
                                   str(args.epochs), "--max-minutes", str(args.minutes), "--stage", "vqvae",
                                   "--out", f"{scratch}/vqvae", "--logdir", f"{scratch}/logs", *args.train_args])
    strategy, jit = train.configure_hardware(train_args)
    keras.utils.set_random_seed(train_args.seed)
    data = train.load_data(train_args)
    test_images = [images for images, _ in dataset.batched(data.decoded["test"], 64)]
    scorer = ScoreEveryMinute(test_images)
    train.train_vqvae(train_args, data, train.Run.of(train_args, strategy, jit), [scorer])
    reached = next((point["minutes"] for point in scorer.scores if point["test_ssim"] >= args.target), None)
    print(json.dumps({"benchmark": "quality_per_time", "data": data.source.kind, "test_images": len(data.source.splits["test"]),
                      "budget_minutes": args.minutes, "final_test_ssim": scorer.scores[-1]["test_ssim"],
                      "target_ssim": args.target, "minutes_to_target": reached,
                      "device": "GPU" if tf.config.list_physical_devices("GPU") else f"CPU x{os.cpu_count()}",
                      "command": " ".join(["python", "-m", "benchmarks.quality_per_time", *sys.argv[1:]])}))


if __name__ == "__main__":
    main()
