"""Finding, splitting and decoding the OASIS, ADNI, folder and demo sources."""

import socket
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import dataset
import demo
import volumes
from conftest import TINY, call_main, fake_slice, png_claiming, write_adni


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


def all_files(source):
    return [(file, label) for split in source.splits.values() for file, label in zip(split.files, split.labels)]


def test_symlinks_read_each_real_folder_and_file_once_under_its_first_label(tmp_path):
    data = write_adni(tmp_path / "AD_NC", train_patients=3, test_patients=1, slices=2)
    real = {str(path.resolve()): path.parent.name for path in data.rglob("*.jpeg")}
    (data / "train" / "AD" / "loop").symlink_to("..")  # the loop of the issue: train/AD/loop/NC, loop/AD/loop...
    (data / "train" / "AD" / "nc").symlink_to("../NC")  # another class's folder
    (data / "test" / "NC" / "twice.jpeg").symlink_to(data / "train" / "AD" / "100001_70.jpeg")
    source = dataset.load_source(str(data))
    listed = all_files(source)
    assert sorted(str(Path(file).resolve()) for file, _ in listed) == sorted(real)
    for file, label in listed:
        assert source.class_names[label] == real[str(Path(file).resolve())]


def test_a_file_reached_through_two_links_is_listed_once(tmp_path):
    (tmp_path / "scans").mkdir()
    Image.new("L", (8, 8), 9).save(tmp_path / "scans" / "p1_1.png")
    (tmp_path / "a").symlink_to("scans")
    (tmp_path / "scans" / "p1_2.png").symlink_to("p1_1.png")
    assert dataset.image_files(tmp_path) == [str(tmp_path / "a" / "p1_1.png")]


def test_an_empty_adni_class_folder_is_refused_before_training(tmp_path, capsys):
    data = write_adni(tmp_path / "AD_NC", train_patients=3, test_patients=1, slices=2)
    for file in (data / "train" / "NC").iterdir():
        file.unlink()
    with pytest.raises(dataset.DataError, match=r"train/NC: no training images of class NC \(its patients: 1 in test\); a conditional prior"):
        dataset.load_source(str(data))
    import train

    result = call_main(train.main, ["--data", str(data), "--out", str(tmp_path / "out"), "--logdir",
                                    str(tmp_path / "logs"), *TINY], capsys)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: --data {data / 'train' / 'NC'}: no training")
    assert not (tmp_path / "out").exists()


def test_a_class_whose_patients_all_fall_outside_the_training_split_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    for cls, patients in (("common", 6), ("rare", 1)):
        (tmp_path / cls).mkdir()
        for patient in range(patients):
            fake_slice(rng, 16, 16).save(tmp_path / cls / f"{cls}{patient}_1.png")
    # load_folder splits without the checks of load_source: a seed that leaves the one rare patient out of train.
    seed = next(seed for seed in range(50) if 1 not in dataset.load_folder(tmp_path, seed=seed).splits["train"].labels)
    with pytest.raises(dataset.DataError, match=r"rare: no training images of class rare \(its patients: 1 in "):
        dataset.load_source(str(tmp_path), seed=seed)


def test_an_empty_folder_beside_class_folders_is_named_as_no_class(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for cls in ("healthy", "tumour", "empty"):
        (tmp_path / cls).mkdir()
    for patient in range(4):
        for cls in ("healthy", "tumour"):
            fake_slice(rng, 16, 16).save(tmp_path / cls / f"{cls}{patient}_1.png")
    source = dataset.load_source(str(tmp_path))
    assert source.class_names == ["healthy", "tumour"]
    assert f"Note: {tmp_path / 'empty'}: no images, so no class" in capsys.readouterr().out


def png_with_chunk(path, kind, data):
    """Insert a chunk right after IHDR (whose 25 bytes follow the 8-byte signature) of the PNG at `path`."""
    raw = path.read_bytes()
    chunk = struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(raw[:33] + chunk + raw[33:])


def test_12_bit_data_in_16_bit_pngs_is_scaled_by_its_bit_depth_alike_for_every_slice(tmp_path, capsys):
    ramp = np.arange(4096, dtype=np.uint16).reshape(64, 64)  # 12-bit data: values 0..4095
    Image.fromarray(ramp).save(tmp_path / "p1_1.png")
    Image.fromarray(np.full((64, 64), 1000, np.uint16)).save(tmp_path / "p1_2.png")  # a darker slice
    Image.fromarray(np.full((64, 64), 100, np.uint16)).save(tmp_path / "p2_1.png")
    png_with_chunk(tmp_path / "p2_1.png", b"sBIT", bytes([12]))  # the header says 12 significant bits
    split = dataset.Split([str(tmp_path / f) for f in ("p1_1.png", "p1_2.png")], ["p1", "p1"], [-1, -1])
    images = images_of(split, 64)[0][..., 0]
    assert "use 12 bits (largest value 4095): read as values 0..4095, not 0..65535" in capsys.readouterr().out
    level = 1 / 255 + 1e-6  # the 8-bit cache keeps a value within one level
    np.testing.assert_allclose(images[0], ramp / 4095, atol=level)
    assert len(np.unique(images[0])) == 256  # every grey level of the cache, not 4096 / 257 of them
    np.testing.assert_allclose(images[1], 1000 / 4095, atol=level)  # its own maximum would make it 1.0
    stated = images_of(dataset.Split([str(tmp_path / "p2_1.png")], ["p2"], [-1]), 64)[0]
    np.testing.assert_allclose(stated, 100 / 4095, atol=level)
    assert "as their sBIT chunks state" in capsys.readouterr().out


def test_a_source_scales_its_16_bit_pngs_alike_in_every_split(tmp_path, capsys):
    for patient in range(5):
        value = 4095 if patient == 0 else 300  # the brightest slice is in one split only
        Image.fromarray(np.full((8, 8), value, np.uint16)).save(tmp_path / f"p{patient}_1.png")
    source = dataset.load_source(str(tmp_path))
    assert capsys.readouterr().out.count("use 12 bits") == 1
    for split in source.splits.values():  # per split, one without the bright slice would read 300 of 511
        assert split.window == (0, 4095)
        pixels = images_of(split, 8)[0].ravel()
        assert np.abs(pixels[:, None] - [300 / 4095, 1.0]).min(axis=1).max() <= 1 / 255 + 1e-6
    assert "use 12 bits" not in capsys.readouterr().out


def colourful(size=(16, 16)):
    rgb = np.zeros((*size, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 50, 250
    return rgb


def grey_of(rgb):
    """Pillow's grey (ITU-R 601-2) of an RGB array, in [0, 1]: an independent reference."""
    return np.asarray(Image.fromarray(rgb).convert("L"), np.float32) / 255


@pytest.mark.parametrize("kind", ["RGBA", "LA", "palette", "grey tRNS", "GIF"])
def test_transparent_pixels_decode_as_background(tmp_path, kind):
    rgb, opaque = colourful(), np.zeros((16, 16), bool)
    opaque[:, :8] = True  # the left half opaque, the right half transparent
    alpha = np.where(opaque, 255, 0).astype(np.uint8)
    path = tmp_path / ("p1_1.gif" if kind == "GIF" else "p1_1.png")
    if kind == "RGBA":
        Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    elif kind == "LA":
        Image.fromarray(np.dstack([grey_of(rgb) * 255, alpha]).round().astype(np.uint8), "LA").save(path)
    elif kind == "grey tRNS":
        Image.fromarray(np.where(opaque, 117, 180).astype(np.uint8)).save(path, transparency=180)
    else:
        indices = Image.fromarray(np.where(opaque, 1, 2).astype(np.uint8), "P")
        indices.putpalette([0, 0, 0, 200, 50, 250, 250, 250, 10] + [0] * 759)
        indices.save(path, transparency=2)
    image = images_of(dataset.Split([str(path)], ["p1"], [-1]), 16)[0][0, ..., 0]
    np.testing.assert_array_equal(image[:, 8:], 0.0)
    np.testing.assert_allclose(image[:, :8], grey_of(rgb)[:, :8], atol=1.5 / 255)


def test_a_cmyk_jpeg_decodes_like_its_rgb_original(tmp_path):
    rgb = np.asarray(fake_slice(np.random.default_rng(1), 32, 32).convert("RGB")) * np.array([1.0, 0.8, 0.6])
    rgb = rgb.astype(np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "p1_1.jpeg", quality=98)
    Image.fromarray(rgb).save(tmp_path / "p2_1.jpeg", quality=98)  # an RGB one beside it, in the same split
    split = dataset.Split([str(tmp_path / "p1_1.jpeg"), str(tmp_path / "p2_1.jpeg")], ["p1", "p2"], [-1, -1])
    images, _, skipped = images_of(split, 32)
    assert skipped == 0
    for image in images:  # within JPEG's error, largest at the ellipses' edges
        assert np.abs(image[..., 0] - grey_of(rgb)).mean() < 2 / 255
        np.testing.assert_allclose(image[..., 0], grey_of(rgb), atol=16 / 255)
    np.testing.assert_allclose(dataset.decode_image(str(tmp_path / "p1_1.jpeg"), 32), images[0], atol=1e-6)


def test_an_image_over_the_size_limit_is_named_as_too_large(tmp_path):
    png_claiming(tmp_path / "p1_1.png", 30000, 30000)
    Image.new("L", (8, 8), 50).save(tmp_path / "p2_1.png")
    split = dataset.Split([str(tmp_path / "p1_1.png"), str(tmp_path / "p2_1.png")], ["p1", "p2"], [-1, -1])
    message = f"p1_1.png: 30000x30000 pixels, too large: over the limit of {Image.MAX_IMAGE_PIXELS} pixels"
    with pytest.raises(dataset.UnreadableImages, match=message):
        dataset.decoded_split(split, 8)
    with pytest.raises(dataset.UnreadableImages, match=message):
        dataset.decode_image(str(tmp_path / "p1_1.png"), 8)
    assert dataset.decoded_split(split, 8, skip_bad=True).skipped == 1
