"""Anomaly maps on synthetic lesions: healing by the prior against the reconstruction residual and the plain
per-position negative log-likelihood, on held-out slices of any data.

Lesions (`insert_lesion`): one per slice, a soft-edged ellipse of random area (--areas, in pixels at 128x128,
scaled with the image's size), axis ratio (1 to 2) and angle, at a random place inside the brain (the pixels
above BRAIN, eroded by EDGE pixels so that the lesion sits in tissue). Its intensity is the tissue's mean
under it, plus or minus (at random) a contrast drawn from --contrast, plus half the tissue's own detail. The
truth is the lesion's core (weight >= 0.5) inside the brain. Each split gives as many untouched slices
(other slices of the same patients) as lesioned ones.

The validation split chooses, for each method, the settings a user would fix once: healing's likelihood
threshold (of --thresholds, the one with the highest pixel AUPRC) and the map's threshold (the one with the
highest Dice). The test split then reports, per method: pixel-level AUPRC and Dice at the best threshold
(what papers report) and at the validation-chosen one (what a user gets), the image-level AUROC of the
method's score (lesioned against untouched slices), and seconds per slice. Methods:
  heal-K      the export's heal in its first K scan orders (each K of --orders): anomaly map and score
  residual    |x - reconstruct(x)|, blurred by a Gaussian of one code's width; score: its peak
  nll         -log p(code | codes before it) (code_log_likelihoods), each code's value over its pixels,
              blurred likewise; score: its peak
Pixel metrics pool every pixel of the lesioned and untouched test slices.

    python -m benchmarks.anomaly --model saved_models/adni --data ../shared/data/ADNI \\
        --figure assets/anomaly_examples.png
"""

import runtime  # noqa: F401  (first: it sets TensorFlow's environment before TensorFlow loads)

import argparse
import json
import sys
import time

import numpy as np
import scipy.ndimage
import scipy.stats
import tensorflow as tf
from matplotlib.figure import Figure

import dataset
from export import load_export
from utils import check_figure_path, fail, save_figure

BRAIN = 0.05  # intensity above which a pixel counts as brain
EDGE = 3  # pixels (at 128x128) between a lesion's centre region and the brain's edge
BATCH = 32  # slices per call of an endpoint


def brain_mask(image):
    """bool [S, S]: the brain of one slice [S, S]: the pixels above BRAIN, holes filled."""
    return scipy.ndimage.binary_fill_holes(image > BRAIN)


def insert_lesion(image, rng, area, contrast):
    """(the slice [S, S] with one lesion of about `area` pixels, its truth mask bool [S, S]), or None if the
    slice has no room for it. `contrast`: (low, high) of the lesion's difference from the tissue."""
    size = image.shape[0]
    brain = brain_mask(image)
    ratio, angle = rng.uniform(1.0, 2.0), rng.uniform(0, np.pi)
    minor = np.sqrt(area / (np.pi * ratio))
    room = scipy.ndimage.binary_erosion(brain, iterations=int(np.ceil(ratio * minor)) + EDGE * size // 128)
    places = np.argwhere(room)
    if len(places) == 0:
        return None
    cy, cx = places[rng.integers(len(places))]
    y, x = np.mgrid[:size, :size].astype(np.float64)
    u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    radius = np.sqrt((u / (ratio * minor)) ** 2 + (v / minor) ** 2)  # 1 on the ellipse
    # Soft edge: full weight to 0.8 of the radius, falling smoothly to zero at 1.2.
    weight = np.clip((1.2 - radius) / 0.4, 0, 1)
    weight = weight * weight * (3 - 2 * weight) * brain
    core = weight >= 0.5
    tissue = image[core].mean()
    sign = rng.choice([-1.0, 1.0])
    level = np.clip(tissue + sign * rng.uniform(*contrast), 0.0, 1.0)
    lesion = level + 0.5 * (image - tissue)
    return np.clip(image * (1 - weight) + lesion * weight, 0, 1).astype(np.float32), core


def lesioned_and_untouched(images, patients, rng, areas, contrast, size):
    """(lesioned slices [L, S, S], their masks, untouched slices [U, S, S]): the slices of each patient taken in
    turn for a lesion and untouched, so that both come from the same patients."""
    lesioned, masks, untouched = [], [], []
    for patient in np.unique(patients):
        for k, index in enumerate(np.flatnonzero(patients == patient)):
            if k % 2:
                untouched.append(images[index])
                continue
            made = insert_lesion(images[index], rng, rng.uniform(*areas) * (size / 128) ** 2, contrast)
            if made is not None:
                lesioned.append(made[0])
                masks.append(made[1])
    return np.stack(lesioned), np.stack(masks), np.stack(untouched)


def ranked(scores, truth):
    """(thresholds, true positives, false positives) of pooled pixel scores, each threshold the score of one
    distinct value, highest first: the counts of pixels at or above it."""
    order = np.argsort(-scores.ravel(), kind="stable")
    values, hits = scores.ravel()[order], truth.ravel()[order].astype(np.int64)
    last = np.r_[np.flatnonzero(np.diff(values)), len(values) - 1]  # the last pixel of each distinct value
    true_positives = np.cumsum(hits)[last]
    return values[last], true_positives, last + 1 - true_positives


def average_precision(scores, truth):
    """The area under the precision-recall curve of pixel `scores` against bool `truth` (average precision,
    the sum of precision times each step of recall)."""
    _, tp, fp = ranked(scores, truth)
    recall_steps = np.diff(np.r_[0, tp]) / max(tp[-1], 1)
    return float(np.sum(tp / (tp + fp) * recall_steps))


def best_dice(scores, truth):
    """(the highest Dice of `scores` >= t against `truth` over thresholds t, that threshold)."""
    thresholds, tp, fp = ranked(scores, truth)
    dice = 2 * tp / (tp + fp + truth.sum())
    best = int(np.argmax(dice))
    return float(dice[best]), float(thresholds[best])


def dice_at(scores, truth, threshold):
    """Dice of the pixels whose score is at least `threshold` against `truth`."""
    found = scores >= threshold
    return float(2 * np.sum(found & truth) / max(found.sum() + truth.sum(), 1))


def auroc(positives, negatives):
    """The probability that a positive's score is above a negative's (ties count half): the Mann-Whitney U
    statistic over the product of the counts."""
    return float(scipy.stats.mannwhitneyu(positives, negatives).statistic / (len(positives) * len(negatives)))


def blurred(maps, sigma):
    """`maps` [N, S, S] each blurred by a Gaussian of `sigma` pixels."""
    return np.stack([scipy.ndimage.gaussian_filter(m, sigma) for m in maps])


def in_batches(function, images):
    """`function(images batch)` -> a dict of numpy arrays (or one array), for all `images` [N, S, S]."""
    parts = [function(tf.constant(images[start:start + BATCH, ..., None])) for start in range(0, len(images), BATCH)]
    if isinstance(parts[0], dict):
        return {key: np.concatenate([part[key].numpy() for part in parts]) for key in parts[0]}
    return np.concatenate([part.numpy() for part in parts])


class Methods:
    """Each method's (maps [N, S, S], scores [N]) of slices [N, S, S], from the export `model`."""

    def __init__(self, model, metadata, seed, label):
        self.model, self.seed = model, seed
        self.code_width = metadata["image_size"] // metadata["grid"]
        self.labels = [] if not metadata["class_names"] else [label]

    def heal(self, images, orders, threshold):
        def call(batch):
            labels = [tf.fill([tf.shape(batch)[0]], label) for label in self.labels]
            return self.model.heal(batch, tf.constant(threshold, tf.float32), tf.constant(self.seed),
                                   tf.constant(orders), *labels)
        maps = in_batches(call, images)
        return maps["anomaly"][..., 0], maps["score"], maps

    def residual(self, images):
        maps = blurred(np.abs(images - in_batches(self.model.reconstruct, images)[..., 0]), self.code_width)
        return maps, maps.max(axis=(1, 2))

    def nll(self, images):
        def call(batch):
            labels = [tf.fill([tf.shape(batch)[0]], label) for label in self.labels]
            return self.model.code_log_likelihoods(batch, *labels)
        per_code = -in_batches(call, images)
        pixels = np.kron(per_code, np.ones((self.code_width, self.code_width), np.float32))
        maps = blurred(pixels, self.code_width)
        return maps, maps.max(axis=(1, 2))


def evaluate(maps, scores, masks, lesioned_count, threshold):
    """The test figures of one method's maps over lesioned then untouched slices."""
    truth = np.concatenate([masks, np.zeros((len(maps) - lesioned_count, *masks.shape[1:]), bool)])
    best, _ = best_dice(maps, truth)
    return {"auprc": average_precision(maps, truth), "dice_best": best,
            "dice_validation_threshold": dice_at(maps, truth, threshold),
            "auroc": auroc(scores[:lesioned_count], scores[lesioned_count:])}


def split_slices(source, split, size, per_patient):
    """(slices [N, S, S], patients [N]): the middle `per_patient` slices of each patient of `split` (where the
    brain is largest), decoded at `size`."""
    images, patients = [], []
    chosen = source.splits[split]
    for patient in sorted(set(chosen.patients)):
        own = [image[..., 0] for image, _ in dataset.decoded_split(
            dataset.select(chosen, lambda p: p == patient), size).images.as_numpy_iterator()]
        middle = len(own) // 2
        start = max(0, middle - per_patient // 2)
        images += own[start:start + per_patient]
        patients += [patient] * len(own[start:start + per_patient])
    return np.stack(images), np.array(patients)


def run_method(name, run, validation, test):
    """Choose the method's settings on `validation`, measure on `test`; both (lesioned, masks, untouched)."""
    settings = run.settings
    best = None
    for setting in settings:
        maps, _ = run(validation, setting)[:2]
        truth = np.concatenate([validation[1], np.zeros((len(validation[2]), *validation[1].shape[1:]), bool)])
        score = average_precision(maps, truth)
        if best is None or score > best[0]:
            best = score, setting, best_dice(maps, truth)[1]
    _, setting, threshold = best
    inputs = np.concatenate([test[0], test[2]])
    started = time.perf_counter()
    outputs = run(test, setting)
    seconds = (time.perf_counter() - started) / len(inputs)
    figures = evaluate(outputs[0], outputs[1], test[1], len(test[0]), threshold)
    return {"method": name, "setting": setting, "map_threshold": threshold, **figures,
            "seconds_per_slice": seconds}, outputs


class Run:
    """A method as `run_method` calls it: run(split, setting) -> (maps, scores[, healing outputs])."""

    def __init__(self, function, settings):
        self.function, self.settings = function, settings

    def __call__(self, split, setting):
        return self.function(np.concatenate([split[0], split[2]]), setting)


def plot_examples(test, outputs, path, count=4):
    """Input / healed / map / truth of `count` lesioned test slices."""
    lesioned, masks = test[0][:count], test[1][:count]
    figure = Figure(figsize=(8, 2 * count))
    columns = (("input", lesioned, "gray"), ("healed", outputs["healed"][:count, ..., 0], "gray"),
               ("anomaly map", outputs["anomaly"][:count, ..., 0], "magma"), ("truth", masks, "gray"))
    for column, (title, images, colours) in enumerate(columns):
        for row in range(len(lesioned)):
            axis = figure.add_subplot(count, 4, row * 4 + column + 1)
            axis.imshow(images[row], cmap=colours, vmin=0, vmax=None if column == 2 else 1)
            axis.set_axis_off()
            if row == 0:
                axis.set_title(title)
    figure.tight_layout()
    save_figure(figure, path, dpi=80)


def parse_arguments():
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an export of train.py with a prior")
    parser.add_argument("--data", help="data folder whose validation and test splits are used (default: the demo)")
    parser.add_argument("--per-patient", type=int, default=8,
                        help="middle slices of each patient, half lesioned, half untouched (default: %(default)s)")
    parser.add_argument("--areas", type=float, nargs=2, default=[60, 160], metavar=("LOW", "HIGH"),
                        help="lesion areas in pixels at 128x128 (default: %(default)s)")
    parser.add_argument("--contrast", type=float, nargs=2, default=[0.2, 0.4], metavar=("LOW", "HIGH"),
                        help="lesion contrast against the tissue, of the intensity range (default: %(default)s)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.001, 0.005, 0.02, 0.05],
                        help="healing's likelihood thresholds to choose from on validation (default: %(default)s)")
    parser.add_argument("--orders", type=int, nargs="+", help="scan orders to heal in (default: 1 and every "
                        "order the prior learnt)")
    parser.add_argument("--label", type=int, default=None, help="the class index to heal under (conditional "
                        "priors; default: the last class, the normal controls of ADNI's AD, NC)")
    parser.add_argument("--seed", type=int, default=0, help="of the lesions and of healing (default: %(default)s)")
    parser.add_argument("--figure", help="PNG of input, healed, map and truth for a few test slices")
    return parser.parse_args()


def main():
    args = parse_arguments()
    if args.figure:
        check_figure_path("--figure", args.figure)
    try:
        model, metadata = load_export(args.model)
    except ValueError as error:
        fail(f"--model {error}")
    if not metadata["has_prior"]:
        fail(f"--model {args.model}: an export without a prior; it cannot heal")
    size, scan_orders = metadata["image_size"], metadata["scan_orders"]
    label = len(metadata["class_names"]) - 1 if args.label is None else args.label
    try:
        source = dataset.load_source(args.data)
    except dataset.DataError as error:
        fail(f"--data {error}")
    rng = np.random.default_rng(args.seed)
    splits = {}
    for split in ("validate", "test"):
        images, patients = split_slices(source, split, size, args.per_patient)
        splits[split] = lesioned_and_untouched(images, patients, rng, args.areas, args.contrast, size)
    methods = Methods(model, metadata, args.seed, label)
    orders = args.orders or sorted({1, scan_orders})
    runs = {f"heal-{k}": Run(lambda images, t, k=k: methods.heal(images, k, t), args.thresholds) for k in orders}
    runs["residual"] = Run(lambda images, _: methods.residual(images), [None])
    runs["nll"] = Run(lambda images, _: methods.nll(images), [None])
    methods.heal(splits["test"][0][:2], orders[-1], args.thresholds[0])  # the first call compiles: not timed
    results, examples = [], None
    for name, run in runs.items():
        result, outputs = run_method(name, run, splits["validate"], splits["test"])
        result.update(lesioned=len(splits["test"][0]), untouched=len(splits["test"][2]))
        results.append(result)
        print(json.dumps({"benchmark": "anomaly", **result}), flush=True)
        if name == f"heal-{orders[-1]}":
            examples = outputs[2]
    command = " ".join(["python", "-m", "benchmarks.anomaly", *sys.argv[1:]])
    print(json.dumps({"benchmark": "anomaly_summary", "command": command,
                      "dice_best": {r["method"]: round(r["dice_best"], 3) for r in results},
                      "auroc": {r["method"]: round(r["auroc"], 3) for r in results}}))
    if args.figure:
        plot_examples(splits["test"], examples, args.figure)
        print(f"Figure: {args.figure}")


if __name__ == "__main__":
    main()
