"""Denoising of Rician noise on a test split: the classical methods of MRI against an export of train.py.

The held-out slices (the test split, the middle `--slices-per-patient` of each patient's slices, at most
--max-slices spread over the patients) get Rician noise (noise.rician_noise: the same draws, scaled, at every
sigma, a percentage of the intensity range), clipped to [0, 1] as an image file would be. Each method is given
the true sigma, and the sigma estimated from each noisy slice by noise.estimate_sigma, which is what a user
has. The classical methods (benchmark dependencies only: benchmarks/requirements.txt):
  dipy-nlm            dipy's non-local means with its Rician correction (dipy.denoise.nlmeans, rician=True),
                      its default blockwise algorithm; dipy-nlm-classic: its classic one
  bm3d                BM3D (the bm3d package); bm3d+correction: then sqrt(max(d^2 - 2 sigma^2, 0)), which
                      removes the floor that Rician noise leaves in the background
  skimage-nlm         scikit-image's denoise_nl_means (fast mode, h = 0.8 sigma, as its documentation advises)
With --model: `reconstruct`, the export's reconstruction of the noisy slice, and `ours`, the export's
denoise(images, sigma) where it has that endpoint (given sigma -1 for "estimate it yourself").
Measured on outputs clipped to [0, 1]: SSIM over the whole image (tf.image.ssim), PSNR over the whole image
and inside the brain (the pixels where the clean slice is above BRAIN, 0.02), and seconds per image (one
process, one thread for dipy). For each sigma also the error of noise.estimate_sigma and, for reference, of dipy's
estimate_sigma. Prints one JSON line per sigma and method, then a summary line.

    python -m benchmarks.denoise --data ../shared/data/ADNI --model saved_models/adni \\
        --figure assets/denoise_ssim.png --examples assets/denoise_examples.png
"""

import runtime  # noqa: F401  (first: it sets TensorFlow's environment before TensorFlow loads)

import argparse
import importlib.util
import json
import sys
import time

import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure

import dataset
import noise
from export import load_export
from metrics import psnr, ssim
from utils import check_figure_path, fail, save_figure

BRAIN = 0.02  # intensity of the clean slice above which a pixel counts as brain, for PSNR inside the brain
BATCH = 64  # images per call of an export's endpoint
METHODS = ("noisy", "dipy-nlm", "dipy-nlm-classic", "bm3d", "bm3d+correction", "skimage-nlm", "reconstruct",
           "ours")
SIGMA_FREE = ("noisy", "reconstruct")  # methods that are not given a sigma
MODEL_METHODS = ("reconstruct", "ours")
PACKAGES = {"dipy-nlm": "dipy", "dipy-nlm-classic": "dipy", "bm3d": "bm3d", "bm3d+correction": "bm3d",
            "skimage-nlm": "skimage"}


def dipy_nlm(algorithm):
    """dipy's Rician non-local means of one slice [S, S] with its `algorithm` ("blockwise" or "classic")."""
    def run(image, sigma):
        from dipy.denoise.nlmeans import nlmeans

        # dipy denoises volumes: the slice is a volume one voxel deep.
        volume = image[..., None].astype(np.float64)
        return nlmeans(volume, sigma, rician=True, method=algorithm, num_threads=1)[..., 0]

    return run


def bm3d_slice(image, sigma):
    """BM3D of one slice [S, S] with noise of standard deviation `sigma`."""
    import bm3d

    return bm3d.bm3d(image, sigma_psd=sigma)


def skimage_nlm(image, sigma):
    """scikit-image's non-local means of one slice [S, S]."""
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(image, h=0.8 * sigma, sigma=sigma, fast_mode=True, patch_size=5, patch_distance=6)


PER_SLICE = {"dipy-nlm": dipy_nlm("blockwise"), "dipy-nlm-classic": dipy_nlm("classic"), "bm3d": bm3d_slice,
             "skimage-nlm": skimage_nlm}


def dipy_estimate(images):
    """dipy's estimate_sigma (N=1: the Rician correction) of each slice [N].

    It is written for volumes: on a volume one voxel deep its six-neighbour kernel sees the voxel itself in
    place of the two neighbours across slices, which scales its estimate of iid noise by sqrt(30 / 63);
    that factor is undone."""
    from dipy.denoise.noise_estimate import estimate_sigma

    return np.array([estimate_sigma(image.astype(np.float64), N=1)[0] for image in images]) * np.sqrt(63 / 30)


def middle(count, wanted):
    """Indices of `wanted` of `count` items, each in the middle of an equal share of them."""
    wanted = min(wanted, count)
    return ((np.arange(wanted) + 0.5) * count / wanted).astype(int)


def test_slices(data, image_size, per_patient, limit):
    """Clean test slices [N, S, S, 1]: the middle `per_patient` slices of each patient, at most `limit`,
    spread over the patients."""
    split = dataset.load_source(data).splits["test"]
    decoded = dataset.decoded_split(split, image_size)
    images = np.stack([image for image, _ in decoded.images.as_numpy_iterator()])
    patient_of = dict(zip(split.files, split.patients))
    rows = {}
    for index, (file, _) in enumerate(decoded.origins):
        rows.setdefault(patient_of[file], []).append(index)
    chosen = [rows[patient][i] for patient in sorted(rows) for i in middle(len(rows[patient]), per_patient)]
    return images[np.array(chosen)[middle(len(chosen), limit)]]


def batched(endpoint, images, *per_image):
    """An export's `endpoint` applied to `images` (and per-image arguments) BATCH images at a time."""
    outputs = []
    for start in range(0, len(images), BATCH):
        inputs = [tf.constant(values[start:start + BATCH], tf.float32) for values in (images, *per_image)]
        outputs.append(endpoint(*inputs).numpy())
    return np.concatenate(outputs)


def run_method(name, model, noisy, sigma, done):
    """(the outputs of method `name` on `noisy` [N, S, S, 1] given per-image `sigma` [N], seconds per image);
    `done` holds the results of the methods already run on these inputs with this sigma (BM3D's output is
    computed once for BM3D and BM3D with the correction; the correction's time is added to BM3D's)."""
    if name == "bm3d+correction":
        base, seconds = done["bm3d"] if "bm3d" in done else run_method("bm3d", model, noisy, sigma, done)
        started = time.perf_counter()
        corrected = noise.rician_bias_correct(base, sigma).numpy()
        return corrected, seconds + (time.perf_counter() - started) / len(noisy)
    started = time.perf_counter()
    if name == "noisy":
        outputs = noisy
    elif name == "reconstruct":
        outputs = batched(model.reconstruct, noisy)
    elif name == "ours":
        outputs = batched(model.denoise, noisy, sigma)
    else:
        outputs = np.stack([PER_SLICE[name](image[..., 0], float(value)) for image, value in zip(noisy, sigma)])
        outputs = outputs[..., None].astype(np.float32)
    done[name] = outputs, (time.perf_counter() - started) / len(noisy)
    return done[name]


def finite_mean(values):
    """The mean of the finite values (an exact copy has an infinite PSNR), or None if there are none."""
    values = np.asarray(values)[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def scores(clean, outputs):
    """Whole-image SSIM, whole-image PSNR and PSNR inside the brain, each the mean over the images, of
    `outputs` clipped to [0, 1] against `clean`."""
    outputs = np.clip(outputs, 0.0, 1.0).astype(np.float32)
    brain = clean[..., 0] > BRAIN
    squared = np.square(outputs - clean)[..., 0]
    brain_mse = (squared * brain).sum(axis=(1, 2)) / np.maximum(brain.sum(axis=(1, 2)), 1)
    with np.errstate(divide="ignore"):
        brain_psnr = 10 * np.log10(1.0 / brain_mse)
    return {"ssim": float(ssim(clean, outputs).numpy().mean()), "psnr": finite_mean(psnr(clean, outputs).numpy()),
            "psnr_brain": finite_mean(brain_psnr)}


def estimate_points(level, noisy):
    """JSON-ready dicts: how close noise.estimate_sigma, and dipy's estimate where dipy is installed, come to
    the true `level`."""
    estimators = {"noise.estimate_sigma": lambda images: noise.estimate_sigma(images).numpy()}
    if importlib.util.find_spec("dipy") is not None:
        estimators["dipy estimate_sigma"] = dipy_estimate
    points = []
    for name, estimate in estimators.items():
        started = time.perf_counter()
        estimates = estimate(noisy)
        point = {"method": name, "sigma_mean": float(estimates.mean()), "sigma_max": float(estimates.max()),
                 "seconds_per_image": (time.perf_counter() - started) / len(noisy)}
        if level > 0:
            errors = 100 * np.abs(estimates / level - 1)
            point.update(error_percent_mean=float(errors.mean()), error_percent_max=float(errors.max()))
        points.append(point)
    return points


def run_level(percent, clean, methods, givens, model, seed, emit):
    """Every method at noise sigma `percent` % of the intensity range, given each sigma of `givens`; each
    point goes to `emit` as it is measured. Returns (noisy images, {(method, given or None): outputs})."""
    level = percent / 100
    noisy = np.clip(noise.rician_noise(clean, level, seed).numpy(), 0.0, 1.0)
    for point in estimate_points(level, noisy):
        emit(percent, point)
    sigmas = {"true": np.full(len(clean), level, np.float32), "estimated": noise.estimate_sigma(noisy).numpy()}
    results = {}
    for given in givens:
        done = {}
        for name in methods:
            if name in SIGMA_FREE and given != givens[0]:  # they run once
                continue
            sigma = np.full(len(clean), -1.0, np.float32) if name == "ours" and given == "estimated" else sigmas[given]
            outputs, seconds = run_method(name, model, noisy, sigma, done)
            key = (name, None if name in SIGMA_FREE else given)
            results[key] = outputs
            emit(percent, {"method": name, "sigma_given": key[1], **scores(clean, outputs),
                           "seconds_per_image": seconds})
    return noisy, results


def plot_curves(points, path):
    """SSIM and PSNR inside the brain against sigma: a line per method, dashed where sigma was estimated."""
    figure = Figure(figsize=(11, 4.2))
    methods = [name for name in METHODS if any(p["method"] == name for p in points)]
    for axis, metric in zip(figure.subplots(1, 2), ("ssim", "psnr_brain")):
        for index, name in enumerate(methods):
            for given, style in ((None, "-"), ("true", "-"), ("estimated", "--")):
                curve = sorted((p for p in points if p["method"] == name and p.get("sigma_given") == given
                                and p[metric] is not None), key=lambda p: p["sigma_percent"])
                if curve:
                    axis.plot([p["sigma_percent"] for p in curve], [p[metric] for p in curve], style,
                              color=f"C{index}", marker=".", label=None if given == "estimated" else name)
        axis.set_xlabel("Rician noise sigma (% of the intensity range)")
        axis.set_ylabel("SSIM, whole image" if metric == "ssim" else "PSNR inside the brain (dB)")
        axis.grid(alpha=0.3)
    figure.axes[0].legend(fontsize=8)
    figure.suptitle("Denoising held-out test slices: solid given the true sigma, dashed given the sigma "
                    "estimated from the slice", fontsize=10)
    save_figure(figure, path, dpi=100, bbox_inches="tight")


def example_columns(clean, noisy, results, level):
    """(caption, images) of the examples figure: clean, noisy, BM3D with the correction and the export's
    denoising (or its reconstruction, without a denoise endpoint), where run; given the true sigma where
    they were."""
    columns = [("clean", clean), (f"noisy (sigma {level:g} %)", noisy)]
    shown = ("bm3d+correction", "ours") if any(key[0] == "ours" for key in results) else ("bm3d+correction",
                                                                                          "reconstruct")
    for name in shown:
        key = next((key for key in ((name, "true"), (name, "estimated"), (name, None)) if key in results), None)
        if key:
            caption = {"bm3d+correction": "BM3D + correction"}.get(name, name)
            columns.append((caption + (" (estimated sigma)" if key[1] == "estimated" else ""),
                            np.clip(results[key], 0.0, 1.0)))
    return columns


def plot_examples(clean, noisy, results, level, path, count=3):
    """A few slices (rows): clean, noisy and the denoised images, then each denoised image's absolute
    difference from the clean slice (0 to 0.2 of the intensity range); each with its SSIM."""
    columns = example_columns(clean, noisy, results, level)
    differences = [(f"|{caption} - clean|", np.abs(images - clean)) for caption, images in columns[2:]]
    rows = middle(len(clean), count)
    figure = Figure(figsize=(1.9 * (len(columns) + len(differences)), 2.0 * len(rows)))
    axes = figure.subplots(len(rows), len(columns) + len(differences), squeeze=False)
    for column, (caption, images) in enumerate(columns + differences):
        difference = column >= len(columns)
        for row, index in enumerate(rows):
            axis = axes[row, column]
            axis.axis("off")
            axis.imshow(images[index, ..., 0], cmap="magma" if difference else "gray", vmin=0,
                        vmax=0.2 if difference else 1)
            if 0 < column < len(columns):
                score = ssim(clean[index:index + 1], images[index:index + 1].astype(np.float32)).numpy()[0]
                axis.text(3, 124 * images.shape[1] // 128, f"SSIM {score:.3f}", color="yellow", fontsize=7)
        axes[0, column].set_title(caption, fontsize=8)
    figure.suptitle("Held-out test slices; difference maps from 0 (black) to 0.2 of the intensity range",
                    fontsize=9)
    save_figure(figure, path, dpi=100, bbox_inches="tight")


def best_of(points, metric):
    """The method, SSIM, PSNR inside the brain and seconds per image of the point with the highest `metric`."""
    # A PSNR of None is that of outputs equal to the clean slices (infinite): the best.
    best = max(points, key=lambda point: np.inf if point[metric] is None else point[metric])
    return {key: best[key] for key in ("method", "ssim", "psnr_brain", "seconds_per_image")}


def summary(points, command, n_images):
    """The summary line: at each sigma, the best classical method by SSIM and by PSNR inside the brain, given
    the true and the estimated sigma, and the export's methods."""
    levels = {}
    for level in sorted({p["sigma_percent"] for p in points}):
        here = [p for p in points if p["sigma_percent"] == level and "ssim" in p]
        row = {}
        for given in ("true", "estimated"):
            classical = [p for p in here if p["method"] in PACKAGES and p["sigma_given"] == given]
            if classical:
                row[f"best_classical_{given}_sigma"] = {f"by_{metric}": best_of(classical, metric)
                                                         for metric in ("ssim", "psnr_brain")}
        for p in (p for p in here if p["method"] in MODEL_METHODS):
            row[p["method"] + (f" ({p['sigma_given']} sigma)" if p["sigma_given"] else "")] = {
                key: p[key] for key in ("ssim", "psnr_brain", "seconds_per_image")}
        levels[f"{level:g}"] = row
    return {"benchmark": "denoise_summary", "n_images": n_images, "by_sigma_percent": levels, "command": command}


def parse_arguments():
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="data folder whose test split is used (default: the embedded demo)")
    parser.add_argument("--model", help="an export of train.py: adds its reconstruct and, where it has a denoise "
                        "endpoint, ours")
    parser.add_argument("--methods", nargs="+", choices=METHODS, metavar="METHOD",
                        help=f"methods to run, of {', '.join(METHODS)} (default: every one that applies)")
    parser.add_argument("--levels", nargs="+", type=float, default=[2.5, 5, 10, 15],
                        help="noise sigmas in %% of the intensity range (default: %(default)s)")
    parser.add_argument("--given", nargs="+", choices=("true", "estimated"), default=["true", "estimated"],
                        help="the sigma the methods are given: the true one, the one estimated from each slice, "
                        "or both (the default)")
    parser.add_argument("--slices-per-patient", type=int, default=1, help="default: %(default)s")
    parser.add_argument("--max-slices", type=int, default=60, help="default: %(default)s")
    parser.add_argument("--image-size", type=int, default=128, help="without --model (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="of the noise (default: %(default)s)")
    parser.add_argument("--figure", help="PNG of SSIM and PSNR inside the brain against sigma")
    parser.add_argument("--examples", help="PNG of clean, noisy, BM3D + correction and ours for a few slices")
    parser.add_argument("--example-level", type=float, default=10.0,
                        help="the sigma (%%, one of --levels) of --examples (default: %(default)s)")
    return parser.parse_args()


def check_arguments(args):
    """One-line errors for arguments that cannot work, before any slow step."""
    if any(not 0 <= level < 100 for level in args.levels):
        fail("--levels: each sigma is a percentage from 0 to below 100")
    if args.examples and args.example_level not in args.levels:
        fail(f"--example-level {args.example_level:g} is not one of --levels")
    if args.slices_per_patient < 1 or args.max_slices < 1:
        fail("--slices-per-patient and --max-slices must be at least 1")
    for flag, path in (("--figure", args.figure), ("--examples", args.examples)):
        if path:
            check_figure_path(flag, path)


def chosen_methods(args, model):
    """The methods to run; one-line errors for methods that cannot run here."""
    available = [name for name in METHODS if name not in MODEL_METHODS or model is not None]
    if model is not None and not hasattr(model, "denoise"):
        available.remove("ours")
    for name in args.methods or []:
        if name not in available:
            fail(f"--methods {name}: needs --model" + (" with a denoise endpoint" if name == "ours" else ""))
    methods = args.methods or available
    for name in methods:
        if name in PACKAGES and importlib.util.find_spec(PACKAGES[name]) is None:
            fail(f"--methods {name} needs the {PACKAGES[name]} package: pip install -r benchmarks/requirements.txt")
    return methods


def main():
    args = parse_arguments()
    check_arguments(args)
    model, size = None, args.image_size
    if args.model:
        try:
            model, metadata = load_export(args.model)
        except ValueError as error:
            fail(f"--model {error}")
        size = metadata["image_size"]
    methods = chosen_methods(args, model)
    try:
        clean = test_slices(args.data, size, args.slices_per_patient, args.max_slices)
    except dataset.DataError as error:
        fail(f"--data {error}")
    if model is not None:  # the first call of a SavedModel's function is slow: not part of any timing
        batched(model.reconstruct, clean[:1])
        if "ours" in methods:
            batched(model.denoise, clean[:1], np.full(1, -1.0))
    points, examples = [], None

    def emit(percent, point):
        points.append({"sigma_percent": percent, **point})
        print(json.dumps({"benchmark": "denoise", **points[-1], "n_images": len(clean)}), flush=True)

    for level in args.levels:
        noisy, results = run_level(level, clean, methods, args.given, model, args.seed, emit)
        if level == args.example_level:
            examples = noisy, results
    command = " ".join(["python", "-m", "benchmarks.denoise", *sys.argv[1:]])
    print(json.dumps(summary(points, command, len(clean))))
    if args.figure:
        plot_curves(points, args.figure)
        print(f"Figure: {args.figure}")
    if args.examples:
        plot_examples(clean, *examples, args.example_level, args.examples)
        print(f"Examples: {args.examples}")


if __name__ == "__main__":
    main()
