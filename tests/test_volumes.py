"""Volumes: RAS reorientation of NIfTI and Analyze files with non-trivial affines, normalisation against
scikit-image, brainless slices left out, subject ids from file names, and a clear error for each bad file."""

import csv
import gzip
import json
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf
from skimage import exposure

import dataset
import evaluation
import predict
import train
import volumes
from conftest import call_main, head, write_pir_head

SHAPE = (6, 7, 8)  # RAS: x to the right, y to the front, z up
MARKER = (1, 2, 5)


def ras_volume():
    """A head-like volume in RAS with one bright marker voxel."""
    volume = 20.0 + np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) / 10
    volume[MARKER] = 1000.0
    return volume


def normalised(data):
    return volumes.normalise(data, *volumes.intensity_range("test", data))


def stored(axcodes):
    """The RAS volume as a scanner might store it: axes permuted and flipped to `axcodes`, with the affine
    that says so (nibabel's own reorientation)."""
    image = nib.Nifti1Image(ras_volume(), np.diag([2.0, 3.0, 4.0, 1.0]))
    transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                                nib.orientations.axcodes2ornt(axcodes))
    return image.as_reoriented(transform)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("axcodes", ["LAS", "SLP", "PIR"])
def test_a_nifti_volume_is_read_in_ras_whatever_its_stored_orientation(suffix, axcodes, tmp_path):
    image = stored(axcodes)
    assert nib.aff2axcodes(image.affine) == tuple(axcodes)
    assert np.unravel_index(np.asarray(image.dataobj).argmax(), image.shape) != MARKER  # not stored as RAS
    path = tmp_path / f"scan{suffix}"
    nib.save(image, path)
    volume, note = volumes.read_volume(path)
    assert note is None
    np.testing.assert_array_equal(volume, normalised(ras_volume()))


# Where voxel (x, y, z) of a RAS volume lands in each axis's slice image: (row, column).
LANDS = {"axial": lambda x, y, z: (SHAPE[1] - 1 - y, x), "coronal": lambda x, y, z: (SHAPE[2] - 1 - z, x),
         "sagittal": lambda x, y, z: (SHAPE[2] - 1 - z, y)}


@pytest.mark.parametrize("axis", sorted(volumes.AXES))
def test_each_axis_slices_with_the_front_or_top_up_and_the_right_on_the_right(axis, tmp_path):
    nib.save(stored("PIR"), tmp_path / "scan.nii.gz")
    volume, _ = volumes.read_volume(tmp_path / "scan.nii.gz")
    along = volumes.AXES[axis]
    for index in (0, MARKER[along]):
        image = volumes.slice_image(volume, axis, index)
        for x, y, z in np.ndindex(SHAPE):
            if (x, y, z)[along] == index:
                assert image[LANDS[axis](x, y, z)] == volume[x, y, z]


def test_an_analyze_pair_is_read_with_nibabels_default_radiological_flip(tmp_path):
    path = tmp_path / "OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc.hdr"
    nib.save(nib.AnalyzeImage(ras_volume(), None), path)
    assert path.with_suffix(".img").exists()
    assert nib.aff2axcodes(nib.load(path).affine)[0] == "L"  # Analyze 7.5 stores no orientation: x runs left
    volume, _ = volumes.read_volume(path)
    np.testing.assert_array_equal(volume, normalised(ras_volume())[::-1])


def test_normalisation_maps_robust_percentiles_to_0_and_1():
    data = np.random.default_rng(0).gamma(2.0, 50.0, SHAPE).astype(np.float32)
    data[0, 0, 0] = np.nan
    low, high = np.nanpercentile(data, volumes.PERCENTILES)
    expected = exposure.rescale_intensity(np.nan_to_num(data, nan=low), in_range=(low, high), out_range=(0.0, 1.0))
    np.testing.assert_allclose(normalised(data), expected, atol=1e-6)


def test_a_known_window_replaces_the_percentiles(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, SHAPE).astype(np.uint8)
    data[:4] = 0  # so that the percentiles are not the window
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "scan.nii")
    volume, _ = volumes.read_volume(tmp_path / "scan.nii", window=(0, 255))
    expected = exposure.rescale_intensity(data.astype(np.float64), in_range=(0, 255), out_range=(0.0, 1.0))
    np.testing.assert_allclose(volume, expected, atol=1e-7)
    assert not np.allclose(volumes.read_volume(tmp_path / "scan.nii")[0], expected, atol=1e-3)


def test_slices_without_brain_are_left_out():
    volume = np.zeros(SHAPE, np.float32)
    volume[1:5, 1:6, 2:6] = 0.8
    volume[0, 0, 0] = 0.9  # one hot voxel is not a head
    assert volumes.brain_slices(volume, "axial") == [2, 3, 4, 5]
    assert volumes.brain_slices(volume, "sagittal") == [1, 2, 3, 4]


@pytest.mark.parametrize("name, subject", [
    ("sub-OAS30001_ses-d0129_T1w.nii.gz", "sub-OAS30001"),
    ("OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc.hdr", "OAS1_0001"),
    ("OAS30001_MR_d0129.nii", "OAS30001"),
    ("ADNI_941_S_1311_MR_MPRAGE_br_raw_20070212_S12345_I67890.nii", "941_S_1311"),
    ("brain.nii.gz", "brain"),
])
def test_subject_ids_come_from_bids_oasis_and_adni_names(name, subject):
    assert volumes.subject_id(name) == subject


def test_a_4d_series_gives_its_first_volume_and_says_so(tmp_path):
    series = np.stack([ras_volume(), np.zeros(SHAPE, np.float32) + 5], axis=-1)
    nib.save(nib.Nifti1Image(series, np.eye(4)), tmp_path / "series.nii")
    volume, note = volumes.read_volume(tmp_path / "series.nii")
    np.testing.assert_array_equal(volume, normalised(ras_volume()))
    assert "first" in note and "2 volumes" in note


def damaged_files(tmp_path):
    nib.save(nib.Nifti1Image(ras_volume(), np.eye(4)), tmp_path / "whole.nii.gz")
    data = (tmp_path / "whole.nii.gz").read_bytes()
    (tmp_path / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.nii").write_bytes(gzip.compress(b"not a volume") * 10)
    nib.save(nib.AnalyzeImage(ras_volume(), None), tmp_path / "lonely.hdr")
    (tmp_path / "lonely.img").unlink()
    nib.save(nib.Nifti1Image(np.ones((5, 5), np.float32), np.eye(4)), tmp_path / "flat.nii")
    nib.save(nib.Nifti1Image(np.full(SHAPE, 3.0, np.float32), np.eye(4)), tmp_path / "constant.nii")
    return {"truncated.nii.gz": "not a readable", "garbage.nii": "not a readable", "lonely.hdr": "without its image",
            "flat.nii": "expected 3 dimensions", "constant.nii": "do not vary"}


def test_each_bad_volume_gives_an_error_naming_the_file(tmp_path):
    for name, words in damaged_files(tmp_path).items():
        with pytest.raises(volumes.VolumeError, match=words) as error:
            volumes.read_volume(tmp_path / name)
        assert str(error.value).startswith(str(tmp_path / name)) and "\n" not in str(error.value)


def write_cohort(root, subjects=4):
    """AD/ and NC/ folders of BIDS-named subjects with two sessions each, in NIfTI, gzipped NIfTI and
    Analyze, stored in an oblique-free non-RAS orientation."""
    rng = np.random.default_rng(0)
    transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                                nib.orientations.axcodes2ornt("LPS"))
    for label in ("AD", "NC"):
        for subject in range(subjects):
            for session, suffix in (("1", ".nii.gz"), ("2", ".nii")):
                folder = root / label / f"sub-{label}{subject:02d}" / f"ses-{session}" / "anat"
                folder.mkdir(parents=True)
                image = nib.Nifti1Image(head(rng), np.eye(4)).as_reoriented(transform)
                if subject == 0 and session == "2":
                    nib.save(nib.AnalyzeImage(np.asarray(image.dataobj), None),
                             folder / f"sub-{label}{subject:02d}_ses-{session}_T1w.hdr")
                else:
                    nib.save(image, folder / f"sub-{label}{subject:02d}_ses-{session}_T1w{suffix}")
    return root


def test_a_folder_of_volumes_is_a_source_split_by_subject_with_labels_from_folders(tmp_path):
    root = write_cohort(tmp_path / "cohort")
    source = dataset.load_source(str(root), seed=3)
    assert source.kind == "volumes" and source.class_names == ["AD", "NC"]
    assert sum(len(split) for split in source.splits.values()) == 16
    for split in source.splits.values():
        assert all(path.split("/")[-1].startswith(subject + "_") for path, subject in zip(split.files, split.patients))
        assert all(("/AD/" in path) == (label == 0) for path, label in zip(split.files, split.labels))
    subjects = [set(split.patients) for split in source.splits.values()]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])
    test = source.splits["test"]
    decoded = dataset.decoded_split(test, 32)
    images = np.stack([image for image, _ in decoded.images.as_numpy_iterator()])
    expected = sum(len(volumes.brain_slices(volumes.read_volume(path)[0], "axial")) for path in test.files)
    assert images.shape == (expected, 32, 32, 1) and 0 <= images.min() and images.max() <= 1
    every_other = dataset.load_source(str(root), seed=3, axis="coronal", slices="central:0.5,every:2")
    decoded = dataset.decoded_split(every_other.splits["test"], 32)
    counts = [len(volumes.select_slices(volumes.brain_slices(volumes.read_volume(path)[0], "coronal"),
                                        "central:0.5,every:2")) for path in test.files]
    assert sum(1 for _ in decoded.images) == sum(counts) < expected


def test_evaluate_slices_volumes_as_the_model_was_trained(trained, tmp_path, capsys):
    """The seed, axis and slices of the model's config.json, not the command line's --seed and defaults."""
    root = write_cohort(tmp_path / "cohort")
    model = tmp_path / "model"
    shutil.copytree(trained[0], model)
    config = json.loads((model / "config.json").read_text())
    config.update(data=str(root), data_root=str(root), dataset="volumes", seed=3, axis="coronal",
                  slices="central:0.5,every:2")
    (model / "config.json").write_text(json.dumps(config))
    test = dataset.load_volumes(root, seed=3).splits["test"]
    assert test.patients != dataset.load_volumes(root, seed=0).splits["test"].patients  # the seed matters here
    counts = {axis: sum(len(volumes.select_slices(volumes.brain_slices(volumes.read_volume(path)[0], axis),
                                                  config["slices"])) for path in test.files)
              for axis in ("coronal", "axial")}
    assert counts["coronal"] != counts["axial"]
    result = call_main(predict.main, ["--model", str(model), "--evaluate", str(root), "--out", str(tmp_path / "e")],
                       capsys)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "e" / "evaluation_test.json").read_text())["n_images"] == counts["coronal"]
    with open(tmp_path / "e" / "evaluation_test.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["patient"] for row in rows} == set(test.patients)
    # One row per slice, naming the volume and the slice it came from.
    assert [(row["file"], int(row["slice"])) for row in rows] == [
        (path, index) for path in test.files
        for index in volumes.select_slices(volumes.brain_slices(volumes.read_volume(path)[0], "coronal"),
                                           config["slices"])]


def test_slice_selection_keeps_the_central_fraction_and_every_kth():
    indices = list(range(10, 30))
    assert volumes.select_slices(indices, "all") == indices
    assert volumes.select_slices(indices, "central:0.5") == list(range(15, 25))
    assert volumes.select_slices(indices, "every:3") == indices[::3]
    assert volumes.select_slices(indices, "central:0.5,every:2") == list(range(15, 25, 2))
    for bad in ("central:0", "every:0", "middle:2", "every:x"):
        with pytest.raises(ValueError):
            volumes.parse_slices(bad)


def test_train_stops_with_one_line_on_a_damaged_volume_and_writes_nothing(tmp_path, capsys):
    root = write_cohort(tmp_path / "cohort", subjects=3)
    damaged = root / "NC" / "sub-NC01" / "ses-1" / "anat" / "sub-NC01_ses-1_T1w.nii.gz"
    damaged.write_bytes(damaged.read_bytes()[:300])
    out = tmp_path / "out"
    result = call_main(train.main, ["--data", str(root), "--out", str(out), "--logdir", str(tmp_path / "logs"),
                                    "--image-size", "32"], capsys)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: --data {damaged}: not a readable NIfTI or Analyze volume")
    assert not out.exists()


def test_a_volume_is_reconstructed_into_its_own_voxel_grid(trained, tmp_path, capsys):
    """The input's shape, affine and orientation, a summary line and a figure of three views."""
    source = write_pir_head(tmp_path / "scan.nii.gz")
    out = tmp_path / "recon.nii.gz"
    result = call_main(predict.main, ["--model", str(trained[0]), "--reconstruct-volume", str(tmp_path / "scan.nii.gz"),
                                      "--out", str(out)], capsys)
    assert result.returncode == 0, result.stderr
    assert "SSIM" in result.stdout and "bits raw" in result.stdout and str(out) in result.stdout
    written = nib.load(out)
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert nib.aff2axcodes(written.affine) == ("P", "I", "R")
    assert np.isfinite(np.asarray(written.dataobj)).all()
    assert (tmp_path / "recon_views.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("axis", sorted(volumes.AXES))
def test_every_voxel_goes_back_where_it_came_from(axis):
    """Slicing, squaring, resizing and back, with an identity in place of the model, gives the volume again:
    exactly where the model's size is the squared slice's side, nearly where it is resized."""
    volume = np.random.default_rng(1).random((12, 16, 10)).astype(np.float32)
    side = max(s for k, s in enumerate(volume.shape) if k != volumes.AXES[axis])
    same, inputs = volumes.through_slices(volume, axis, side, lambda images: images)
    np.testing.assert_allclose(same, volume, atol=1e-6)
    assert inputs.shape == (volume.shape[volumes.AXES[axis]], side, side, 1)
    smooth = np.fromfunction(lambda x, y, z: (np.sin(x / 4) + np.cos(y / 5) + z / 10 + 2) / 5, (12, 16, 10))
    resized, _ = volumes.through_slices(smooth.astype(np.float32), axis, 64, lambda images: images)
    assert np.abs(resized - smooth).mean() < 0.02


def test_reconstruct_volume_refuses_a_bad_volume_and_an_existing_output(trained, tmp_path, capsys):
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b" + bytes(100))
    out = tmp_path / "recon.nii.gz"
    result = call_main(predict.main, ["--model", str(trained[0]), "--reconstruct-volume",
                                      str(tmp_path / "broken.nii.gz"), "--out", str(out)], capsys)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: --reconstruct-volume {tmp_path / 'broken.nii.gz'}: not a readable")
    assert not out.exists() and not (tmp_path / "recon_views.png").exists()
    out.write_bytes(b"mine")
    result = call_main(predict.main, ["--model", str(trained[0]), "--reconstruct-volume",
                                      str(tmp_path / "broken.nii.gz"), "--out", str(out)], capsys)
    assert result.returncode == 2 and "already there" in result.stderr and out.read_bytes() == b"mine"


def test_reconstruct_picks_test_slices_from_every_volume_not_the_first_ones(tmp_path):
    for subject, level in (("sub-01", 100.0), ("sub-02", 200.0)):
        data = np.zeros((8, 8, 12), np.float32)
        data[2:6, 2:6] = level + np.arange(12)  # brain on every axial slice, its number in its intensity
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / f"{subject}_T1w.nii")
    files = dataset.volume_files(tmp_path)
    split = dataset.Split(files, [volumes.subject_id(f) for f in files], [-1, -1], "axial", "all", (0, 255))
    picks = evaluation.spread_picks(dataset.decoded_split(split, 8).images, 4)
    levels = sorted(np.round(picks.max(axis=(1, 2, 3)) * 255).astype(int).tolist())
    assert levels == [100, 106, 200, 206]



def write_unusable_volumes(folder):
    """A volume with no brain slice (scattered bright voxels on faint noise: no slice is a twentieth head)
    and a 2x2x2 volume; {file name: what its error says}."""
    rng = np.random.default_rng(0)
    sparse = rng.random((24, 24, 24)).astype(np.float32)
    sparse[rng.random(sparse.shape) < 0.01] = 100.0
    nib.save(nib.Nifti1Image(sparse, np.eye(4)), folder / "sparse.nii.gz")
    nib.save(nib.Nifti1Image(rng.random((2, 2, 2)).astype(np.float32), np.eye(4)), folder / "tiny.nii")
    return {"sparse.nii.gz": "no slice with brain along the axial axis",
            "tiny.nii": "too small: its axial slices are 2x2 voxels; expected at least 11x11"}


def test_a_volume_without_brain_or_smaller_than_ssims_window_is_named_before_the_model_runs(tmp_path):
    calls = []

    class Identity:
        def encode(self, images):
            calls.append("encode")
            return tf.constant(images)

        def reconstruct(self, images):
            return tf.constant(images)

    for name, words in write_unusable_volumes(tmp_path).items():
        with pytest.raises(volumes.VolumeError, match=words) as error:
            volumes.reconstruct_volume(tmp_path / name, "axial", 32, Identity(), 8)
        assert str(error.value).startswith(str(tmp_path / name)) and "\n" not in str(error.value)
    assert calls == []
    nib.save(nib.Nifti1Image(head(np.random.default_rng(1), (11, 11, 12)), np.eye(4)), tmp_path / "small.nii")
    assert volumes.reconstruct_volume(tmp_path / "small.nii", "axial", 32, Identity(), 8).brain_slices > 0


def test_reconstruct_volume_names_a_volume_without_brain_or_too_small_in_one_line(trained, tmp_path, capsys):
    for name, words in write_unusable_volumes(tmp_path).items():
        out = tmp_path / f"{name}_recon.nii.gz"
        result = call_main(predict.main, ["--model", str(trained[0]), "--reconstruct-volume", str(tmp_path / name),
                                          "--out", str(out)], capsys)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        [line] = result.stderr.strip().splitlines()
        assert line.startswith(f"error: --reconstruct-volume {tmp_path / name}: ") and words in line
        assert not out.exists()


def test_a_two_level_model_reconstructs_a_volume_and_counts_both_levels_codes(trained_hierarchical, tmp_path, capsys):
    """The round trip through both levels, and the raw size of the codes: every brain slice's 8 x 8 bottom and
    4 x 4 top codes of log2(16) = 4 bits each (TINY: 32-pixel slices, 16 codes)."""
    source = write_pir_head(tmp_path / "scan.nii.gz")
    out = tmp_path / "recon.nii.gz"
    result = call_main(predict.main, ["--model", str(trained_hierarchical[0]), "--reconstruct-volume",
                                      str(tmp_path / "scan.nii.gz"), "--out", str(out)], capsys)
    assert result.returncode == 0, result.stderr
    slices = int(re.search(r"brain slices of (\d+)", result.stdout).group(1))
    assert f"code grids {slices * (8 * 8 + 4 * 4) * 4:,} bits raw" in result.stdout
    assert nib.load(out).shape == source.shape
