"""predict.py --anomaly: where image files of any size, and volumes, differ from what the export's prior
expects, by its heal endpoint (`healing.anomaly_maps`).

An image is padded to a square and area-resized to the model's size, as the training data was. Its codes that
the prior finds less likely than the threshold, given the codes before them, are replaced by likely ones and
decoded: the image healed. The anomaly map (where the image differs from its healed self, around the replaced
codes) is resized back to the square and cropped to the input's own shape. A volume is healed slice by slice
along the model's axis, and its map written in the input's voxel grid.

A conditional prior heals under one class: --label, or by default the input's most likely class, under which
the prior finds its codes likeliest. The posterior over the classes given a whole code grid is nearly one-hot
(each of its many codes adds evidence), so healing under the most likely class is close to healing under the
mixture of the classes, the prior of an image whose class is unknown. --label NC asks another question: where
does this image differ from a normal control?
"""

import csv
import dataclasses
import io
import time

import keras
import nibabel as nib
import numpy as np
import tensorflow as tf

import dataset
import figures
import volumes
from denoising import read_native
from folders import mirrored_inputs, output_path
from utils import class_index, fail, save_figure, write_bytes

DEFAULT_THRESHOLD = 0.003  # chosen on validation lesions by benchmarks/anomaly.py (ADNI, 8 orders)
SCORES_FILE = "scores.csv"


@dataclasses.dataclass
class Scored:
    """What --anomaly found in one input: its path, the class it was healed under ("" for an unconditional
    prior), its score (the peak of its anomaly map; of a volume, the highest of its slices') and the fraction
    of its codes replaced."""

    path: str
    label: str
    score: float
    codes_replaced: float

    def summary(self):
        """One line for the terminal: path, score, codes replaced and class."""
        label = f", class {self.label}" if self.label else ""
        return f"{self.path}: score {self.score:.4f}, codes replaced {self.codes_replaced:.1%}{label}"


@dataclasses.dataclass(frozen=True)
class Healer:
    """The export's heal endpoint with one run's settings: codes less likely than `threshold` replaced, in the
    first `orders` scan orders, replacements drawn from `seed` (the same for each batch of `batch_size`
    images), under the class `label` (an index into `class_names`; None: each input's most likely class, or
    none for an unconditional prior)."""

    model: object
    class_names: tuple
    threshold: float
    seed: int
    orders: int
    label: int = None
    batch_size: int = 64

    def batches(self, array):
        """`array` in consecutive parts of at most batch_size."""
        return [array[start:start + self.batch_size] for start in range(0, len(array), self.batch_size)]

    def class_log_probs(self, images):
        """The log-likelihood [N, C] of the codes of `images` [N, S, S, 1] under each class."""
        def under(label):
            return np.concatenate([self.model.log_prob(tf.constant(batch), tf.fill([len(batch)], label)).numpy()
                                   for batch in self.batches(images)])

        return np.stack([under(label) for label in range(len(self.class_names))], axis=1)

    def classes(self, images, together=False):
        """The class index [N] under which each of `images` is healed: `label`, else each image's most likely,
        or with `together` the most likely of all of them together (the slices of one volume); None for an
        unconditional prior."""
        if not self.class_names:
            return None
        if self.label is not None:
            return np.full(len(images), self.label, np.int32)
        log_probs = self.class_log_probs(images)
        best = np.argmax(log_probs.sum(axis=0)) if together else np.argmax(log_probs, axis=1)
        return np.broadcast_to(best, [len(images)]).astype(np.int32)

    def class_name(self, labels, index):
        """The name of the class that image `index` is healed under, "" for an unconditional prior."""
        return "" if labels is None else self.class_names[labels[index]]

    def heal(self, images, labels=None):
        """The export's heal of `images` [N, S, S, 1] under `labels` [N] (None for an unconditional prior), as
        a dict of NumPy arrays: healed, replaced and anomaly [N, S, S, 1], score and codes_replaced [N]."""
        settings = (tf.constant(self.threshold, tf.float32), tf.constant(self.seed, tf.int32),
                    tf.constant(self.orders, tf.int32))
        outputs = []
        for start in range(0, len(images), self.batch_size):
            part = [] if labels is None else [tf.constant(labels[start:start + self.batch_size])]
            outputs.append(self.model.heal(tf.constant(images[start:start + self.batch_size]), *settings, *part))
        return {name: np.concatenate([output[name].numpy() for output in outputs]) for name in outputs[0]}


def open_healer(model, metadata, args):
    """A Healer of the export `model` with predict.py's --threshold, --seed, --orders (None: every scan order
    its prior learnt), --label and --batch-size (`args`); exits with one line if the export has no prior, or
    --orders or --label do not fit it."""
    if not metadata.get("has_prior"):
        fail(f"--model {args.model}: this export has no prior to heal with; train one with train.py --stage prior")
    learnt, classes = metadata["scan_orders"], metadata["class_names"]
    orders = learnt if args.orders is None else args.orders
    if orders > learnt:
        fail(f"--orders {orders}: expected 1 to {learnt}, the scan orders that the prior of --model {args.model} "
             f"learnt")
    label = class_index(args.label, classes, args.model)
    return Healer(model, tuple(classes), args.threshold, args.seed, orders, label, args.batch_size)


def anomaly_files(healer, size, given, out, flag="--anomaly"):
    """Heal each image in `given` (files, and folders: every image below them) at the model's `size`, and
    write below `out`, in the same layout, its anomaly map in its own size (NAME_anomaly.npy, float32 [H, W])
    and a figure of it (NAME_anomaly.png), and SCORES_FILE for all of them. Returns (a Scored per image,
    seconds per image spent choosing classes and healing)."""
    inputs = mirrored_inputs(flag, given, lambda path: path.suffix.lower() in dataset.IMAGE_EXTENSIONS)
    done, seconds = [], 0.0
    progress = keras.utils.Progbar(len(inputs), unit_name="image")
    for batch in healer.batches(inputs):
        natives = [read_native(flag, path) for path, _ in batch]
        started = time.perf_counter()
        resized, sides = zip(*(square_for_model(image, size) for image in natives))
        labels = healer.classes(np.stack(resized))
        outputs = healer.heal(np.stack(resized), labels)
        seconds += time.perf_counter() - started
        for index, ((path, name), image, side) in enumerate(zip(batch, natives, sides)):
            done.append(Scored(str(path), healer.class_name(labels, index), float(outputs["score"][index]),
                               float(outputs["codes_replaced"][index])))
            write_image_outputs(output_path(out, name), image, side, outputs["anomaly"][index],
                                outputs["healed"][index], done[-1])
        progress.add(len(batch))
    write_bytes(out / SCORES_FILE, scores_csv(done))
    return done, seconds / len(inputs)


def square_for_model(image, size):
    """(`image` [H, W, 1] padded to a square and area-resized to `size`, [size, size, 1]; the square's side)."""
    resized, side = dataset.square_and_resize(tf.constant(image[None]), size)
    return resized[0].numpy(), int(side)


def write_image_outputs(stem, image, side, anomaly, healed, scored):
    """Write STEM_anomaly.npy, the map `anomaly` [S, S, 1] in the shape of `image` [H, W, 1] (resized back to
    the square's `side` and cropped), and STEM_anomaly.png, `image` with the map over it beside `healed`."""
    rows, columns = image.shape[:2]
    anomaly, healed = volumes.unsquare(np.stack([anomaly, healed]), side, rows, columns)
    buffer = io.BytesIO()
    np.save(buffer, anomaly[..., 0].astype(np.float32))
    write_bytes(stem.with_name(f"{stem.name}_anomaly.npy"), buffer.getvalue())
    label = f", class {scored.label}" if scored.label else ""
    title = f"anomaly score {scored.score:.4f}, codes replaced {scored.codes_replaced:.1%}{label}"
    save_figure(figures.anomaly_figure(image, anomaly, healed, title), stem.with_name(f"{stem.name}_anomaly.png"),
                dpi=100, bbox_inches="tight")


def scores_csv(done):
    """The bytes of SCORES_FILE: a row of file, class, score and codes_replaced per Scored in `done`."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["file", "class", "score", "codes_replaced"])
    writer.writerows([item.path, item.label, f"{item.score:.6g}", f"{item.codes_replaced:.6g}"] for item in done)
    return text.getvalue().encode()


def anomaly_volume(healer, size, path, axis):
    """(the volume at `path` as read, as a nibabel image; its anomaly map, float32 in its voxel grid; a Scored;
    seconds per slice; a note or None). The volume is healed slice by slice along `axis`, under --label's class
    or the most likely class of all its slices together. Raises volumes.VolumeError for a file that is not a
    usable volume."""
    scan = volumes.read_scan(path)
    found = {}
    started = time.perf_counter()

    def heal_slices(resized):
        found["labels"] = healer.classes(resized, together=True)
        found.update(healer.heal(resized, found["labels"]))
        return found["anomaly"]

    anomaly, _ = volumes.through_slices(scan.volume, axis, size, heal_slices)
    seconds = (time.perf_counter() - started) / len(found["score"])
    mapped = nib.Nifti1Image(volumes.to_stored_order(scan.image, anomaly).astype(np.float32), scan.image.affine)
    scored = Scored(str(path), healer.class_name(found["labels"], 0), float(np.max(found["score"])),
                    float(np.mean(found["codes_replaced"])))
    return scan.original(), mapped, scored, seconds, scan.note
