"""The embedded default data: a small virtual cohort made offline from the MNI ICBM152 T1 template.

The template ships inside nilearn, so the demo needs no download. Each virtual subject is the template under
its own random deformation and imaging changes, written as one NIfTI volume; the cohort is built once, cached
(`default_cache_dir`) and then read as the `volumes` source reads users' scans. `dataset.load_source` returns
it when no data is given.
"""

import os
from pathlib import Path

import nibabel as nib
import numpy as np

import dataset
import volumes


def default_cache_dir():
    """Where the demo cohort is cached: $BRAIN_VQVAE_CACHE, else $XDG_CACHE_HOME/brain_vqvae, else ~/.cache."""
    if os.environ.get("BRAIN_VQVAE_CACHE"):
        return Path(os.environ["BRAIN_VQVAE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "brain_vqvae"


DEMO_SUBJECTS = (12, 2, 2)  # train, validate, test


def load_demo(cache_dir=None, seed=0, subjects=DEMO_SUBJECTS, slice_step=2, size=256):
    """The demo cohort (built once, then cached) as a `volumes` source with `subjects` in its three splits.

    Its volumes hold 8-bit slices already windowed by the generator, so they are read with the window 0..255
    rather than re-stretched by each volume's percentiles.
    """
    root = build_demo(cache_dir, seed, sum(subjects), slice_step, size)
    files = dataset.volume_files(root)
    patients = [volumes.subject_id(f) for f in files]
    everything = dataset.Split(files, patients, [-1] * len(files), "axial", "all", (0, 255))
    # Subjects in the generator's order (sub-001, sub-002, ...): the first subjects[0] train, and so on.
    order, ends = sorted(set(everything.patients)), np.cumsum(subjects)
    groups = {name: set(order[end - count:end]) for name, count, end in zip(dataset.SPLITS, subjects, ends)}
    splits = {name: dataset.select(everything, lambda p, g=group: p in g) for name, group in groups.items()}
    return dataset.DataSource("demo", root, [], splits)


def build_demo(cache_dir=None, seed=0, subjects=sum(DEMO_SUBJECTS), slice_step=2, size=256):
    """Build (or reuse) the demo cohort and return its folder: one NIfTI volume per virtual subject.

    The MNI ICBM152 T1 template bundled with nilearn is resliced axially; each virtual subject gets its own
    random affine (rotation, scale, shear, shift), a smooth elastic deformation, a head-position offset along
    z, and intensity changes (gamma, a smooth bias field, Rician noise). Its 8-bit axial slices are stacked
    into a volume in RAS, placed in the template's world space (voxels of 0.8 x 233 / `size` mm in-plane,
    `slice_step` mm apart). The result is deterministic for a seed.
    """
    name = f"demo_v4_seed{seed}_{subjects}_{slice_step}_{size}"
    root = Path(cache_dir or default_cache_dir()) / name
    if (root / "complete").exists():
        return str(root)
    volume, affine = _mni_template()
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = affine @ _demo_voxels_to_template(volume, slice_step, size)
    for subject in range(1, subjects + 1):
        slices = [volumes.plane_of(image, "axial") for image in _virtual_subject(volume, rng, slice_step, size)]
        image = nib.Nifti1Image(np.stack(slices, axis=2), affine)
        image.header["cal_min"], image.header["cal_max"] = 0, 255
        nib.save(image, tmp / f"sub-{subject:03d}_T1w.nii.gz")
    (tmp / "complete").write_text("ok\n")
    if root.exists():
        return str(root)  # another process finished first
    tmp.rename(root)
    return str(root)


def _mni_template():
    """(the 1 mm MNI152 T1 template as float32 [x, y, z] in [0, 1], its affine); bundled with nilearn, no
    download."""
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=1)
    volume = template.get_fdata().astype(np.float32)
    return np.clip(volume / np.percentile(volume, 99.5), 0.0, 1.0), template.affine


def _brain_slices_of_template(volume):
    """The template's axial slices with at least a quarter of the largest brain area."""
    brain_area = (volume > 0.1).sum(axis=(0, 1))
    return np.flatnonzero(brain_area > 0.25 * brain_area.max())


def _demo_voxels_to_template(volume, slice_step, size):
    """The affine from a demo volume's voxels to the template's voxels, before each subject's own motion."""
    nx, ny, _ = volume.shape
    spacing = 0.8 * max(nx, ny) / size
    # As `_virtual_subject` samples: column c at x = nx/2 + (c - size/2) spacing, row r at
    # y = ny/2 + (size/2 - r) spacing; `volumes.plane_of` stores row r at j = size - 1 - r.
    return np.array([[spacing, 0, 0, nx / 2 - spacing * size / 2],
                     [0, spacing, 0, ny / 2 - spacing * (size / 2 - 1)],
                     [0, 0, slice_step, _brain_slices_of_template(volume)[0]],
                     [0, 0, 0, 1.0]])


def _virtual_subject(volume, rng, slice_step, size):
    """The axial slices (uint8 [size, size]) of one randomly deformed, re-imaged copy of the template."""
    from scipy import ndimage

    nx, ny, nz = volume.shape
    shift_z = rng.integers(-3, 4)
    z_positions = np.clip(_brain_slices_of_template(volume)[::slice_step] + shift_z, 0, nz - 1)

    # Output pixel (row, col) -> template (x, y): anterior up, subject's left on the image's right.
    angle = np.deg2rad(rng.uniform(-8, 8))
    scale = rng.uniform(0.9, 1.1, size=2)
    shear = rng.uniform(-0.05, 0.05)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    # The brain fills about three quarters of the frame, as in the OASIS slices.
    matrix = rotation @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag(1.0 / scale) * (0.8 * max(nx, ny) / size)
    rows, cols = np.meshgrid(np.arange(size) - size / 2, np.arange(size) - size / 2, indexing="ij")
    offset = rng.uniform(-4, 4, size=2)
    x = matrix[0, 0] * cols + matrix[0, 1] * rows + nx / 2 + offset[0]
    y = -(matrix[1, 0] * cols + matrix[1, 1] * rows) + ny / 2 + offset[1]
    for coords in (x, y):  # smooth elastic deformation, a few mm
        coords += ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), sigma=24) * 60 * rng.uniform(0.5, 1)

    gamma = rng.uniform(0.75, 1.35)
    bias = np.exp(ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), sigma=64) * 8 * rng.uniform(0.5, 1))
    noise = rng.uniform(0.005, 0.02)
    for z in z_positions:
        image = ndimage.map_coordinates(volume[:, :, z], [x, y], order=1, mode="constant", cval=0.0)
        image = np.clip(image, 0, 1) ** gamma * bias
        # Rician noise inside the head only: the public slices are skull-stripped with a zero background.
        head = ndimage.binary_dilation(image > 0.05, iterations=2)
        noisy = np.hypot(image + rng.normal(0, noise, image.shape), rng.normal(0, noise, image.shape))
        image = np.where(head, noisy, 0.0)
        yield (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
