"""Brain MRI slices: find the files and their splits, and feed them to Keras through tf.data.

Five sources, each split by patient so that no patient is in two splits:
- `oasis`: the preprocessed OASIS slices, `keras_png_slices_{train,validate,test}/case_001_slice_0.nii.png`.
  The `keras_png_slices_seg_*` folders hold segmentation masks, not images, and are never read.
- `adni`: `AD_NC/{train,test}/{AD,NC}/<patient>_<slice>.jpeg`, labelled AD or NC. ADNI has no validation split,
  so one is carved from train by patient, stratified by class.
- `folder`: any folder of images (in class subfolders or not), split by the patient id in the file name.
- `volumes`: NIfTI or Analyze volumes below a folder (class subfolders or not), split by the subject in the
  file name, sliced along one axis (`volumes`).
- `demo`: the embedded default, a virtual cohort made from the MNI ICBM152 T1 template inside nilearn (demo.py),
  cached as NIfTI volumes after the first build and read as the `volumes` source reads users' scans.

Every image becomes grayscale float32 in [0, 1] (transparency on black background, 16-bit PNGs scaled by the
bits their data uses: images.py), padded with background to a square, then resized.
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import os
import re
from pathlib import Path

import numpy as np
import tensorflow as tf

import folders
import images
import volumes

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}
SPLITS = ("train", "validate", "test")
OASIS_FOLDERS = {split: f"keras_png_slices_{split}" for split in SPLITS}
ADNI_CLASSES = ("AD", "NC")
# "case_001_slice_0.nii" -> "case_001"; "941_S_1311_78" -> "941_S_1311"; "sub-01_slice_012" -> "sub-01".
# DOTALL and \Z: a newline in a file name is part of the patient id, not the end of the name.
PATIENT_PATTERN = re.compile(r"^(?P<patient>.+?)(?:_slice)?_(?P<slice>\d+)(?:\.nii)?\Z", re.DOTALL)


class DataError(Exception):
    """Input data that cannot be used; the message starts with the path and says what was expected (the
    command-line tools put the flag that named the data in front of it)."""


class UnreadableImages(DataError):
    """Image files that could not be decoded (train.py's --skip-bad skips them)."""


Decoded = collections.namedtuple("Decoded", ["images", "skipped", "upscaled", "origins"])
Decoded.__doc__ = """A decoded split: the (image, label) dataset, how many unreadable files were skipped, how many
images were smaller than the image size and so upscaled, and where each image came from, in the dataset's
order: (file, slice index along the split's axis, or None for a 2D image)."""


@dataclasses.dataclass
class Split:
    """The image files of one split, their patient ids and integer labels (-1 where unlabelled); for volumes,
    the volume files, the `axis` they are sliced along, which brain slices are kept (`slices`) and the intensity
    `window` that maps every volume to [0, 1] (None: each volume's own percentiles, `volumes.intensity_range`).
    For images, `window` is the range of the 16-bit PNGs that maps to [0, 1] (None: found from the split's
    files, `images.sixteen_bit_range`)."""

    files: list
    patients: list
    labels: list
    axis: str = None
    slices: str = "all"
    window: tuple = None

    def __len__(self):
        return len(self.files)


@dataclasses.dataclass
class DataSource:
    """Where the images came from, the class names (empty if unlabelled) and the train/validate/test splits."""

    kind: str
    root: str
    class_names: list
    splits: dict


def patient_id(path):
    """The patient a slice belongs to, from its file name (the whole stem if it names no slice number)."""
    stem = Path(path).name
    stem = stem[: -len(Path(stem).suffix)] if Path(stem).suffix else stem
    match = PATIENT_PATTERN.match(stem)
    return match["patient"] if match else stem


def image_files(folder):
    """All image files below `folder`, sorted, ignoring other files and hidden ones. Symlinks are followed,
    each real folder and file once (`folders.files_below`). Raises DataError for a file name that is not valid
    UTF-8."""
    return _files_below([folder], _is_image)[0]


def volume_files(folder):
    """All NIfTI and Analyze volumes below `folder` (an Analyze pair by its .hdr), as `image_files` finds
    images."""
    return _files_below([folder], volumes.is_volume)[0]


def _is_image(name):
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _files_below(roots, wanted):
    """`folders.files_below`, each name checked by `_checked_name`."""
    return [[_checked_name(file) for file in files] for files in folders.files_below(roots, wanted)]


def _checked_name(path):
    """`path`, or DataError if its name is not valid UTF-8 (which TensorFlow cannot open)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{path!r}: a file name that is not valid UTF-8; rename it") from None
    return path


def _split_of(files, labels=None):
    labels = labels if labels is not None else [-1] * len(files)
    return Split(list(files), [patient_id(f) for f in files], list(labels))


def detect_layout(root):
    """'oasis', 'adni' or 'folder' by what is in `root`; raises DataError if there is nothing usable."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such file or directory")
    if not root.is_dir():
        raise DataError(f"{root}: expected a folder of images, got a file")
    if (root / OASIS_FOLDERS["train"]).is_dir():
        return "oasis"
    if _adni_root(root) is not None:
        return "adni"
    if image_files(root):
        return "folder"
    if volume_files(root):
        return "volumes"
    raise DataError(f"{root}: found no images (.png, .jpg, .jpeg, .bmp, .gif), no volumes (.nii, .nii.gz, "
                    f".hdr/.img) and no OASIS (keras_png_slices_train/) or ADNI (AD_NC/train/AD, AD_NC/train/NC) "
                    f"layout")


def _adni_root(root):
    """The folder holding ADNI's train/ and test/ (root/AD_NC or root itself), or None."""
    for candidate in (root / "AD_NC", root):
        if any((candidate / "train" / name).is_dir() for name in ADNI_CLASSES):
            return candidate
    return None


def load_oasis(root):
    """OASIS, already split by patient into keras_png_slices_{train,validate,test}."""
    root = Path(root)
    for folder in OASIS_FOLDERS.values():
        if not (root / folder).is_dir():
            raise DataError(f"{root}: OASIS layout without its {folder}/ folder")
    found = _files_below([root / folder for folder in OASIS_FOLDERS.values()], _is_image)
    return DataSource("oasis", str(root), [], {name: _split_of(files) for name, files in zip(OASIS_FOLDERS, found)})


def load_adni(root, validation_fraction=0.1, seed=0):
    """ADNI AD/NC with labels; validation carved from train by patient, stratified by class."""
    base = _adni_root(Path(root))
    if base is None:
        raise DataError(f"{root}: expected ADNI folders train/AD, train/NC, test/AD, test/NC")
    class_folders = [base / split / name for split in ("train", "test") for name in ADNI_CLASSES]
    found = iter(_files_below([folder for folder in class_folders if folder.is_dir()], _is_image))
    found = [next(found) if folder.is_dir() else [] for folder in class_folders]

    def labelled(first):  # the files of the class folders from `first` on, labelled in ADNI_CLASSES order
        files = found[first:first + len(ADNI_CLASSES)]
        return _split_of(sum(files, []), [label for label, of_class in enumerate(files) for _ in of_class])

    train, test = labelled(0), labelled(len(ADNI_CLASSES))
    train, validate = _carve_by_patient(train, validation_fraction, seed)
    return DataSource("adni", str(base), list(ADNI_CLASSES), {"train": train, "validate": validate, "test": test})


def _carve_by_patient(split, fraction, seed):
    """Move `fraction` of the patients of each label (at least one where there are two) out of `split`."""
    rng = np.random.default_rng(seed)
    held_out = set()
    for label in sorted(set(split.labels)):
        patients = sorted({p for p, l in zip(split.patients, split.labels) if l == label})
        count = min(len(patients) - 1, max(1, round(fraction * len(patients)))) if fraction > 0 else 0
        held_out.update(rng.choice(patients, size=count, replace=False).tolist() if count > 0 else [])
    return select(split, lambda p: p not in held_out), select(split, lambda p: p in held_out)


def select(split, keep_patient):
    """The rows of `split` whose patient `keep_patient` accepts (volumes keep their axis, slices and window)."""
    rows = [row for row in zip(split.files, split.patients, split.labels) if keep_patient(row[1])]
    return Split([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], split.axis, split.slices,
                 split.window)


def load_folder(root, fractions=(0.8, 0.1, 0.1), seed=0):
    """Any folder of images: class subfolders become labels; patients are shuffled (seeded) into splits."""
    root = Path(root)
    files = image_files(root)
    if not files:
        raise DataError(f"{root}: found no images (.png, .jpg, .jpeg, .bmp, .gif)")
    parents = sorted({str(Path(f).parent.relative_to(root)) for f in files})
    class_names = parents if len(parents) > 1 else []
    _note_empty_folders(root, files, "images")
    labels = [class_names.index(str(Path(f).parent.relative_to(root))) if class_names else -1 for f in files]
    splits = _split_by_patient(_split_of(files, labels), fractions, seed)
    return DataSource("folder", str(root), class_names, splits)


def _note_empty_folders(root, files, kind):
    """Print the folders directly below `root` that hold none of `files` (of `kind`) while others do: an empty
    class folder is no class, which the user may not expect."""
    holding = {Path(f).relative_to(root).parts[0] for f in files if len(Path(f).relative_to(root).parts) > 1}
    empty = sorted(entry.name for entry in os.scandir(root) if entry.is_dir(follow_symlinks=False)
                   and not entry.name.startswith(".") and entry.name not in holding)
    if holding and empty:
        print(f"Note: {', '.join(str(root / name) for name in empty)}: no {kind}, so no class")


def _split_by_patient(everything, fractions, seed):
    """Train/validate/test splits of `everything` with whole patients in each, shuffled (seeded)."""
    patients = sorted(set(everything.patients))
    np.random.default_rng(seed).shuffle(patients)
    n_train = max(1, int(round(fractions[0] * len(patients))))
    n_validate = max(1 if len(patients) > 2 else 0, int(round(fractions[1] * len(patients))))
    if len(patients) > 2:
        n_train = min(n_train, len(patients) - n_validate - 1)
    groups = {"train": set(patients[:n_train]), "validate": set(patients[n_train:n_train + n_validate]),
              "test": set(patients[n_train + n_validate:])}
    return {name: select(everything, lambda p, g=group: p in g) for name, group in groups.items()}


def load_volumes(root, fractions=(0.8, 0.1, 0.1), seed=0, axis="axial", slices="all"):
    """Brain volumes below `root`, split by subject (from the file names: `volumes.subject_id`), so that all
    sessions and scans of one subject stay in one split. Folders directly below `root` are classes when there
    are several and they are not BIDS subject folders (sub-*)."""
    root = Path(root)
    files = volume_files(root)
    if not files:
        raise DataError(f"{root}: found no volumes (.nii, .nii.gz, .hdr/.img)")
    tops = [Path(f).relative_to(root).parts for f in files]
    tops = [parts[0] if len(parts) > 1 and not parts[0].startswith("sub-") else None for parts in tops]
    class_names = sorted(set(tops)) if None not in tops and len(set(tops)) > 1 else []
    _note_empty_folders(root, files, "volumes")
    labels = [class_names.index(top) if class_names else -1 for top in tops]
    everything = Split(list(files), [volumes.subject_id(f) for f in files], labels, axis, slices)
    return DataSource("volumes", str(root), class_names, _split_by_patient(everything, fractions, seed))


def load_source(data=None, dataset="auto", seed=0, validation_fraction=0.1, cache_dir=None, axis="axial",
                slices="all"):
    """Find the images of `data` (the embedded demo when None) and split them by patient; volumes are sliced
    along `axis`, keeping the brain slices that `slices` selects (`volumes.parse_slices`)."""
    if dataset == "demo" or (data is None and dataset == "auto"):
        import demo  # here, not at the top: demo builds its source from this module's Split and DataSource

        return demo.load_demo(cache_dir=cache_dir, seed=seed)
    if data is None:
        raise DataError(f"the {dataset} layout needs a data folder")
    layout = detect_layout(data) if dataset == "auto" else dataset
    if layout not in ("oasis", "adni", "folder", "volumes"):
        raise DataError(f"dataset {dataset!r}: expected one of auto, oasis, adni, folder, volumes, demo")
    if layout == "oasis":
        source = load_oasis(data)
    elif layout == "adni":
        source = load_adni(data, validation_fraction, seed)
    elif layout == "volumes":
        source = load_volumes(data, seed=seed, axis=axis, slices=slices)
    else:
        source = load_folder(data, seed=seed)
    _check_splits(source)
    _check_classes(source)
    if layout != "volumes":
        _set_sixteen_bit_range(source)
    return source


def _check_splits(source):
    """Every split has images and no patient is in two splits."""
    for name, split in source.splits.items():
        if len(split) == 0:
            raise DataError(f"{source.root}: the {name} split has no images "
                            f"(is there more than one patient, with slices named <patient>_<slice>?)")
    seen = {}
    for name, split in source.splits.items():
        for patient in set(split.patients):
            if patient in seen:
                raise DataError(f"{source.root}: patient {patient} is in both the {seen[patient]} "
                                f"and the {name} split")
            seen[patient] = name


def _check_classes(source):
    """Every class has training images: a conditional prior cannot learn a class it never sees (and an empty
    class folder is more likely a mistake than a wish). A class missing from validate or test only leaves it
    out of their figures."""
    for label, name in enumerate(source.class_names):
        if label in source.splits["train"].labels:
            continue
        folder = Path(source.root) / ("train" if source.kind == "adni" else "") / name
        elsewhere = [f"{len({p for p, l in zip(split.patients, split.labels) if l == label})} in {split_name}"
                     for split_name, split in source.splits.items() if label in split.labels]
        where = f" (its patients: {', '.join(elsewhere)})" if elsewhere else ""
        remedy = "add images" + (f" (ADNI's classes are {' and '.join(ADNI_CLASSES)})" if source.kind == "adni"
                                 else " or remove the class folder")
        raise DataError(f"{folder}: no training images of class {name}{where}; a conditional prior needs "
                        f"every class in the training split: {remedy}")


def _set_sixteen_bit_range(source):
    """Give every split the range of the 16-bit PNGs of the whole source (`images.sixteen_bit_range`), so
    that all splits and all slices of a patient are scaled alike."""
    window = (0, images.sixteen_bit_range([file for split in source.splits.values() for file in split.files],
                                          source.root))
    for split in source.splits.values():
        split.window = window


# ----------------------------------------------------------------------------------------------------------
# Decoding and the tf.data pipeline


def decode_image(path, image_size):
    """One file -> float32 [S, S, 1] in [0, 1]: grayscale, padded to a square with zeros, area-resized; a
    16-bit PNG scaled by the bits it uses (`images.sixteen_bit_range`). Raises UnreadableImages for a file
    over the size limit, TensorFlow's errors for one that cannot be decoded."""
    path = str(path)
    header = images.read_header(path)
    if header.problem:
        raise UnreadableImages(header.problem)
    scale = 65535 / images.sixteen_bit_range([path], path, [header], quiet=True)
    return square_and_resize(images.decode_grey(tf.constant(path), header.decoder, scale), image_size)[0]


def square_and_resize(stack, image_size):
    """(images `stack` [..., H, W, 1] in [0, 1] padded with zeros to squares and area-resized to image_size,
    side)."""
    height, width = tf.shape(stack)[-3], tf.shape(stack)[-2]
    side = tf.maximum(height, width)
    stack = tf.image.pad_to_bounding_box(stack, (side - height) // 2, (side - width) // 2, side, side)
    stack = tf.image.resize(stack, (image_size, image_size), method="area")
    return tf.clip_by_value(stack, 0.0, 1.0), side


def decoded_split(split, image_size, skip_bad=False):
    """A cached dataset of (image, label) for one split, every file decoded once, in file order; a `Decoded`.

    Files that fail to decode or are too large raise UnreadableImages naming them, or are dropped and counted
    with `skip_bad`. 16-bit PNGs are scaled by the split's window (see `images.sixteen_bit_range`).
    """
    if split.axis:
        return _decoded_volumes(split, image_size, skip_bad)
    headers = [images.read_header(file) for file in split.files]
    problems = {file: header.problem for file, header in zip(split.files, headers) if header.problem}
    usable = [(file, label, header) for file, label, header in zip(split.files, split.labels, headers)
              if not header.problem]
    largest = split.window[1] if split.window else images.sixteen_bit_range(
        split.files, os.path.commonpath(split.files), headers)
    with_pillow = any(header.decoder == images.PILLOW for _, _, header in usable)

    def decode(path, label, decoder, scale):
        image, side = square_and_resize(images.decode_grey(path, decoder, scale, with_pillow), image_size)
        # Cached as uint8 (a quarter of the memory of float32): 256 levels over the range the data uses.
        return path, tf.image.convert_image_dtype(image, tf.uint8, saturate=True), label, side

    files = tf.data.Dataset.from_tensor_slices((
        tf.constant([file for file, _, _ in usable], tf.string),
        tf.constant([label for _, label, _ in usable], tf.int32),
        tf.constant([header.decoder for _, _, header in usable], tf.int32),
        tf.constant([65535 / largest if header.bit_depth == 16 else 1.0 for _, _, header in usable], tf.float32)))
    decoded = files.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    decoded = decoded.ignore_errors().cache()
    # Decoding everything now fills the cache and finds bad files before any training starts.
    sides = {path.decode(): int(side) for path, side in
             decoded.map(lambda path, image, label, side: (path, side)).as_numpy_iterator()}
    bad = [problems.get(f, f"{f}: not a readable PNG/JPEG/BMP/GIF image") for f in split.files if f not in sides]
    _check_readable(split, bad, skip_bad, "images")
    pairs = decoded.map(lambda path, image, label, side: (tf.image.convert_image_dtype(image, tf.float32), label))
    pairs = pairs.apply(tf.data.experimental.assert_cardinality(len(sides)))
    origins = [(file, None) for file in split.files if file in sides]
    return Decoded(pairs, len(bad), sum(side < image_size for side in sides.values()), origins)


def _check_readable(split, problems, skip_bad, kind):
    """Raise UnreadableImages with the first of `problems` (one message per unreadable file of `split`) unless
    `skip_bad`, and whenever none of the split's `kind` (images or volumes) could be read."""
    if problems and not skip_bad:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UnreadableImages(f"{problems[0]}{more}; fix or remove it")
    if len(problems) == len(split.files):
        raise UnreadableImages(f"{split.files[0]}: none of the {len(problems)} {kind} could be read")


def _decoded_volumes(split, image_size, skip_bad):
    """`decoded_split` for volumes: each read (in parallel threads), its brain slices along the split's axis
    resized like images, all cached in memory as 8-bit."""
    def slices_of(path):
        try:
            volume, note = volumes.read_volume(path, split.window)
        except volumes.VolumeError as error:
            return error, None
        kept = volumes.select_slices(volumes.brain_slices(volume, split.axis), split.slices)
        if not kept:
            return volumes.VolumeError(f"{path}: no slice with brain along the {split.axis} axis"), None
        stack = np.stack([volumes.slice_image(volume, split.axis, index) for index in kept])[..., None]
        images, side = square_and_resize(tf.constant(stack), image_size)
        return note, (tf.image.convert_image_dtype(images, tf.uint8, saturate=True).numpy(), int(side), kept)

    with concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        results = list(pool.map(slices_of, split.files))
    images, labels, sides, bad, origins = [], [], [], [], []
    for path, label, (message, decoded) in zip(split.files, split.labels, results):
        if decoded is None:
            bad.append(message)
            continue
        if message:
            print(message)
        images.append(decoded[0])
        labels += [label] * len(decoded[0])
        sides.append(decoded[1])
        origins += [(path, index) for index in decoded[2]]
    _check_readable(split, bad, skip_bad, "volumes")
    stacked = np.concatenate(images)
    dataset = tf.data.Dataset.from_tensor_slices((stacked, np.asarray(labels, np.int32))).cache()
    dataset = dataset.map(lambda image, label: (tf.image.convert_image_dtype(image, tf.float32), label))
    return Decoded(dataset, len(bad), sum(side < image_size for side in sides), origins)


def data_fingerprint(source):
    """What a source's splits hold, to tell whether a resumed run sees the same data: its folder, and per
    split the number of files, their total bytes and a hash of their paths (relative to the folder), sizes
    and labels."""
    splits = {}
    for name, split in source.splits.items():
        digest, total = hashlib.sha256(), 0
        for file, label in zip(split.files, split.labels):
            size = os.path.getsize(file)
            if file.lower().endswith(".hdr") and os.path.exists(file[:-4] + ".img"):
                size += os.path.getsize(file[:-4] + ".img")  # an Analyze volume's voxels
            total += size
            digest.update(f"{os.path.relpath(file, source.root)}\0{size}\0{label}\n".encode("utf-8"))
        splits[name] = {"files": len(split), "bytes": total, "sha256": digest.hexdigest()}
    return {"root": os.path.abspath(source.root), "splits": splits}


def describe_data_change(saved, now):
    """None if two fingerprints describe the same splits (or one is unknown), else what changed, in words."""
    if not saved or not now or saved["splits"] == now["splits"]:
        return None
    for name, before in saved["splits"].items():
        after = now["splits"].get(name)
        if after != before:
            if after is None:
                return f"the {name} split is gone"
            if (after["files"], after["bytes"]) == (before["files"], before["bytes"]):
                return f"the {name} split has as many files and bytes as before, but other names or labels"
            return (f"the {name} split had {before['files']} files ({before['bytes'] / 1e6:.1f} MB) in "
                    f"{saved['root']}, now {after['files']} ({after['bytes'] / 1e6:.1f} MB) in {now['root']}")
    return "the splits differ"


def epochs_of_batches(dataset, batch_size, seed, first_epoch, last_epoch, augment=None):
    """Full shuffled batches for epochs first_epoch .. last_epoch - 1 as one stream (fit with steps_per_epoch).

    Each epoch's order depends only on (seed, epoch), so a run resumed at any epoch sees exactly the batches
    that an uninterrupted run would have seen from there on. Each epoch is shuffled only when the stream
    reaches it, so a run of any number of epochs starts at once. `augment(element, stateless seed)`, if given,
    changes each element with a seed of its own, from (seed, epoch, its place in the epoch): resumable too."""
    def epoch_of_batches(epoch):
        # Traced once for all epochs: `epoch` is a tensor. Inside a trace set_seed clears this function's own
        # graph-level seed (not the global one): the order then depends on (seed, epoch) alone, and TensorFlow
        # does not compare a global seed of 0 with the tensor seed in Python, which fails in a trace.
        tf.random.set_seed(None)
        shuffled = dataset.shuffle(10_000, seed=seed * 1_000_003 + epoch)
        if augment is not None:
            shuffled = shuffled.enumerate().map(lambda i, element: augment(element, [seed * 1_000_003 + epoch, i]))
        return shuffled.batch(batch_size, drop_remainder=True)

    epochs = max(0, last_epoch - first_epoch)
    stream = tf.data.Dataset.range(first_epoch, first_epoch + epochs).flat_map(epoch_of_batches)
    steps = int(dataset.cardinality()) // batch_size
    if steps >= 0:  # a known size: Keras and tf.distribute can then count the steps
        stream = stream.apply(tf.data.experimental.assert_cardinality(epochs * steps))
    options = tf.data.Options()  # multi-worker training splits this in-memory stream by batches, not files
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return stream.with_options(options).prefetch(tf.data.AUTOTUNE)


def batched(dataset, batch_size):
    """A decoded split in batches of `batch_size` (the last one may be smaller), in order, prefetched."""
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
