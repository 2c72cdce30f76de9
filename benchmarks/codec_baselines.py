"""The VQ-VAE as a codec: SSIM at the same bits per image as plain downsampling and JPEG.

The VQ-VAE stores an image as h*w codes of log2(K) bits. At that budget the baselines are:
- downsampling: the largest square of 8-bit pixels that fits, upsampled back (bicubic);
- JPEG: per image, the highest quality (Pillow, grayscale, optimised Huffman tables) whose whole file fits.
Prints one JSON line with the three mean SSIMs on the test split.

    python -m benchmarks.codec_baselines --model saved_models/vqvae --data /data/ADNI
"""

import runtime  # noqa: F401  (first: it sets TensorFlow's environment before TensorFlow loads)

import argparse
import io
import json
import math
import sys

import numpy as np
import tensorflow as tf
from PIL import Image

import dataset
from metrics import ssim


def jpeg_at_most(image_uint8, max_bytes):
    """The decoded JPEG of the highest quality whose file has at most `max_bytes` (quality 1 if none fits)."""
    best = None
    low, high = 1, 95
    while low <= high:
        quality = (low + high) // 2
        buffer = io.BytesIO()
        Image.fromarray(image_uint8).save(buffer, format="JPEG", quality=quality, optimize=True)
        if buffer.tell() <= max_bytes:
            best, low = buffer.getvalue(), quality + 1
        else:
            high = quality - 1
    if best is None:
        buffer = io.BytesIO()
        Image.fromarray(image_uint8).save(buffer, format="JPEG", quality=1, optimize=True)
        best = buffer.getvalue()
    return np.asarray(Image.open(io.BytesIO(best)), np.float32)[..., None] / 255.0, len(best)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="saved_models/vqvae", help="SavedModel from train.py")
    parser.add_argument("--data", help="data folder (default: the embedded demo)")
    parser.add_argument("--limit", type=int, default=400, help="at most this many test images (spread evenly)")
    args = parser.parse_args()

    model = tf.saved_model.load(args.model)
    metadata = json.loads(model.metadata().numpy().decode())
    size, grid, num_codes = metadata["image_size"], metadata["grid"], metadata["num_codes"]
    bits = grid * grid * math.log2(num_codes)
    test = dataset.load_source(args.data).splits["test"]
    decoded = dataset.decoded_split(test, size).images
    images = np.stack([image for image, _ in decoded.as_numpy_iterator()])
    images = images[:: max(1, len(images) // args.limit)][: args.limit]

    vqvae = np.concatenate([model.reconstruct(tf.constant(b)).numpy() for b in np.array_split(images, 8)])
    side = int(math.sqrt(bits / 8))
    small = tf.image.resize(images, (side, side), method="area")
    small = tf.round(small * 255) / 255  # 8-bit pixels
    downsampled = tf.clip_by_value(tf.image.resize(small, (size, size), method="bicubic"), 0, 1).numpy()
    jpegs = [jpeg_at_most(np.round(image[..., 0] * 255).astype(np.uint8), int(bits // 8)) for image in images]
    jpeg = np.stack([decoded_jpeg for decoded_jpeg, _ in jpegs])

    result = {
        "benchmark": "codec_baselines", "data": args.data or "demo", "n_images": len(images),
        "image_size": size, "bits_per_image": bits,
        "ssim_vqvae": float(ssim(images, vqvae).numpy().mean()),
        "ssim_downsample": float(ssim(images, downsampled).numpy().mean()), "downsample_side": side,
        "ssim_jpeg": float(ssim(images, jpeg).numpy().mean()),
        "jpeg_mean_bytes": float(np.mean([n for _, n in jpegs])),
        "command": "python -m benchmarks.codec_baselines " + " ".join(sys.argv[1:]),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
