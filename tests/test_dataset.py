"""Finding, splitting and decoding the OASIS, ADNI, folder and demo sources."""

import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import dataset
import demo
import volumes
from conftest import fake_slice, write_adni


def images_of(split, size=32):
    decoded = dataset.decoded_split(split, size)
    pairs = list(decoded.images.as_numpy_iterator())
    return np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs]), decoded.skipped


def assert_no_patient_in_two_splits(source):
    patients = [set(split.patients) for split in source.splits.values()]
    for i in range(len(patients)):
        for j in range(i + 1, len(patients)):
            assert not patients[i] & patients[j]


@pytest.mark.parametrize("name, patient", [("case_001_slice_0.nii.png", "case_001"),
                                           ("941_S_1311_78.jpeg", "941_S_1311"), ("1182968_94.jpeg", "1182968"),
                                           ("sub-01_slice_012.png", "sub-01"), ("scan.png", "scan")])
def test_patient_id_from_file_name(name, patient):
    assert dataset.patient_id(f"/some/dir/{name}") == patient


def test_oasis_counts_shapes_ranges_and_no_masks(oasis_root):
    source = dataset.load_source(str(oasis_root))
    assert source.kind == "oasis" and source.class_names == []
    assert {name: len(split) for name, split in source.splits.items()} == {"train": 12, "validate": 4, "test": 4}
    assert not any("seg" in f for split in source.splits.values() for f in split.files)
    images, labels, skipped = images_of(source.splits["train"])
    assert images.shape == (12, 32, 32, 1) and images.dtype == np.float32 and skipped == 0
    assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.5
    assert set(labels) == {-1}
    assert_no_patient_in_two_splits(source)


@pytest.mark.parametrize("nested", [True, False])
def test_adni_labels_and_validation_carved_by_patient(tmp_path, nested):
    write_adni(tmp_path / "AD_NC" if nested else tmp_path, train_patients=10)
    source = dataset.load_source(str(tmp_path), seed=3, validation_fraction=0.2)
    assert source.kind == "adni" and source.class_names == ["AD", "NC"]
    validate, train, test = (source.splits[n] for n in ("validate", "train", "test"))
    # 20 % of each class's 10 train patients, stratified: 2 AD and 2 NC patients of 3 slices each.
    assert len(validate) == 12 and sorted(np.bincount(validate.labels)) == [6, 6]
    assert len(train) == 48 and len(test) == 12
    assert_no_patient_in_two_splits(source)
    for split in source.splits.values():
        for file, label in zip(split.files, split.labels):
            assert f"/{source.class_names[label]}/" in file
    images, labels, _ = images_of(test, 32)
    assert images.shape == (12, 32, 32, 1)
    np.testing.assert_array_equal(labels, test.labels)


def test_adni_split_is_deterministic_for_a_seed(adni_root):
    first = dataset.load_source(str(adni_root), seed=7).splits["validate"].files
    assert dataset.load_source(str(adni_root), seed=7).splits["validate"].files == first


def test_non_square_images_are_padded_with_background_then_resized(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("L", (256, 240), 255).save(folder / "p1_1.png")  # 256 wide, 240 high, all white
    split = dataset.Split([str(folder / "p1_1.png")], ["p1"], [-1])
    image = images_of(split, 32)[0][0, ..., 0]
    # 8 rows of padding above and below become one background row at 32x32.
    np.testing.assert_allclose(image[[0, -1]], 0.0, atol=0.02)
    np.testing.assert_allclose(image[2:-2], 1.0, atol=1e-6)


def test_colour_palette_and_16_bit_images_of_mixed_sizes_become_grayscale_in_unit_range(tmp_path):
    rgb, rgba, palette, deep = (tmp_path / f"p{i}_1.png" for i in range(4))
    Image.new("RGB", (40, 40), (200, 200, 200)).save(rgb)
    Image.new("RGBA", (64, 64), (200, 200, 200, 255)).save(rgba)
    Image.new("L", (20, 20), 100).convert("P").save(palette)
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(deep)
    files = [str(f) for f in (rgb, rgba, palette, deep)]
    split = dataset.Split(files, ["p0", "p1", "p2", "p3"], [-1] * 4)
    images = images_of(split, 16)[0]
    assert images.shape == (4, 16, 16, 1)
    np.testing.assert_allclose(images[0], 200 / 255, atol=0.01)
    np.testing.assert_allclose(images[1], 200 / 255, atol=0.01)
    np.testing.assert_allclose(images[2], 100 / 255, atol=0.01)
    np.testing.assert_allclose(images[3], 40000 / 65535, atol=0.01)


def test_folder_source_splits_by_patient_and_labels_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("healthy", "tumour"):
        (tmp_path / cls).mkdir()
        for patient in range(5):
            for index in range(2):
                fake_slice(rng, 64, 64).save(tmp_path / cls / f"{cls}{patient}_slice_{index}.png")
    (tmp_path / "healthy" / "notes.txt").write_text("not an image")
    source = dataset.load_source(str(tmp_path))
    assert source.kind == "folder" and source.class_names == ["healthy", "tumour"]
    assert sum(len(split) for split in source.splits.values()) == 20
    assert all(len(split) > 0 for split in source.splits.values())
    assert_no_patient_in_two_splits(source)


def test_corrupt_file_is_named_or_skipped(oasis_root):
    bad = oasis_root / "keras_png_slices_train" / "case_001_slice_2.nii.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    split = dataset.load_source(str(oasis_root)).splits["train"]
    with pytest.raises(dataset.DataError, match="case_001_slice_2.nii.png"):
        dataset.decoded_split(split, 32)
    decoded = dataset.decoded_split(split, 32, skip_bad=True)
    assert decoded.skipped == 1 and len(list(decoded.images)) == 11
    assert decoded.origins == [(file, None) for file in split.files if file != str(bad)]


def test_a_split_with_no_readable_file_is_refused_even_when_skipping(tmp_path):
    files = [tmp_path / f"p{i}_1.png" for i in range(2)]
    for file in files:
        file.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    split = dataset.Split([str(f) for f in files], ["p0", "p1"], [-1, -1])
    with pytest.raises(dataset.UnreadableImages, match=r"p0_1.png: not a readable .* \(and 1 more\); fix or remove"):
        dataset.decoded_split(split, 16)
    with pytest.raises(dataset.UnreadableImages, match="none of the 2 images could be read"):
        dataset.decoded_split(split, 16, skip_bad=True)


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "no such file"),
    (lambda p: p, "found no images"),
    (lambda p: (p / "a.txt").write_text("x") and p, "found no images"),
])
def test_unusable_data_paths_raise_a_clear_error(tmp_path, make, message):
    with pytest.raises(dataset.DataError, match=message):
        dataset.load_source(str(make(tmp_path)))


def test_demo_builds_offline_deterministically_as_nifti_volumes(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the demo must not use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    settings = dict(seed=5, subjects=(2, 1, 1), slice_step=25, size=64)
    source = demo.load_demo(cache_dir=tmp_path / "a", **settings)
    again = demo.load_demo(cache_dir=tmp_path / "b", **settings)
    assert source.kind == "demo" and [len(set(source.splits[s].patients)) for s in dataset.SPLITS] == [2, 1, 1]
    images = images_of(source.splits["train"], 32)[0]
    assert images.shape[1:] == (32, 32, 1) and len(images) >= 8
    assert images.mean() > 0.05 and images[:, 0, 0].max() == 0  # brain in the middle, background at the corner
    files = sorted(Path(f).name for split in source.splits.values() for f in split.files)
    assert files == sorted(Path(f).name for split in again.splits.values() for f in split.files)
    assert all(f.endswith(".nii.gz") for f in files)
    for first, second in zip(sorted(sum((split.files for split in source.splits.values()), [])),
                             sorted(sum((split.files for split in again.splits.values()), []))):
        np.testing.assert_array_equal(np.asarray(nib.load(first).dataobj), np.asarray(nib.load(second).dataobj))
    # Two subjects differ: the cohort is not one image copied.
    a, b = (images_of(source.splits[s], 32)[0] for s in ("validate", "test"))
    assert np.abs(a.mean(0) - b.mean(0)).mean() > 0.01


@pytest.mark.parametrize("data, layout", [(None, "auto"), (None, "demo")])
def test_load_source_without_data_is_the_demo(tmp_path, monkeypatch, data, layout):
    calls = []
    monkeypatch.setattr(demo, "load_demo", lambda **kwargs: calls.append(kwargs) or "the demo")
    assert dataset.load_source(data, layout, seed=4, cache_dir=tmp_path) == "the demo"
    assert calls == [{"cache_dir": tmp_path, "seed": 4}]


def test_the_demo_volumes_give_back_the_generators_slices_in_the_templates_space(tmp_path):
    settings = dict(seed=3, subjects=(1, 1, 1), slice_step=20, size=48)
    source = demo.load_demo(cache_dir=tmp_path, **settings)
    template, template_affine = demo._mni_template()
    rng = np.random.default_rng(settings["seed"])
    for split in dataset.SPLITS:  # the generator makes the subjects in this order
        made = np.stack(list(demo._virtual_subject(template, rng, settings["slice_step"], settings["size"])))
        read = (images_of(source.splits[split], settings["size"])[0][..., 0] * 255).round()
        np.testing.assert_array_equal(read, made)
        image = nib.load(source.splits[split].files[0])
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        # A pixel of the k-th slice sits, in world mm, where the generator sampled the template for it
        # (before the subject's own motion): x = nx/2 + (column - size/2) s, y = ny/2 + (size/2 - row) s.
        size, step, (nx, ny, _) = settings["size"], settings["slice_step"], template.shape
        spacing, first = 0.8 * max(nx, ny) / size, demo._brain_slices_of_template(template)[0]
        for row, column, k in [(0, 0, 0), (5, 40, 1), (47, 13, 2)]:
            marker = np.zeros((size, size))
            marker[row, column] = 1
            voxel = [*np.argwhere(volumes.plane_of(marker, "axial"))[0], k, 1]
            sampled = [nx / 2 + (column - size / 2) * spacing, ny / 2 + (size / 2 - row) * spacing,
                       first + k * step, 1]
            np.testing.assert_allclose(image.affine @ voxel, template_affine @ sampled, atol=1e-4)  # float32 in the header


def test_epochs_of_batches_reshuffles_each_epoch_and_a_resumed_stream_continues_it():
    numbers = tf.data.Dataset.range(10)
    full = [batch.numpy().tolist() for batch in dataset.epochs_of_batches(numbers, 3, seed=5, first_epoch=0,
                                                                          last_epoch=3)]
    assert len(full) == 9  # three full batches of 3 per epoch; the 10th element of each epoch is dropped
    epochs = [sum(full[i:i + 3], []) for i in (0, 3, 6)]
    assert all(len(set(epoch)) == 9 and set(epoch) <= set(range(10)) for epoch in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    resumed = [batch.numpy().tolist() for batch in dataset.epochs_of_batches(numbers, 3, seed=5, first_epoch=1,
                                                                             last_epoch=3)]
    assert resumed == full[3:]
