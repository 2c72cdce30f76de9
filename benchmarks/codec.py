"""Rate–distortion of the VQ-VAE codec against JPEG, JPEG 2000, WebP, AVIF and JPEG XL on a test split.

For each export: the actual files of `predict.py --compress` (bytes, next to the prior's ideal -log2 p), a
check that every file decodes to exactly decode(encode(x)), SSIM and PSNR of the decoded images, and the
seconds per image to compress and to decompress. Of a hierarchical export (VQ-VAE-2) the files hold both
levels of codes; its line gives the top grid and the top level's share of the ideal bytes too. For each
classical codec (imagecodecs; 8-bit grayscale, AVIF as three equal channels with pixel format 400, since its
grayscale input is coded losslessly, WebP lossy) and each byte budget: per image, the highest quality whose
file fits. All against the same float images the VQ-VAE sees. Prints one JSON line per point and a summary
line: the bits per image the best classical codec needs at each export's SSIM (interpolated on its curve),
and the ratio to the export's. A budget below a codec's smallest possible file for some image is left out
of that codec's curve.

    python -m benchmarks.codec --models saved_models/adni saved_models/adni16 --data /data/ADNI \\
        --plot assets/codec_rd.png
"""

import runtime  # noqa: F401  (first: it sets TensorFlow's environment before TensorFlow loads)

import argparse
import json
import sys
import time

import imagecodecs
import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure

import dataset
from codec import HEADER, PriorCodec, decode_levels, encode_levels, model_fingerprint, prior_bits
from export import load_export
from metrics import psnr, ssim
from utils import check_figure_path, save_figure

# Each codec: (encode at a quality level, decode to [H, W] uint8, the quality levels tried).
CODECS = {
    "JPEG": (lambda image, q: imagecodecs.jpeg8_encode(image, level=q, optimize=True),
             imagecodecs.jpeg8_decode, range(1, 96)),
    "JPEG 2000": (lambda image, q: imagecodecs.jpeg2k_encode(image, level=q), imagecodecs.jpeg2k_decode,
                  np.arange(14.0, 60.0, 1.0)),
    "WebP": (lambda image, q: imagecodecs.webp_encode(_rgb(image), level=q, lossless=False),
             lambda data: imagecodecs.webp_decode(data)[..., 0], range(0, 101)),
    "AVIF": (lambda image, q: imagecodecs.avif_encode(_rgb(image), level=q, pixelformat="400", speed=6),
             imagecodecs.avif_decode, range(0, 101, 2)),
    "JPEG XL": (lambda image, q: imagecodecs.jpegxl_encode(image, level=q), imagecodecs.jpegxl_decode,
                range(1, 101, 2)),
}


def _rgb(image):
    """Three equal channels: WebP takes no grayscale, and AVIF codes grayscale input losslessly."""
    return np.repeat(image[..., None], 3, axis=-1)


def test_images(data, image_size, limit):
    """Up to `limit` test images [N, S, S, 1], spread evenly over the split (and so over its patients)."""
    split = dataset.load_source(data).splits["test"]
    images = np.stack([image for image, _ in dataset.decoded_split(split, image_size).images.as_numpy_iterator()])
    return images[:: max(1, len(images) // limit)][:limit]


def vqvae_point(path, images):
    """The export's codec on `images`: one JSON-ready dict. Of a hierarchical export (top_grid > 0) the files
    hold both levels of codes, and the ideal bits are both levels'; the top level's share is reported apart."""
    model, metadata = load_export(path)
    codec = PriorCodec(model, metadata, model_fingerprint(path))
    ideal_bits, labels = prior_bits(model, metadata, images)
    started = time.perf_counter()
    files = codec.compress(images, labels)
    compress_seconds = time.perf_counter() - started
    started = time.perf_counter()
    decoded = [codec.decompress(data)[0] for data in files]
    decompress_seconds = time.perf_counter() - started
    expected = encode_levels(model, metadata, images)
    exact = sum(all(np.array_equal(codes, reference[index]) for codes, reference in zip(levels, expected))
                for index, levels in enumerate(decoded))
    reconstructions = decode_levels(model, [np.stack(level) for level in zip(*decoded)])
    sizes = np.array([len(data) for data in files])
    payload_bits = 8 * (sizes - HEADER.size)
    top = {"top_grid": metadata["top_grid"]}
    if metadata["top_grid"]:
        top["ideal_top_bytes_mean"] = float(top_prior_bits(model, expected[0], labels).mean() / 8)
    return {"codec": "VQ-VAE", "model": str(path), "grid": metadata["grid"], **top,
            "num_codes": metadata["num_codes"], "bytes_mean": float(sizes.mean()),
            "bpp": float(8 * sizes.mean() / images[0].size), "ideal_bytes_mean": float(ideal_bits.mean() / 8),
            "header_bytes": HEADER.size,
            "payload_over_ideal_percent": float(100 * (payload_bits.sum() / ideal_bits.sum() - 1)),
            "round_trip_exact": f"{exact}/{len(images)}",
            "ssim": float(ssim(images, reconstructions).numpy().mean()),
            "psnr": float(np.mean(psnr(images, reconstructions).numpy())),
            "compress_seconds_per_image": compress_seconds / len(images),
            "decompress_seconds_per_image": decompress_seconds / len(images)}


def top_prior_bits(model, top_codes, labels):
    """-log2 p of each top grid [N] under a hierarchical export's top prior (with `labels` where conditional)."""
    logits = model.top_prior_logits(tf.constant(top_codes), *([] if labels is None else [tf.constant(labels)]))
    log_p = tf.nn.log_softmax(tf.cast(logits, tf.float64))
    picked = tf.gather(log_p, tf.constant(top_codes), batch_dims=3)
    return -tf.reduce_sum(picked, axis=[1, 2]).numpy() / np.log(2)


def classical_points(name, images, budgets):
    """One dict per byte budget that every image fits: mean size, SSIM and PSNR of `name` at the highest
    quality that fits."""
    encode, decode, levels = CODECS[name]
    chosen = {budget: [] for budget in budgets}
    for image in images:
        pixels = np.round(image[..., 0] * 255).astype(np.uint8)
        trials = [(len(data), data) for data in (encode(pixels, level) for level in levels)]
        for budget in budgets:
            fitting = [trial for trial in trials if trial[0] <= budget]
            if fitting:
                size, data = max(fitting, key=lambda trial: trial[0])  # the largest file that fits: the best
                chosen[budget].append((size, decode(data).astype(np.float32)[..., None] / 255.0))
    points = []
    for budget, picks in chosen.items():
        if len(picks) < len(images):  # this codec cannot go that small for some image
            continue
        decoded = np.stack([image for _, image in picks])
        mean_bytes = float(np.mean([size for size, _ in picks]))
        points.append({"codec": name, "budget_bytes": budget, "bytes_mean": mean_bytes,
                       "bpp": 8 * mean_bytes / images[0].size, "ssim": float(ssim(images, decoded).numpy().mean()),
                       "psnr": float(np.mean(psnr(images, decoded).numpy()))})
    return points


def bytes_at_ssim(points, target):
    """Bytes per image that a codec's curve reaches `target` SSIM at (linear in log bytes); None if never."""
    points = sorted(points, key=lambda p: p["bytes_mean"])
    for low, high in zip(points, points[1:]):
        if low["ssim"] <= target <= high["ssim"] and high["ssim"] > low["ssim"]:
            t = (target - low["ssim"]) / (high["ssim"] - low["ssim"])
            return float(np.exp(np.log(low["bytes_mean"]) * (1 - t) + np.log(high["bytes_mean"]) * t))
    return None


def plot(points, path):
    """SSIM and PSNR against bits per pixel, one line per classical codec, a marker per VQ-VAE export."""
    figure = Figure(figsize=(11, 4.2))
    for axis, metric in zip(figure.subplots(1, 2), ("ssim", "psnr")):
        for name in sorted({p["codec"] for p in points} - {"VQ-VAE"}, key=list(CODECS).index):
            curve = sorted((p for p in points if p["codec"] == name), key=lambda p: p["bpp"])
            axis.plot([p["bpp"] for p in curve], [p[metric] for p in curve], marker=".", label=name)
        for p in (p for p in points if p["codec"] == "VQ-VAE"):
            axis.plot(p["bpp"], p[metric], "k*", markersize=12)
            top = f" + {p['top_grid']}x{p['top_grid']}" if p.get("top_grid") else ""
            axis.annotate(f"VQ-VAE {p['grid']}x{p['grid']}{top}, K={p['num_codes']}", (p["bpp"], p[metric]),
                          textcoords="offset points", xytext=(6, -12), fontsize=8)
        axis.set_xscale("log")
        axis.set_xlabel("bits per pixel (whole file)")
        axis.set_ylabel(metric.upper() + (" (dB)" if metric == "psnr" else ""))
        axis.grid(alpha=0.3)
    figure.axes[0].legend(fontsize=8)
    figure.suptitle("Rate–distortion on held-out test slices (128x128)", fontsize=10)
    save_figure(figure, path, dpi=100, bbox_inches="tight")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["saved_models/vqvae"], help="exports from train.py")
    parser.add_argument("--data", help="data folder (default: the embedded demo)")
    parser.add_argument("--limit", type=int, default=100,
                        help="test images, spread evenly over the split (default: %(default)s)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 150, 200, 300, 400, 600, 800, 1200, 1600,
                                                                  2400, 3200], help="bytes per image")
    parser.add_argument("--classical", nargs="*", default=list(CODECS), choices=list(CODECS), metavar="CODEC",
                        help=f"classical codecs to compare (default: all of {', '.join(CODECS)}; none: only the "
                        "VQ-VAE, for a round-trip check of a whole split)")
    parser.add_argument("--plot", help="PNG of SSIM and PSNR against bits per pixel")
    args = parser.parse_args()
    command = "python -m benchmarks.codec " + " ".join(sys.argv[1:])
    if args.plot:
        check_figure_path("--plot", args.plot)
    size = load_export(args.models[0])[1]["image_size"]
    images = test_images(args.data, size, args.limit)
    points = []
    for path in args.models:
        points.append(vqvae_point(path, images))
        print(json.dumps({"benchmark": "codec", **points[-1], "n_images": len(images)}), flush=True)
    for name in args.classical:
        for point in classical_points(name, images, args.budgets):
            points.append(point)
            print(json.dumps({"benchmark": "codec", **point, "n_images": len(images)}), flush=True)
    for point in (p for p in points if p["codec"] == "VQ-VAE"):
        needed = {name: bytes_at_ssim([p for p in points if p["codec"] == name], point["ssim"])
                  for name in args.classical}
        reached = {name: value for name, value in needed.items() if value is not None}
        best = min(reached, key=reached.get) if reached else None
        print(json.dumps({"benchmark": "codec_summary", "model": point["model"], "ssim": point["ssim"],
                          "bytes_mean": point["bytes_mean"], "classical_bytes_at_same_ssim": needed,
                          "best_classical": best,
                          "ratio": reached[best] / point["bytes_mean"] if best else None, "command": command}))
    if args.plot:
        plot(points, args.plot)
        print(f"Plot: {args.plot}")


if __name__ == "__main__":
    main()
