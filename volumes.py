"""Brain volumes as 2D slices: NIfTI (.nii, .nii.gz) and Analyze 7.5 (.hdr/.img) scans read with nibabel,
turned to the canonical RAS orientation, intensity-normalised per volume, and sliced along one axis; and the
round trip of a whole volume through a model, slice by slice, back into the input's voxel grid (for
--reconstruct-volume, and for --denoise by `denoising.denoise_volume`).

RAS: the first voxel axis runs to the subject's Right, the second Anterior, the third Superior, whatever the
scanner stored; so "axial" means the same slices for every file. A slice is shown as radiologists' software
in neurological convention does: axial and coronal slices with the subject's right on the right, anterior
(axial) or superior (coronal, sagittal) at the top.
"""

import dataclasses
import gzip
import math
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import tensorflow as tf

import dataset  # used at call time only: dataset imports this module to read volumes
from metrics import psnr, ssim
from utils import first_line, write_bytes

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
PERCENTILES = (0.5, 99.5)  # intensities below and above map to 0 and 1: robust to a few hot or dark voxels
FOREGROUND_LEVEL = 0.1  # a voxel above this normalised intensity is head, not background
MIN_FOREGROUND = 0.05  # slices with less head than this fraction of their area are left out
MIN_SLICE_SIDE = 11  # the side of SSIM's window, which the round trip scores its slices with
# Subject ids: BIDS "sub-OAS30001_ses-d0129_T1w" -> "sub-OAS30001"; OASIS-1 "OAS1_0001_MR1_mpr..." ->
# "OAS1_0001"; OASIS-3 "OAS30001_MR_d0129" -> "OAS30001"; ADNI "ADNI_941_S_1311_MR_MPRAGE..." -> "941_S_1311".
SUBJECT_PATTERNS = (re.compile(r"(sub-[A-Za-z0-9]+)"), re.compile(r"(OAS1_\d+)"), re.compile(r"(OAS3\d+)"),
                    re.compile(r"(\d{3}_S_\d+)"))


class VolumeError(ValueError):
    """A file that is not a usable brain volume; the message starts with its path."""


def is_volume(path):
    """Whether `path` names a volume this module reads (an Analyze pair by its .hdr)."""
    name = Path(path).name.lower()
    return name.endswith((".nii", ".nii.gz", ".hdr")) and not name.startswith(".")


def subject_id(path):
    """The subject a volume belongs to, from its file name (BIDS, OASIS or ADNI style), else the file stem."""
    name = Path(path).name
    for pattern in SUBJECT_PATTERNS:
        match = pattern.search(name)
        if match:
            return match.group(1)
    return re.sub(r"(\.nii)?(\.gz)?$|\.hdr$", "", name, flags=re.IGNORECASE)


def read_volume(path, window=None):
    """(volume float32 [X, Y, Z] in RAS, normalised to [0, 1], a note or None) of one file.

    `window` (low, high) maps those intensities to 0 and 1 where the files' range is known (8-bit slices
    already windowed, say); None normalises each volume by its own percentiles (`intensity_range`).
    A 4D series gives its first volume (the note says so); NaN and infinite voxels count as background.
    Raises VolumeError for a file nibabel cannot read, an Analyze header without its image, a volume that is
    not 3D or 4D, and one without any intensity range.
    """
    _, ras, note = read_ras(path)
    return normalise(ras, *(window or intensity_range(path, ras))), note


def read_ras(path):
    """(the nibabel image as stored, its voxels float32 [X, Y, Z] in RAS, a note or None); see read_volume."""
    path = Path(path)
    if path.name.lower().endswith(".hdr") and not path.with_suffix(".img").exists():
        raise VolumeError(f"{path}: an Analyze header without its image file {path.with_suffix('.img').name}")
    try:
        image = nib.load(str(path))
        data = np.asarray(nib.as_closest_canonical(image).dataobj, dtype=np.float32)
    except Exception as error:  # nibabel raises many kinds for damaged files (gzip, struct, value errors)
        raise VolumeError(f"{path}: not a readable NIfTI or Analyze volume ({first_line(error)})") from None
    note = None
    if data.ndim == 4:
        note = f"{path}: a 4D series of {data.shape[3]} volumes; using the first"
        data = data[..., 0]
    if data.ndim != 3 or min(data.shape) < 2:
        raise VolumeError(f"{path}: a volume of shape {data.shape}; expected 3 dimensions (or 4, a series)")
    return image, data, note


def to_stored_order(image, ras):
    """A RAS voxel array [X, Y, Z] put back in the voxel order of `image` as it was stored (undoes the
    reorientation of `read_ras`)."""
    stored = nib.orientations.io_orientation(image.affine)
    to_stored = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), stored)
    return nib.orientations.apply_orientation(ras, to_stored)


def intensity_range(path, data):
    """The intensities that `normalise` maps to 0 and 1 (its PERCENTILES of the finite voxels)."""
    finite = np.isfinite(data)
    if not finite.any():
        raise VolumeError(f"{path}: no finite voxel")
    low, high = np.percentile(data[finite], PERCENTILES)
    if high <= low:
        raise VolumeError(f"{path}: its intensities do not vary (percentiles {PERCENTILES} both {low:g})")
    return float(low), float(high)


def normalise(data, low, high):
    """`data` mapped linearly so that `low` and `high` (from `intensity_range`) go to 0 and 1, clipped to
    [0, 1]; NaN and infinite voxels become 0."""
    scaled = np.where(np.isfinite(data), (data - low) / (high - low), 0.0)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def brain_slices(volume, axis):
    """Indices along `axis` ("axial", "coronal" or "sagittal") of the slices with at least MIN_FOREGROUND of
    their area above FOREGROUND_LEVEL."""
    other = tuple(k for k in range(3) if k != AXES[axis])
    fraction = (volume > FOREGROUND_LEVEL).mean(axis=other)
    return [int(index) for index in np.flatnonzero(fraction >= MIN_FOREGROUND)]


def parse_slices(text):
    """(central fraction, step) from --slices: "all", "central:F" (the middle F of the brain slices),
    "every:K" (every K-th), or both joined by a comma. Raises ValueError with the reason."""
    central, step = 1.0, 1
    for part in filter(None, text.split(",")):
        kind, _, value = part.partition(":")
        try:
            if kind == "central" and 0 < float(value) <= 1:
                central = float(value)
                continue
            if kind == "every" and int(value) >= 1:
                step = int(value)
                continue
        except ValueError:
            pass
        if part != "all":
            raise ValueError(f"{part!r}: expected all, central:F with 0 < F <= 1, every:K with K >= 1, or "
                             f"central:F,every:K")
    return central, step


def select_slices(indices, text):
    """The brain slices that --slices keeps of `indices` (in order)."""
    central, step = parse_slices(text)
    drop = int(round(len(indices) * (1 - central) / 2))
    return indices[drop:len(indices) - drop][::step]


def slice_image(volume, axis, index):
    """Slice `index` of a RAS volume along `axis`, as float32 [rows, columns], oriented for display."""
    plane = np.moveaxis(volume, AXES[axis], 0)[index]  # a view: np.take copies slowly from Fortran order
    return np.ascontiguousarray(np.rot90(plane))  # the second remaining axis runs up the rows


def plane_of(image, axis):
    """`slice_image`'s display orientation undone: [rows, columns] back to the volume's plane."""
    return np.rot90(image, k=-1)


# ----------------------------------------------------------------------------------------------------------
# A whole volume through a model of slices


@dataclasses.dataclass
class RoundTrip:
    """A volume and its reconstruction, both nibabel images in the input's voxel grid and intensity range;
    the model's inputs [N, S, S, 1] and code grids [N, G, G]; the mean SSIM and PSNR over its brain slices."""

    original: nib.Nifti1Image
    reconstruction: nib.Nifti1Image
    inputs: np.ndarray
    codes: np.ndarray
    brain_slices: int
    ssim: float
    psnr: float
    note: str = None


@dataclasses.dataclass
class Scan:
    """A volume file read for a round trip: the nibabel image as stored, its voxels float32 [X, Y, Z] in RAS,
    the intensities (low, high) that `normalise` maps to 0 and 1, the normalised `volume`, and a note or None
    (see read_ras)."""

    image: nib.spatialimages.SpatialImage
    ras: np.ndarray
    low: float
    high: float
    volume: np.ndarray
    note: str = None

    def original(self):
        """The voxels as read, as a NIfTI image in the input's voxel grid."""
        return nib.Nifti1Image(to_stored_order(self.image, self.ras), self.image.affine)

    def stored(self, volume):
        """A RAS volume in [0, 1] like `self.volume` as a float32 NIfTI image in the input's voxel grid and
        intensity range."""
        in_range = volume * (self.high - self.low) + self.low
        return nib.Nifti1Image(to_stored_order(self.image, in_range).astype(np.float32), self.image.affine)


def read_scan(path):
    """The `Scan` of the volume at `path`; raises VolumeError as read_volume does."""
    image, ras, note = read_ras(path)
    low, high = intensity_range(path, ras)
    return Scan(image, ras, low, high, normalise(ras, low, high), note)


def slice_stack(volume, axis):
    """Every slice of `volume` along `axis`, oriented for display (`slice_image`): float32 [N, rows, columns, 1]."""
    return np.stack([slice_image(volume, axis, k) for k in range(volume.shape[AXES[axis]])])[..., None]


def unsquare(squares, side, rows, columns):
    """`dataset.square_and_resize` undone: images [N, S, S, 1] resized (bilinear) to side x side and cropped
    to the rows x columns in their middle, clipped to [0, 1]."""
    squares = tf.image.resize(squares, (side, side), method="bilinear").numpy()
    top, left = (side - rows) // 2, (side - columns) // 2
    return np.clip(squares[:, top:top + rows, left:left + columns], 0.0, 1.0)


def through_slices(volume, axis, size, transform):
    """(`volume` [X, Y, Z] in [0, 1] after each of its slices along `axis` went through `transform`, the model's
    inputs [N, size, size, 1]). Slices are squared and resized exactly as the training data was, and the
    outputs resized back and cropped (`unsquare`), so the result has the volume's shape."""
    planes = slice_stack(volume, axis)
    rows, columns = planes.shape[1:3]
    inputs, side = dataset.square_and_resize(tf.constant(planes), size)
    back = unsquare(transform(inputs.numpy()), int(side), rows, columns)[..., 0]
    return np.stack([plane_of(plane, axis) for plane in back], axis=AXES[axis]), inputs.numpy()


def reconstruct_volume(path, axis, image_size, model, batch_size):
    """Encode and decode every slice of the volume at `path` along `axis` with `model` (anything with
    encode(images) -> codes and reconstruct(images) -> images), `batch_size` slices at a time; a `RoundTrip`.
    Raises VolumeError for a file that is not a usable volume (see read_volume), and for one whose slices are
    smaller than SSIM's window or hold no brain."""
    scan = read_scan(path)
    brain = _checked_brain_slices(path, scan.volume, axis)
    batches = max(1, math.ceil(scan.volume.shape[AXES[axis]] / batch_size))
    grids = []

    def encode_and_decode(images):
        chunks = np.array_split(images, batches)
        grids.extend(model.encode(batch).numpy() for batch in chunks)
        return np.concatenate([model.reconstruct(batch).numpy() for batch in chunks])

    reconstructed, inputs = through_slices(scan.volume, axis, image_size, encode_and_decode)
    originals = np.stack([slice_image(scan.volume, axis, k) for k in brain])[..., None]
    reconstructions = np.stack([slice_image(reconstructed, axis, k) for k in brain])[..., None]
    return RoundTrip(original=scan.original(), reconstruction=scan.stored(reconstructed),
                     inputs=inputs, codes=np.concatenate(grids), brain_slices=len(brain),
                     ssim=float(np.mean(ssim(originals, reconstructions).numpy())),
                     psnr=float(np.mean(psnr(originals, reconstructions).numpy())), note=scan.note)


def _checked_brain_slices(path, volume, axis):
    """The brain slices of `volume` along `axis` that the round trip scores; raises VolumeError if its slices
    are smaller than SSIM's window or none holds brain."""
    rows, columns = slice_image(volume, axis, 0).shape
    if min(rows, columns) < MIN_SLICE_SIDE:
        raise VolumeError(f"{path}: a volume of shape {volume.shape}, too small: its {axis} slices are "
                          f"{rows}x{columns} voxels; expected at least {MIN_SLICE_SIDE}x{MIN_SLICE_SIDE}")
    brain = brain_slices(volume, axis)
    if not brain:
        raise VolumeError(f"{path}: no slice with brain along the {axis} axis (none has {MIN_FOREGROUND:.0%} of "
                          f"its area above {FOREGROUND_LEVEL:g} of the intensity range)")
    return brain


def write_volume(path, image):
    """Write a nibabel image as NIfTI at `path` (gzipped where the name ends in .gz), atomically."""
    data = image.to_bytes()
    write_bytes(path, gzip.compress(data) if str(path).endswith(".gz") else data)
