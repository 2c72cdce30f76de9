"""Brain volumes as 2D slices: NIfTI (.nii, .nii.gz) and Analyze 7.5 (.hdr/.img) scans read with nibabel,
turned to the canonical RAS orientation, intensity-normalised per volume, and sliced along one axis.

RAS: the first voxel axis runs to the subject's Right, the second Anterior, the third Superior, whatever the
scanner stored; so "axial" means the same slices for every file. A slice is shown as radiologists' software
in neurological convention does: axial and coronal slices with the subject's right on the right, anterior
(axial) or superior (coronal, sagittal) at the top.
"""

import re
from pathlib import Path

import nibabel as nib
import numpy as np

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
PERCENTILES = (0.5, 99.5)  # intensities below and above map to 0 and 1: robust to a few hot or dark voxels
FOREGROUND_LEVEL = 0.1  # a voxel above this normalised intensity is head, not background
MIN_FOREGROUND = 0.05  # slices with less head than this fraction of their area are left out
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
        raise VolumeError(f"{path}: not a readable NIfTI or Analyze volume ({_first_line(error)})") from None
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


def _first_line(error):
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:160] if lines else ''}"
