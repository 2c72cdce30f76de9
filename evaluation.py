"""Scoring an export on a split of the data it was trained on, for predict.py --reconstruct and --evaluate.

Every split is rebuilt with the data settings that train.py recorded in the config.json beside the export
(seed, layout, axis, slices, validation fraction), so a test split never holds a training patient.
"""

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

import dataset
import figures
from metrics import evaluate_reconstructions, prior_scorer, ssim
from utils import fail, first_line, save_figure, write_bytes, write_json

# What train.py's config.json records about the data, which every split is rebuilt from.
SPLIT_SETTINGS = ("data", "dataset", "seed", "axis", "slices", "validation_fraction")


def recorded_config(model):
    """The training settings that train.py recorded in the config.json beside the export at `model`; exits
    with one line naming the file if it is missing, unreadable or lacks the data settings."""
    path = Path(model) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        fail(f"--model {model}: cannot read {path}, the training settings train.py writes beside the SavedModel "
             f"({first_line(error)})")
    missing = [name for name in SPLIT_SETTINGS if not isinstance(config, dict) or name not in config]
    if missing:
        fail(f"--model {model}: {path} lacks the data settings {', '.join(missing)}; retrain or re-export it")
    return config


def load_split(flag, data, split, config, image_size):
    """(source, `dataset.Decoded`) of one split of DATA ('demo' for the embedded demo), split as the model's
    training split it: with the seed, axis, slices and validation fraction of its `config`, and its layout
    where DATA is the data it trained on (else the detected one); exits with one line on bad input."""
    given = None if data == "demo" else data
    trained_on = {os.path.realpath(path) for path in (config["data"], config.get("data_root")) if path}
    layout = config["dataset"] if given and os.path.realpath(given) in trained_on else "auto"
    try:
        source = dataset.load_source(given, layout, seed=config["seed"], axis=config["axis"],
                                     slices=config["slices"], validation_fraction=config["validation_fraction"])
        return source, dataset.decoded_split(source.splits[split], image_size)
    except dataset.DataError as error:
        fail(f"{flag} {error}")


def training_data(model):
    """The data that the model at `model` was trained on, as its config.json records it (nothing without one:
    open_model and recorded_config say what is wrong where it matters)."""
    try:
        config = json.loads((Path(model) / "config.json").read_text())
        return [path for path in (config["data"], config["data_root"]) if path]
    except (OSError, ValueError, TypeError, KeyError):
        return []


def spread_picks(decoded, n):
    """`n` images [n, S, S, 1] of a decoded split, spread evenly over it (and so over its patients, whose
    slices come in order)."""
    every = [image for image, _ in decoded.as_numpy_iterator()]
    return np.stack(every[::max(1, len(every) // n)][:n])


def reconstruct_figure(model, metadata, model_path, data, n, out):
    """Write a figure of `n` test slices of `data` above their reconstructions by the export `model` (at
    `model_path`), each with its SSIM, in the folder `out`; returns its path."""
    config = recorded_config(model_path)
    source, decoded = load_split("--reconstruct", data, "test", config, metadata["image_size"])
    images = spread_picks(decoded.images, n)
    reconstructions = model.reconstruct(tf.constant(images)).numpy()
    scores = ssim(images, reconstructions).numpy()
    title = f"{source.kind} test slices (top) and reconstructions (bottom); mean SSIM {scores.mean():.3f}"
    figure = figures.reconstructions_figure(images, reconstructions, [f"SSIM {s:.3f}" for s in scores], title)
    path = out / f"reconstructions_{source.kind}.png"
    save_figure(figure, path, dpi=100, bbox_inches="tight")
    return path


def evaluate_split(model, metadata, model_path, data, split, metrics_path, out):
    """Evaluate the export `model` (at `model_path`) on one split of `data`: the metrics JSON at
    `metrics_path`, and in the folder `out` the per-image CSV, the best/median/worst figure and the codebook
    histogram. Returns (the metrics, {what: path})."""
    config = recorded_config(model_path)
    source, decoded = load_split("--evaluate", data, split, config, metadata["image_size"])
    log_prob = prior_scorer(model, metadata, source.class_names)
    summary, per_image, counts = evaluate_reconstructions(model, dataset.batched(decoded.images, 32),
                                                         metadata["num_codes"], log_prob, metadata["top_grid"])
    summary.update(data=source.root, source=source.kind, split=split, model=str(model_path))
    paths = {"metrics": metrics_path,
             "csv": out / f"evaluation_{split}.csv",
             "examples": out / f"evaluation_{split}_examples.png",
             "codebook": out / f"evaluation_{split}_codebook_usage.png"}
    paths["metrics"].parent.mkdir(parents=True, exist_ok=True)
    write_json(paths["metrics"], summary)
    write_bytes(paths["csv"], per_image_csv(source, source.splits[split], decoded.origins, per_image).encode())
    save_figure(examples_figure(model, decoded.images, per_image["ssim"]), paths["examples"], dpi=100,
                bbox_inches="tight")
    save_figure(figures.codebook_figure(counts), paths["codebook"], dpi=100, bbox_inches="tight")
    return summary, paths


def per_image_csv(source, split, origins, per_image):
    """The text of a CSV with one row per image of `split`, in the order of its `origins` (file, slice index
    or None): file, slice, patient, class name and each metric."""
    of_file = {file: (patient, label) for file, patient, label in zip(split.files, split.patients, split.labels)}
    rows = [["file", "slice", "patient", "label", *per_image]]
    for row, (file, index) in enumerate(origins):
        patient, label = of_file[file]
        name = source.class_names[label] if label >= 0 and source.class_names else ""
        rows.append([file, "" if index is None else index, patient, name,
                     *(f"{values[row]:.6g}" for values in per_image.values())])
    text = io.StringIO(newline="")
    csv.writer(text).writerows(rows)
    return text.getvalue()


def examples_figure(model, decoded, scores):
    """Inputs above reconstructions for the worst, median and best SSIM of the split."""
    order = np.argsort(scores)
    picks = {"worst": order[0], "median": order[len(order) // 2], "best": order[-1]}
    images = np.stack([image for image, _ in decoded.as_numpy_iterator()])[list(picks.values())]
    reconstructions = model.reconstruct(tf.constant(images)).numpy()
    captions = [f"{name}: SSIM {scores[index]:.3f}" for name, index in picks.items()]
    return figures.reconstructions_figure(images, reconstructions, captions, captions_above=True)
