"""Realism of generated slices: classifier two-sample tests with controls, sample diversity, the head's tissue
intensities, a memorisation check and anatomy statistics, for any export of train.py and a data folder.
Prints one JSON line.

The real held-out slices (the test split, at most --slices-per-patient per patient, spread over each
patient's slices; for the demo, 16 new virtual subjects from the demo's generator with another seed) are
split by patient into A and B. Two small CNNs, trained from scratch, tell real A from each of: real B (the
floor, about 0.5), blurred B (a degraded control, near 1.0), the model's reconstructions of B (what the decoder
alone gives away) and generated slices. One pools its features over the image ("pooled") and sees texture;
the other keeps the slice's layout ("layout": no pooling, a flattened map) and sees anatomy in the wrong
place. Each misses something the other sees, so every two-sample figure is given for both (mean, spread and
each of --seeds classifiers) and as "higher", the higher of their means: the figure that counts. Each
classifier trains on half of each side's patients (every generated slice is its own "patient") and is
scored, by balanced accuracy, on the other half. The prior alone: generated slices against the
reconstructions of real A; both come through the same decoder, so what the decoder gives away (its
smoothing) does not separate them, and what does is the prior's. Class-conditional models also get both
per class.

Beside them: diversity, the mean MS-SSIM of random pairs of generated slices beside that of pairs of real
held-out slices of different patients (a prior that draws one slice again and again scores near 1); tissue,
the intensities of the head's three tissue peaks (a 3-class k-means of head pixels; in T1 CSF, grey and white
matter) of real A, real B and generated slices, and the total-variation distance of B's and of the generated
slices' head-intensity histograms from A's; anatomy, the head's area and how often it touches the border.

One run measures generated slices twice, both from the same codes: "texture_on", with the export's texture
(texture.py) as predict.py writes them, and "texture_off", the decoder's mean; each holds its two-sample,
diversity, tissue and anatomy figures, and the prior alone compares it with reconstructions with or without
the texture alike. The controls do not depend on sampling and are computed once ("controls", with one more
for reconstructions with the texture). Memorisation, the mean over generated slices of the highest SSIM to any
training slice beside the same for real held-out slices, is computed once, on the slices as predict.py writes
them. An export without a texture, or --no-texture, gives texture_off alone.

    {"benchmark": "realism", "model": ..., "real_a": 320, "generated": 320, "has_texture": true, "seeds": 3,
     "epochs": {"pooled": 30, "layout": 25},
     "controls": {"real_vs_real": {"pooled": {"mean", "std", "each"}, "layout": {...}, "higher": 0.55},
                  "real_vs_blurred", "real_vs_reconstructions", "real_vs_textured_reconstructions"},
     "texture_on": {"two_sample_accuracy": {"real_vs_generated", "reconstructions_vs_generated"},
                    "diversity": {"ms_ssim_generated_pairs", "ms_ssim_real_pairs"},
                    "tissue": {"real_peaks": [csf, grey, white], "real_b_peaks", "generated_peaks",
                               "histogram_distance_real_b", "histogram_distance_generated"},
                    "anatomy": {"head_area_real", "head_area_generated", "touches_border_real",
                                "touches_border_generated"},
                    "per_class": {"AD": {"real_vs_generated", "reconstructions_vs_generated"}, ...}},
     "texture_off": {... the same keys}, "memorisation": {"generated_slices": "texture_on",
     "generated_nearest_train_ssim", "real_nearest_train_ssim"}, "command": ...}

Cost: each comparison trains 2 x --seeds classifiers. On the demo on 2 CPU cores the full run (40 slices a
patient, 3 seeds) should take about half an hour and --quick (20 slices a patient, 1 seed, fewer memorisation
comparisons) under 10 minutes, with noisier figures (estimates from the classifiers' training times and the
one-classifier run's 16 minutes, not yet measured end to end).

    python -m benchmarks.realism --model saved_models/vqvae                  # the demo's export on the demo
    python -m benchmarks.realism --quick                                     # a quick look at it
    python -m benchmarks.realism --model saved_models/adni --data ../shared/data/ADNI
"""

import runtime  # noqa: F401  (first: it sets TensorFlow's environment before TensorFlow loads)

import argparse
import dataclasses
import json
import sys

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from matplotlib.figure import Figure

import dataset
import demo
from export import add_texture, load_export, sample_images
from metrics import ssim
from utils import check_figure_path, fail, save_figure

FOREGROUND = 0.1  # intensity above which a pixel counts as head, not background


def discriminator(image_size):
    """A small CNN that outputs the logit of "generated" for an image [S, S, 1]."""
    # Batch normalisation because without it the training stalled for some seeds (on the demo's samples, six
    # seeds scored 0.63-1.00; with it, 1.00 each, and real against real still 0.52). Momentum 0.9, not Keras's
    # 0.99: the moving statistics used for scoring must settle within a few hundred steps.
    blocks = [[layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False),
               layers.BatchNormalization(momentum=0.9), layers.ReLU()] for width in (16, 32, 64, 64)]
    return keras.Sequential([keras.Input((image_size, image_size, 1)), *sum(blocks, []),
                             layers.GlobalAveragePooling2D(), layers.Dense(1)])


def layout_discriminator(image_size):
    """A CNN that keeps the slice's layout (no pooling: its output unit sees where each feature is) and
    outputs the logit of "generated" for an image [S, S, 1]."""
    # Global pooling throws away where a feature sits, so the pooled classifier misses anatomy in the wrong
    # place; this one sees it, and misses some of the texture the pooled one sees: each misses something the
    # other sees. Momentum 0.9 for the reason given in `discriminator`.
    blocks = [[layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False),
               layers.BatchNormalization(momentum=0.9), layers.ReLU()] for width in (32, 64, 64, 64)]
    return keras.Sequential([keras.Input((image_size, image_size, 1)), *sum(blocks, []),
                             layers.Flatten(), layers.Dropout(0.5), layers.Dense(1)])


CLASSIFIERS = {"pooled": discriminator, "layout": layout_discriminator}
EPOCHS = {"pooled": 30, "layout": 25}  # each classifier's measured training length (see main's --epochs)


def halves(groups, seed):
    """A boolean mask of the items whose group falls in the first of two random halves of the groups."""
    names = np.unique(groups)
    first = set(np.random.default_rng(seed).permutation(names)[: len(names) // 2])
    return np.array([group in first for group in groups])


def two_sample_accuracy(real, real_groups, other, other_groups, seed, epochs=20, batch_size=32, kind="pooled"):
    """Balanced accuracy of a classifier of `kind` (a key of CLASSIFIERS) trained from scratch to tell `other`
    from `real` on one half of each side's groups and scored on the other half: 0.5 when the two are
    indistinguishable, 1.0 when always told apart."""
    keras.utils.set_random_seed(seed)
    real_train, other_train = halves(real_groups, seed), halves(other_groups, seed + 1)
    images = np.concatenate([real[real_train], other[other_train]])
    labels = np.concatenate([np.zeros(real_train.sum()), np.ones(other_train.sum())]).astype("float32")
    weights = np.where(labels == 1, len(labels) / (2 * labels.sum()), len(labels) / (2 * (1 - labels).sum()))
    model = CLASSIFIERS[kind](real.shape[1])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit(images, labels, sample_weight=weights, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    real_score = model.predict(real[~real_train], verbose=0)[:, 0] < 0
    other_score = model.predict(other[~other_train], verbose=0)[:, 0] >= 0
    return float((real_score.mean() + other_score.mean()) / 2)


def nearest_ssim(images, references, batch_size=256):
    """For each image, the highest SSIM to any of `references` (the memorisation check)."""
    best = np.full(len(images), -1.0)
    for index, image in enumerate(images):
        for start in range(0, len(references), batch_size):
            chunk = references[start:start + batch_size]
            scores = ssim(np.repeat(image[None], len(chunk), axis=0), chunk).numpy()
            best[index] = max(best[index], scores.max())
    return best


def anatomy(images):
    """Per-image statistics: the fraction of the image that is head, and whether the head touches the border."""
    head = images[..., 0] > FOREGROUND
    border = np.concatenate([head[:, 0], head[:, -1], head[:, :, 0], head[:, :, -1]], axis=1)
    return {"head_area": head.mean(axis=(1, 2)), "touches_border": border.any(axis=1)}


def histogram_distance(first, second, bins=64):
    """Total-variation distance (0 to 1) between the intensity histograms of the head pixels of two sets."""
    def histogram(images):
        values = images[images > FOREGROUND]
        counts, _ = np.histogram(values, bins=bins, range=(FOREGROUND, 1.0))
        return counts / max(counts.sum(), 1)

    return float(np.abs(histogram(first) - histogram(second)).sum() / 2)


def tissue_peaks(images, classes=3, iterations=100):
    """The sorted class means of a `classes`-class k-means of the head pixels' intensities: the positions of the
    histogram's tissue peaks (in T1: CSF, grey matter, white matter). None when the images hold fewer head
    pixels than classes."""
    values = np.sort(images[images > FOREGROUND].astype(np.float64))
    if len(values) < classes:
        return None
    # In one dimension each class is an interval of the sorted values, so a k-means step is a search for its
    # two ends and a difference of cumulative sums: millions of head pixels cost no more than a few.
    sums = np.concatenate([[0.0], np.cumsum(values)])
    means = np.quantile(values, (np.arange(classes) + 0.5) / classes)
    for _ in range(iterations):
        ends = np.concatenate([[0], np.searchsorted(values, (means[:-1] + means[1:]) / 2), [len(values)]])
        counts = np.diff(ends)
        updated = np.where(counts > 0, np.diff(sums[ends]) / np.maximum(counts, 1), means)
        settled = np.allclose(updated, means, rtol=0, atol=1e-7)
        means = updated
        if settled:
            break
    return [float(mean) for mean in np.sort(means)]


def tissue(real_a, real_b, generated):
    """The head's intensity distribution: the tissue peaks of real A, real B (how far two real sets differ)
    and generated slices, and the histogram distance of real B and of generated slices from real A."""
    def peaks(images):
        found = tissue_peaks(images)
        return None if found is None else [round(peak, 3) for peak in found]

    return {"real_peaks": peaks(real_a), "real_b_peaks": peaks(real_b), "generated_peaks": peaks(generated),
            "histogram_distance_real_b": round(histogram_distance(real_a, real_b), 3),
            "histogram_distance_generated": round(histogram_distance(real_a, generated), 3)}


STANDARD_SCALE_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # MS-SSIM's, finest scale first


def ms_ssim(first, second, filter_size=11):
    """Per-pair MS-SSIM of images [N, S, S, 1] in [0, 1], with as many scales as fit the image size."""
    size = first.shape[1]
    filter_size = min(filter_size, size)
    # tf.image.ssim_multiscale's 5 scales need the coarsest, S/16, at least as wide as the filter (176 pixels
    # at filter 11); at 128 pixels the 5th is 8 wide. Keep the standard filter and take the finest scales that
    # fit (128: 4, 64: 3, 32: 2), their standard weights renormalised: the fine scales are where a generated
    # slice's detail differs, and a smaller filter would change what each scale's SSIM measures.
    scales = next(k for k in range(len(STANDARD_SCALE_WEIGHTS), 0, -1)
                  if -(-size // 2 ** (k - 1)) >= filter_size)
    weights = np.array(STANDARD_SCALE_WEIGHTS[:scales]) / sum(STANDARD_SCALE_WEIGHTS[:scales])
    return tf.image.ssim_multiscale(tf.constant(first, tf.float32), tf.constant(second, tf.float32), 1.0,
                                    power_factors=weights.tolist(), filter_size=filter_size).numpy()


def pairs_across_groups(groups, count, seed):
    """`count` random index pairs [count, 2] whose two items are of different groups (two slices of one patient
    are alike for reasons that say nothing of the model's diversity)."""
    groups = np.asarray(groups)
    if len(np.unique(groups)) < 2:
        raise ValueError("pairs across groups need at least two groups")
    rng = np.random.default_rng(seed)
    found = np.empty((0, 2), int)
    while len(found) < count:
        drawn = rng.integers(0, len(groups), (2 * count, 2))
        found = np.concatenate([found, drawn[groups[drawn[:, 0]] != groups[drawn[:, 1]]]])
    return found[:count]


def diversity(images, groups, pairs=200, seed=0):
    """Mean MS-SSIM of `pairs` random pairs of images of different groups: lower is more diverse (a prior that
    draws one slice again and again scores near 1)."""
    chosen = pairs_across_groups(groups, pairs, seed)
    return float(ms_ssim(images[chosen[:, 0]], images[chosen[:, 1]]).mean())


def blurred(images, sigma=2.0):
    """A degraded copy of real images (Gaussian blur), a control the classifier must tell apart."""
    radius = int(3 * sigma)
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).astype("float32")
    images = tf.constant(images)
    images = tf.nn.conv2d(images, kernel.reshape(-1, 1, 1, 1), 1, "SAME")
    return tf.nn.conv2d(images, kernel.reshape(1, -1, 1, 1), 1, "SAME").numpy()


def held_out(source, image_size, per_patient):
    """(images, patients, labels) of the test split, at most `per_patient` slices of each patient, spread
    evenly over that patient's slices (a patient's files are decoded together: a volume holds many slices)."""
    split = source.splits["test"]
    images, patients, labels = [], [], []
    for patient in sorted(set(split.patients)):
        own = dataset.decoded_split(dataset.select(split, lambda p: p == patient), image_size).images
        pairs = list(own.as_numpy_iterator())
        for index in spread(len(pairs), per_patient):
            images.append(pairs[index][0])
            labels.append(pairs[index][1])
            patients.append(patient)
    return np.stack(images), np.array(patients), np.array(labels)


def reconstruct(model, images, batch_size=64, texture=False):
    """The export's reconstructions of `images`, `batch_size` at a time; with the export's texture if
    `texture` (drawn with seeds 2000, 2001, ...)."""
    batches = []
    for batch, start in enumerate(range(0, len(images), batch_size)):
        reconstructions = model.reconstruct(tf.constant(images[start:start + batch_size])).numpy()
        batches.append(add_texture(model, reconstructions, 2000 + batch) if texture else reconstructions)
    return np.concatenate(batches)


def generate(model, n, args, label=None, batch_size=64):
    """`n` generated images, the decoder's mean, with the sampling settings of `args`, `batch_size` at a time
    (of class `label` if given); `textured` gives them the export's texture."""
    batches = [sample_images(model, min(batch_size, n - start), args.temperature, 1000 + batch, args.top_k,
                             args.top_p, args.keep_background, label)
               for batch, start in enumerate(range(0, n, batch_size))]
    return np.concatenate(batches)


def textured(model, images, batch_size=64):
    """`images` from `generate` with the export's texture, as predict.py writes them: each batch's texture
    drawn with the seed its codes were sampled with."""
    return np.concatenate([add_texture(model, images[start:start + batch_size], 1000 + batch)
                           for batch, start in enumerate(range(0, len(images), batch_size))])


def accuracy(real, real_groups, other, other_groups, seeds, epochs):
    """Each classifier's two-sample accuracy over `seeds` seeds ({kind: {mean, std, each}}, trained for
    `epochs[kind]` epochs), and "higher", the higher of their means: each classifier misses something the
    other sees, so the figure that counts is the higher. Each seed's score is kept (a classifier whose
    training stalls scores low, so the spread is worth seeing whole)."""
    result = {}
    for kind in CLASSIFIERS:
        scores = [two_sample_accuracy(real, real_groups, other, other_groups, seed, epochs[kind], kind=kind)
                  for seed in range(seeds)]
        result[kind] = {"mean": round(float(np.mean(scores)), 3), "std": round(float(np.std(scores)), 3),
                        "each": [round(score, 3) for score in scores]}
    result["higher"] = max(result[kind]["mean"] for kind in CLASSIFIERS)
    return result


def spread(total, count):
    """Indices of at most `count` of `total` items, evenly spread (real slices come ordered by patient)."""
    return np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))


def side_by_side(real, generated, title, path, per_side=16):
    """Write a figure of `per_side` real slices (left) beside as many generated ones (right)."""
    figure = Figure(figsize=(13, 7))
    columns = int(np.ceil(np.sqrt(per_side)))
    for panel, (name, images) in zip(figure.subfigures(1, 2, wspace=0.05), (("real, held out", real),
                                                                             ("generated", generated))):
        axes = panel.subplots(columns, columns)
        for axis, image in zip(axes.flat, list(images[:per_side]) + [None] * per_side):
            axis.axis("off")
            if image is not None:
                axis.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
        panel.suptitle(name, fontsize=11, y=0.94)
    figure.suptitle(title, fontsize=10, y=0.995)
    save_figure(figure, path, dpi=72)


def training_slices(source, image_size, limit):
    """At most `limit` training slices, spread over the split, for the memorisation check."""
    split = source.splits["train"]
    files = spread(len(split), limit)
    subset = dataclasses.replace(split, files=[split.files[i] for i in files],
                                 patients=[split.patients[i] for i in files], labels=[split.labels[i] for i in files])
    images = np.stack([image for image, _ in dataset.decoded_split(subset, image_size).images.as_numpy_iterator()])
    return images[spread(len(images), limit)]  # volumes: fewer files than slices


@dataclasses.dataclass
class Real:
    """The real held-out slices, split by patient into A (the reference of every comparison) and B."""
    a: np.ndarray
    b: np.ndarray
    patients_a: np.ndarray
    patients_b: np.ndarray
    labels_a: np.ndarray

    @classmethod
    def split(cls, images, patients, labels):
        """The held-out slices (from `held_out`) split into A and B by a fixed random half of the patients."""
        in_a = halves(patients, seed=12345)
        return cls(images[in_a], images[~in_a], patients[in_a], patients[~in_a], labels[in_a])


def singles(count):
    """Group names that make each of `count` generated slices its own "patient"."""
    return np.arange(count).astype(str)


def controls(model, real, args):
    """The two-sample figures that do not depend on sampling, computed once: real A against real B (the floor),
    blurred B (near 1.0), B's reconstructions (what the decoder alone gives away) and, when the run measures
    the texture, B's reconstructions with it."""
    def against_a(other):
        return accuracy(real.a, real.patients_a, other, real.patients_b, args.seeds, args.epochs)

    result = {"real_vs_real": against_a(real.b), "real_vs_blurred": against_a(blurred(real.b)),
              "real_vs_reconstructions": against_a(reconstruct(model, real.b))}
    if "texture_on" in args.variants:
        result["real_vs_textured_reconstructions"] = against_a(reconstruct(model, real.b, texture=True))
    return result


def against_generated(images, patients, generated, args):
    """The two-sample accuracy of `generated` slices (each its own group) against `images` of `patients`."""
    return accuracy(images, patients, generated, singles(len(generated)), args.seeds, args.epochs)


def variant_figures(real, generated, reconstructions_a, args):
    """The figures of one kind of generated slices (texture on or off) against the real held-out slices:
    two-sample accuracies, diversity, tissue and anatomy."""
    real_stats, generated_stats = anatomy(real.a), anatomy(generated)
    every_real, every_patient = np.concatenate([real.a, real.b]), np.concatenate([real.patients_a, real.patients_b])
    return {"two_sample_accuracy": {
                "real_vs_generated": against_generated(real.a, real.patients_a, generated, args),
                # The prior alone: both sides come through the decoder, so its smoothing does not separate them.
                "reconstructions_vs_generated": against_generated(reconstructions_a, real.patients_a, generated,
                                                                  args)},
            "diversity": {"ms_ssim_generated_pairs": round(diversity(generated, singles(len(generated)),
                                                                     args.diversity_pairs), 3),
                          "ms_ssim_real_pairs": round(diversity(every_real, every_patient, args.diversity_pairs), 3)},
            "tissue": tissue(real.a, real.b, generated),
            "anatomy": {"head_area_real": round(float(real_stats["head_area"].mean()), 3),
                        "head_area_generated": round(float(generated_stats["head_area"].mean()), 3),
                        "touches_border_real": round(float(real_stats["touches_border"].mean()), 3),
                        "touches_border_generated": round(float(generated_stats["touches_border"].mean()), 3)}}


def class_samples(model, metadata, test_source, real, args):
    """{class name: (mask of real A's slices of that class, as many generated slices of it)} for a
    class-conditional export ({} otherwise); the decoder's mean, as `generate` gives."""
    result = {}
    for label, name in enumerate(metadata["class_names"]):
        index = test_source.class_names.index(name) if name in test_source.class_names else -2
        of_class = real.labels_a == index
        if of_class.any():
            result[name] = (of_class, generate(model, int(of_class.sum()), args, label))
    return result


def variants(model, real, generated, by_class, args):
    """{variant: (generated slices, {class: (mask, samples)}, reconstructions of real A)} for each variant of
    the run: texture_on (as predict.py writes them) and texture_off (the decoder's mean)."""
    result = {}
    for variant in args.variants:
        texture = variant == "texture_on"
        dress = (lambda images: textured(model, images)) if texture else (lambda images: images)
        result[variant] = (dress(generated), {name: (mask, dress(samples)) for name, (mask, samples)
                                              in by_class.items()}, reconstruct(model, real.a, texture=texture))
    return result


def memorisation(source, image_size, generated, real_a, args):
    """The mean highest SSIM of generated slices to any training slice, beside the same for real held-out ones
    (a copying prior scores higher than real slices do)."""
    train = training_slices(source, image_size, args.memorisation_slices)
    count = args.memorisation_images
    return {"generated_nearest_train_ssim": round(float(nearest_ssim(generated[:count], train).mean()), 3),
            "real_nearest_train_ssim": round(float(nearest_ssim(real_a[spread(len(real_a), count)], train).mean()),
                                             3)}


def per_class(real, classes, reconstructions_a, args):
    """For each class of a class-conditional export ({name: (mask, samples)}), its generated slices against
    real A's slices of that class and against their reconstructions."""
    return {name: {"real_vs_generated": against_generated(real.a[mask], real.patients_a[mask], samples, args),
                   "reconstructions_vs_generated": against_generated(reconstructions_a[mask], real.patients_a[mask],
                                                                     samples, args)}
            for name, (mask, samples) in classes.items()}


# The full run's sizes: with 80 real slices a side and 20 epochs the pooled classifier scored the demo's visibly
# broken samples 0.53, with 320 a side 0.93 (docs/experiments.md). --quick, for a look at the demo in about
# 10 minutes on 2 cores: one classifier of each kind, half the slices, fewer memorisation comparisons; its
# figures are noisier and can be lower (fewer slices train weaker classifiers).
FULL = {"slices_per_patient": 40, "seeds": 3, "memorisation_slices": 500, "memorisation_images": 100}
QUICK = {"slices_per_patient": 20, "seeds": 1, "memorisation_slices": 200, "memorisation_images": 50}


def parser():
    """The command line's parser."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="saved_models/vqvae", help="an export of train.py with a prior")
    parser.add_argument("--data", help="the data folder the model was trained on (default: the embedded demo)")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes for a quick look (default sizes: full run / --quick): " + "; ".join(
                            f"--{name.replace('_', '-')} {FULL[name]} / {QUICK[name]}" for name in FULL))
    parser.add_argument("--slices-per-patient", type=int, help="real test slices per patient")
    parser.add_argument("--seeds", type=int, help="classifiers of each kind per comparison")
    parser.add_argument("--epochs", type=int, help="epochs of both classifiers (default: each its own, pooled "
                        f"{EPOCHS['pooled']}, layout {EPOCHS['layout']})")
    parser.add_argument("--diversity-pairs", type=int, default=200,
                        help="random pairs of slices whose MS-SSIM is averaged (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--top-k", type=int, default=0, help="sample from the K most likely codes (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling probability (1: all codes)")
    parser.add_argument("--keep-background", action=argparse.BooleanOptionalAction, default=True,
                        help="the sampling controls reshape only the codes of anatomy, as predict.py's default")
    parser.add_argument("--texture", action=argparse.BooleanOptionalAction, default=True,
                        help="measure generated slices both with the export's texture, as predict.py writes them, "
                        "and without (the decoder's mean); --no-texture: only without")
    parser.add_argument("--no-controls", dest="controls", action="store_false",
                        help="skip the real, blurred and reconstruction controls (when comparing sampling settings "
                        "of one model, whose controls do not change)")
    # Each memorisation comparison is one SSIM of two images: samples x slices of them (100 x 500 take minutes).
    parser.add_argument("--memorisation-slices", type=int, help="training slices each image is compared with")
    parser.add_argument("--memorisation-images", type=int,
                        help="generated and real held-out images compared with them")
    parser.add_argument("--figure", help="also write 16 real held-out slices beside 16 generated ones to this PNG")
    return parser


def arguments(argv=None):
    """The parsed command line, each size not given taken from FULL or, with --quick, QUICK."""
    args = parser().parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.epochs = {kind: args.epochs or EPOCHS[kind] for kind in CLASSIFIERS}
    if args.figure:
        check_figure_path("--figure", args.figure)
    return args


def load_model(args):
    """(the export of --model, its metadata); exits with one line if it cannot generate as asked."""
    try:
        model, metadata = load_export(args.model)
    except ValueError as error:
        fail(f"--model {error}")
    if not metadata["has_prior"]:
        fail(f"--model {args.model}: this export has no prior to generate with")
    if not 0 <= args.top_k <= metadata["num_codes"]:
        fail(f"--top-k {args.top_k}: expected 0 (keep all codes) up to {metadata['num_codes']}, the model's number "
             f"of codes")
    return model, metadata


def main(argv=None):
    """Measure the realism of an export's generated slices; print one JSON line."""
    args = arguments(argv)
    model, metadata = load_model(args)
    size = metadata["image_size"]
    args.variants = ["texture_on", "texture_off"] if args.texture and metadata["has_texture"] else ["texture_off"]
    source = dataset.load_source(args.data)
    # The demo's test split has 2 subjects, too few to split by patient: its generator makes 16 new ones.
    test_source = source if args.data else demo.load_demo(seed=1, subjects=(1, 1, 16))
    real = Real.split(*held_out(test_source, size, args.slices_per_patient))
    generated = generate(model, len(real.a), args)
    made = variants(model, real, generated, class_samples(model, metadata, test_source, real, args), args)
    result = {"benchmark": "realism", "model": args.model, "data": source.kind, "real_a": len(real.a),
              "real_b": len(real.b), "patients": len(np.unique(np.concatenate([real.patients_a, real.patients_b]))),
              "generated": len(generated), "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
              "keep_background": args.keep_background, "has_texture": metadata["has_texture"],
              "seeds": args.seeds, "epochs": args.epochs}
    if args.controls:
        result["controls"] = controls(model, real, args)
    for variant, (images, classes, reconstructions_a) in made.items():
        result[variant] = variant_figures(real, images, reconstructions_a, args)
        if classes:
            result[variant]["per_class"] = per_class(real, classes, reconstructions_a, args)
    shown = made[args.variants[0]][0]  # as predict.py writes them
    result["memorisation"] = {"generated_slices": args.variants[0],
                              **memorisation(source, size, shown, real.a, args)}
    result["command"] = " ".join(["python", "-m", "benchmarks.realism", *(sys.argv[1:] if argv is None else argv)])
    if args.figure:
        higher = result[args.variants[0]]["two_sample_accuracy"]["real_vs_generated"]["higher"]
        side_by_side(real.a[spread(len(real.a), 16)], shown, f"{args.model}: real vs generated two-sample "
                     f"accuracy {higher:.3f}, the higher of two classifiers (0.5: indistinguishable)", args.figure)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
