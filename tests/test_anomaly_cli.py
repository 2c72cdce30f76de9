"""predict.py --anomaly: anomaly maps of image files, folders and volumes in their own size, its scores, its bad
inputs, and the export's heal endpoint called without this project giving what predict.py writes."""

import csv
import json
import sys

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import anomaly
import predict
from conftest import call_main, fake_slice, run, write_pir_head


def slice_png(path, width, height, seed):
    """A fake brain slice of width x height saved as an 8-bit PNG at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fake_slice(np.random.default_rng(seed), width, height).save(path)


def read_scores(out):
    """The rows of OUT/scores.csv as dicts."""
    with open(out / "scores.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_images_and_folders_get_maps_in_their_own_size_and_one_scores_file(trained, tmp_path, capsys):
    given = tmp_path / "slices"
    sizes = {"a.png": (40, 36), "sub/b.png": (32, 32)}
    for seed, (name, (width, height)) in enumerate(sizes.items()):
        slice_png(given / name, width, height, seed)
    out = tmp_path / "maps"
    result = call_main(predict.main, ["--model", str(trained[0]), "--anomaly", str(given), "--out", str(out),
                                      "--threshold", "0.3"], capsys)
    assert result.returncode == 0, result.stderr
    written = sorted(str(path.relative_to(out)) for path in out.rglob("*_anomaly.*"))
    assert written == ["a_anomaly.npy", "a_anomaly.png", "sub/b_anomaly.npy", "sub/b_anomaly.png"]
    for name, (width, height) in sizes.items():
        stem = out / name.replace(".png", "_anomaly")
        anomaly = np.load(stem.with_suffix(".npy"))
        assert anomaly.shape == (height, width) and anomaly.dtype == np.float32
        assert np.isfinite(anomaly).all() and anomaly.min() >= 0
        assert Image.open(stem.with_suffix(".png")).format == "PNG"
    rows = read_scores(out)
    classes = json.loads((trained[0] / "config.json").read_text())["class_names"]
    assert classes  # a conditional export: every row names a class
    assert list(rows[0]) == ["file", "class", "score", "codes_replaced"]
    assert sorted(row["file"] for row in rows) == sorted(str(given / name) for name in sizes)
    for row in rows:
        assert row["class"] in classes and float(row["score"]) >= 0 and 0 <= float(row["codes_replaced"]) <= 1
        assert f"{row['file']}: score " in result.stdout and f"class {row['class']}" in result.stdout
    assert "s per image" in result.stdout.strip().splitlines()[-1]


def test_label_chooses_the_class_every_image_is_healed_under(trained, tmp_path, capsys):
    for seed in range(2):
        slice_png(tmp_path / "slices" / f"{seed}.png", 32, 32, seed)
    for label in ("AD", "NC"):
        out = tmp_path / f"maps_{label}"
        result = call_main(predict.main, ["--model", str(trained[0]), "--anomaly", str(tmp_path / "slices"),
                                          "--out", str(out), "--label", label], capsys)
        assert result.returncode == 0, result.stderr
        assert [row["class"] for row in read_scores(out)] == [label, label]


def test_a_volume_gets_a_map_of_its_shape_and_affine(trained, tmp_path, capsys):
    source = write_pir_head(tmp_path / "scan.nii.gz")
    out = tmp_path / "map.nii.gz"
    result = call_main(predict.main, ["--model", str(trained[0]), "--anomaly", str(tmp_path / "scan.nii.gz"),
                                      "--out", str(out), "--threshold", "0.3"], capsys)
    assert result.returncode == 0, result.stderr
    written = nib.load(out)
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert written.get_data_dtype() == np.float32
    data = np.asarray(written.dataobj)
    assert np.isfinite(data).all() and data.min() >= 0 and data.max() > 0
    assert (tmp_path / "map_views.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{tmp_path / 'scan.nii.gz'}: score " in result.stdout and "codes replaced" in result.stdout
    axis = json.loads((trained[0] / "config.json").read_text())["axis"]
    assert f"s per {axis} slice" in result.stdout


# Only TensorFlow, NumPy and Pillow: an image of the model's size healed under the class given (by name), with
# every scan order that the export learnt; and the class under which the image's log_prob is highest. On the
# tiny exports, a threshold of 0.1 leaves several codes to draw a replacement from, so the seed matters.
FRESH = """
import json, sys
import numpy as np, tensorflow as tf
from PIL import Image
model_path, image_path, label, threshold, seed, out = sys.argv[1:]
model = tf.saved_model.load(model_path)
metadata = json.loads(model.metadata().numpy().decode())
image = tf.constant(np.asarray(Image.open(image_path), np.float32)[None, ..., None] / 255)
classes = metadata["class_names"]
likeliest = int(np.argmax([model.log_prob(image, tf.constant([index])).numpy()[0] for index in range(len(classes))]))
labels = tf.constant([classes.index(label)])
maps = model.heal(image, float(threshold), int(seed), metadata["scan_orders"], labels)
np.save(out, maps["anomaly"].numpy()[0, ..., 0])
print(json.dumps({"likeliest": classes[likeliest], "score": float(maps["score"][0])}))
"""


def test_the_exports_heal_from_a_fresh_process_equals_what_predict_writes(trained, tmp_path, capsys):
    # One level only: the CLI does not depend on the levels, and a two-level export's heal in 8 orders (tested
    # in test_export.py) costs ninety seconds of compiling here.
    model = trained[0]
    size = json.loads((model / "config.json").read_text())["image_size"]
    slice_png(tmp_path / "slice.png", size, size, 3)
    out = tmp_path / "maps"
    result = call_main(predict.main, ["--model", str(model), "--anomaly", str(tmp_path / "slice.png"), "--out",
                                      str(out), "--threshold", "0.1", "--seed", "7"], capsys)
    assert result.returncode == 0, result.stderr
    [row] = read_scores(out)
    fresh = run([sys.executable, "-c", FRESH, str(model), str(tmp_path / "slice.png"), row["class"], "0.1", "7",
                 str(tmp_path / "fresh.npy")], cwd=tmp_path, env={"PYTHONPATH": ""})
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    printed = json.loads(fresh.stdout.strip().splitlines()[-1])
    expected = np.load(tmp_path / "fresh.npy")
    assert expected.max() > 0  # codes were replaced: the maps compared are not both empty
    np.testing.assert_allclose(np.load(out / "slice_anomaly.npy"), expected, atol=1e-5)
    assert row["class"] == printed["likeliest"]
    assert float(row["score"]) == pytest.approx(printed["score"], rel=1e-4, abs=1e-7)


def bad_cases(tmp_path):
    """(arguments after --model, what the error line must start with) for inputs --anomaly refuses."""
    slice_png(tmp_path / "images" / "good.png", 32, 32, 0)
    (tmp_path / "notes.txt").write_text("not an image\n")
    write_pir_head(tmp_path / "scan.nii.gz")
    good, out = str(tmp_path / "images" / "good.png"), str(tmp_path / "out")
    return [
        (["--anomaly", str(tmp_path / "missing.png"), "--out", out], f"--anomaly {tmp_path / 'missing.png'}"),
        (["--anomaly", str(tmp_path / "notes.txt"), "--out", out], f"--anomaly {tmp_path / 'notes.txt'}"),
        (["--anomaly", good, "--out", out, "--threshold", "0"], "--threshold 0.0: expected a probability"),
        (["--anomaly", good, "--out", out, "--threshold", "1.5"], "--threshold 1.5: expected a probability"),
        (["--anomaly", good, "--out", out, "--orders", "0"], "--orders 0: expected 1 to 8"),
        (["--anomaly", good, "--out", out, "--orders", "9"], "--orders 9: expected 1 to 8"),
        (["--anomaly", good, "--out", out, "--orders", "2"], "--orders 2: expected 1 to 1, the scan orders"),
        (["--anomaly", good, "--out", out, "--label", "XX"], "--label XX: expected one of AD, NC"),
        (["--anomaly", str(tmp_path / "scan.nii.gz"), "--out", out + ".nii.gz", "--label", "XX"],
         "--label XX: expected one of AD, NC"),
        (["--anomaly", str(tmp_path / "scan.nii.gz"), good, "--out", out + ".nii.gz"], "--anomaly "),
        (["--anomaly", str(tmp_path / "scan.nii.gz")], "--anomaly of a volume needs --out"),
        (["--denoise", good, "--out", out, "--threshold", "0.1"], "--threshold is for --anomaly only, not --denoise"),
    ]


def test_bad_inputs_give_one_error_line_and_write_nothing(trained, tmp_path, capsys):
    for arguments, start in bad_cases(tmp_path):
        result = call_main(predict.main, ["--model", str(trained[0]), *arguments], capsys)
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert result.returncode == 2 and len(errors) == 1, (arguments, result.stderr)
        assert errors[0] == result.stderr.strip().splitlines()[-1]  # argparse's usage line may come before it
        assert errors[0].split("error: ", 1)[1].startswith(start), (arguments, errors[0])
        assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "notes.txt", "scan.nii.gz"]


def test_an_export_without_a_prior_is_named(trained, tmp_path, capsys, monkeypatch):
    opened = predict.open_model(trained[0])
    monkeypatch.setattr(predict, "open_model", lambda path: (opened[0], {**opened[1], "has_prior": False}))
    slice_png(tmp_path / "a.png", 32, 32, 0)
    result = call_main(predict.main, ["--model", str(trained[0]), "--anomaly", str(tmp_path / "a.png"),
                                      "--out", str(tmp_path / "out")], capsys)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"error: --model {trained[0]}: this export has no prior")
    assert not (tmp_path / "out").exists()


class Recorder:
    """A stand-in for the export: log_prob(images, labels) is the first pixel of each image times (label + 1) minus
    the label, and heal records the batches and labels it is given."""

    def __init__(self):
        self.calls = []

    def log_prob(self, images, labels):
        return images[:, 0, 0, 0] * tf.cast(labels + 1, tf.float32) - tf.cast(labels, tf.float32)

    def heal(self, images, threshold, seed, orders, *labels):
        self.calls.append((len(images), [label.numpy().tolist() for label in labels]))
        count = tf.shape(images)[0]
        return {"anomaly": images, "score": tf.fill([count], float(orders)), "codes_replaced": tf.zeros([count])}


def test_the_healer_batches_and_picks_each_inputs_most_likely_class_or_the_volumes():
    images = np.zeros((5, 4, 4, 1), np.float32)
    images[:, 0, 0, 0] = [0.0, 3.0, 0.5, 2.0, 0.9]  # likelier under class 1 (2x - 1 > x) where x > 1
    conditional = anomaly.Healer(Recorder(), ("AD", "NC"), 0.1, 0, 3, batch_size=2)
    labels = conditional.classes(images)
    assert labels.tolist() == [0, 1, 0, 1, 0]
    assert conditional.classes(images, together=True).tolist() == [1] * 5  # 6.4 * 2 - 5 > 6.4
    outputs = conditional.heal(images, labels)
    assert conditional.model.calls == [(2, [[0, 1]]), (2, [[0, 1]]), (1, [[0]])]
    np.testing.assert_array_equal(outputs["anomaly"], images)
    assert outputs["score"].tolist() == [3.0] * 5
    chosen = anomaly.Healer(Recorder(), ("AD", "NC"), 0.1, 0, 1, label=1)
    assert chosen.classes(images).tolist() == [1] * 5 and chosen.class_name(chosen.classes(images), 0) == "NC"
    unconditional = anomaly.Healer(Recorder(), (), 0.1, 0, 1, batch_size=4)
    assert unconditional.classes(images) is None and unconditional.class_name(None, 0) == ""
    unconditional.heal(images)
    assert unconditional.model.calls == [(4, []), (1, [])]
