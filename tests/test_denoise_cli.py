"""predict.py --denoise: image files, folders and volumes in their own size, its bad inputs, and the export's
denoise endpoint called without this project giving what predict.py writes."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import denoiser
import denoising
import noise
import predict
from conftest import call_main, fake_slice, head, write_pir_head


def noisy_png(path, width, height, sigma, seed):
    """A fake slice of width x height with Rician noise of `sigma` (a fraction of 255), saved as an 8-bit PNG;
    returns its pixels in [0, 1] [H, W]."""
    rng = np.random.default_rng(seed)
    clean = np.asarray(fake_slice(rng, width, height), np.float64) / 255
    noisy = np.abs(clean + sigma * rng.normal(size=clean.shape) + 1j * sigma * rng.normal(size=clean.shape))
    pixels = np.round(np.clip(noisy, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels / 255


def png(path):
    """An 8-bit grayscale PNG's pixels in [0, 1], [H, W]."""
    return np.asarray(Image.open(path), np.float64) / 255


@pytest.mark.parametrize("side, size", [(64, 32), (256, 128), (240, 128), (100, 32), (20, 32), (32, 32)])
def test_noise_scale_is_what_area_resizing_leaves_of_white_noise(side, size):
    white = tf.random.stateless_normal([8, side, side, 1], seed=[side, size])
    resized = tf.image.resize(white, (size, size), method="area").numpy()
    assert denoising.noise_scale(side, size) == pytest.approx(float(np.sqrt(np.mean(resized ** 2))), rel=0.03)


def test_the_exports_correction_of_the_model_inputs_is_the_full_sigmas_correction():
    images = np.random.default_rng(0).random((3, 16, 16, 1)).astype(np.float32)
    sigma, model_sigma = np.array([0.1, 0.05, 0.0]), np.array([0.05, 0.05, 0.0])
    inputs = denoising.model_inputs(images, sigma, model_sigma)
    expected = np.sqrt(np.maximum(images ** 2 - 2 * sigma[:, None, None, None] ** 2, 0))
    np.testing.assert_allclose(noise.rician_bias_correct(inputs, model_sigma.astype(np.float32)).numpy(), expected,
                               atol=2e-6)
    np.testing.assert_array_equal(inputs[2], images[2])


def test_images_and_folders_keep_their_size_and_layout(trained, tmp_path, capsys):
    given = tmp_path / "noisy"
    (given / "sub").mkdir(parents=True)
    sizes = {"a.png": (64, 64), "sub/b.png": (70, 52), "sub/c.png": (32, 32)}
    for name, (width, height) in sizes.items():
        noisy_png(given / name, width, height, 0.05, len(name))
    single = tmp_path / "single.png"
    noisy_png(single, 50, 90, 0.05, 9)
    out = tmp_path / "clean"
    result = call_main(predict.main, ["--model", str(trained[0]), "--denoise", str(given), str(single),
                                      "--out", str(out), "--batch-size", "2"], capsys)
    assert result.returncode == 0, result.stderr
    written = sorted(str(path.relative_to(out)) for path in out.rglob("*.png"))
    assert written == sorted([*sizes, "single.png"])
    for name, (width, height) in {**sizes, "single.png": (50, 90)}.items():
        assert Image.open(out / name).size == (width, height)
    lines = result.stdout.strip().splitlines()
    assert sum("noise sigma" in line and "(estimated)" in line for line in lines) == 4
    assert str(single) in result.stdout and "s per image" in lines[-1]


def test_a_volume_keeps_its_shape_and_affine(trained, tmp_path, capsys):
    source = write_pir_head(tmp_path / "scan.nii.gz")
    out = tmp_path / "clean.nii.gz"
    result = call_main(predict.main, ["--model", str(trained[0]), "--denoise", str(tmp_path / "scan.nii.gz"),
                                      "--out", str(out)], capsys)
    assert result.returncode == 0, result.stderr
    assert "noise sigma" in result.stdout and "(estimated)" in result.stdout and str(out) in result.stdout
    written = nib.load(out)
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert nib.aff2axcodes(written.affine) == ("P", "I", "R")
    data, original = np.asarray(written.dataobj), np.asarray(source.dataobj)
    assert np.isfinite(data).all() and original.min() - 1 <= data.min() and data.max() <= original.max() + 1
    assert (tmp_path / "clean_views.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def bad_cases(tmp_path):
    """(arguments after --model, what the one line must start with) for inputs --denoise refuses."""
    (tmp_path / "images").mkdir()
    noisy_png(tmp_path / "images" / "good.png", 40, 40, 0.05, 0)
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b" + bytes(100))
    nib.save(nib.Nifti1Image(head(np.random.default_rng(0)), np.eye(4)), tmp_path / "scan.nii")
    out = str(tmp_path / "out")
    return [
        (["--denoise", str(tmp_path / "images"), "--out", out], f"--denoise {tmp_path / 'images' / 'broken.png'}"),
        (["--denoise", str(tmp_path / "broken.nii.gz"), "--out", out + ".nii.gz"],
         f"--denoise {tmp_path / 'broken.nii.gz'}: not a readable"),
        (["--denoise", str(tmp_path / "missing.png"), "--out", out], f"--denoise {tmp_path / 'missing.png'}"),
        (["--denoise", str(tmp_path / "scan.nii"), "--out", out], f"--out {out}: expected a .nii"),
        (["--denoise", str(tmp_path / "images" / "good.png"), "--out", out + ".nii.gz"], f"--out {out}.nii.gz"),
        (["--denoise", str(tmp_path / "scan.nii"), str(tmp_path / "images"), "--out", out + ".nii"], "--denoise "),
    ]


def test_bad_inputs_give_one_line_and_write_nothing(trained, tmp_path, capsys):
    for arguments, start in bad_cases(tmp_path):
        result = call_main(predict.main, ["--model", str(trained[0]), *arguments], capsys)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (arguments, result.stderr)
        assert lines[0].startswith(f"error: {start}"), (arguments, lines[0])
        assert sorted(path.name for path in tmp_path.iterdir()) == ["broken.nii.gz", "images", "scan.nii"]


@pytest.mark.parametrize("value", ["-0.1", "nan", "inf"])
def test_the_noise_level_must_be_finite_and_not_negative(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        predict.parse_args(["--denoise", "x.png", f"--noise-sigma={value}"])
    assert exit_.value.code == 2 and "--noise-sigma" in capsys.readouterr().err


def test_the_noise_level_is_for_denoise_only(capsys):
    with pytest.raises(SystemExit):
        predict.parse_args(["--compress", "x.png", "--noise-sigma", "0.1"])
    assert "--noise-sigma is for --denoise only" in capsys.readouterr().err


def test_an_export_without_a_denoiser_is_named(trained, tmp_path, capsys, monkeypatch):
    opened = predict.open_model(trained[0])
    monkeypatch.setattr(predict, "open_model", lambda path: (opened[0], {**opened[1], "has_denoiser": False}))
    noisy_png(tmp_path / "a.png", 32, 32, 0.05, 0)
    result = call_main(predict.main, ["--model", str(trained[0]), "--denoise", str(tmp_path / "a.png"),
                                      "--out", str(tmp_path / "out")], capsys)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "retrain it with this version of train.py" in result.stderr and not (tmp_path / "out").exists()


# Only TensorFlow, NumPy and Pillow: the model's size S, an S x S image denoised with its noise estimated by the
# export, and a 2S x 3S/2 image with sigma given: padded to 2S, area-resized to S (noise std halved), its
# bias beyond that of sigma / 2 removed, denoised with sigma / 2, resized back (bilinear) and cropped.
FRESH = """
import json, sys
import numpy as np, tensorflow as tf
from PIL import Image
model_path, small, large, sigma = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
model = tf.saved_model.load(model_path)
size = json.loads(model.metadata().numpy().decode())["image_size"]
image = np.asarray(Image.open(small), np.float32)[None, ..., None] / 255
first = model.denoise(tf.constant(image), tf.constant([-1.0])).numpy()[0, ..., 0]
pixels = np.asarray(Image.open(large), np.float32) / 255
rows, columns = pixels.shape
square = np.zeros((2 * size, 2 * size), np.float32)
top, left = (2 * size - rows) // 2, (2 * size - columns) // 2
square[top:top + rows, left:left + columns] = pixels
resized = np.clip(tf.image.resize(square[None, ..., None], (size, size), method="area").numpy(), 0, 1)
inputs = np.sqrt(np.maximum(resized ** 2 - 2 * (sigma ** 2 - (sigma / 2) ** 2), 0)).astype(np.float32)
output = model.denoise(tf.constant(inputs), tf.constant([sigma / 2], tf.float32)).numpy()
back = tf.image.resize(output, (2 * size, 2 * size), method="bilinear").numpy()[0, ..., 0]
second = np.clip(back[top:top + rows, left:left + columns], 0, 1)
print(json.dumps([first.tolist(), second.tolist()]))
"""


def test_the_exports_denoise_from_a_fresh_process_equals_what_predict_writes(trained, tmp_path, capsys):
    size = json.loads((trained[0] / "config.json").read_text())["image_size"]
    noisy_png(tmp_path / "small.png", size, size, 0.08, 1)
    noisy_png(tmp_path / "large.png", 2 * size, 3 * size // 2, 0.08, 2)
    for name, extra in (("small", []), ("large", ["--noise-sigma", "0.08"])):
        result = call_main(predict.main, ["--model", str(trained[0]), "--denoise", str(tmp_path / f"{name}.png"),
                                          "--out", str(tmp_path / f"out_{name}"), *extra], capsys)
        assert result.returncode == 0, result.stderr
    fresh = subprocess.run([sys.executable, "-c", FRESH, str(trained[0]), str(tmp_path / "small.png"),
                            str(tmp_path / "large.png"), "0.08"], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    first, second = (np.array(values) for values in json.loads(fresh.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(png(tmp_path / "out_small" / "small.png"), first, atol=0.5 / 255 + 1e-4)
    np.testing.assert_allclose(png(tmp_path / "out_large" / "large.png"), second, atol=0.5 / 255 + 1e-4)
    assert np.abs(first - png(tmp_path / "small.png")).max() > 2 / 255  # the image did change


def test_no_noise_on_a_clean_image_keeps_the_head(trained, tmp_path, capsys):
    """Without noise the output is the input wherever the denoiser sees head (its reconstruction's head mask),
    and between the input and the reconstruction elsewhere: on the tiny model, whose reconstruction misses
    much of the head, it stays far closer to the input than the reconstruction does."""
    model = tf.saved_model.load(str(trained[0]))
    size = json.loads(model.metadata().numpy().decode())["image_size"]
    fake_slice(np.random.default_rng(3), size, size).save(tmp_path / "clean.png")
    result = call_main(predict.main, ["--model", str(trained[0]), "--denoise", str(tmp_path / "clean.png"),
                                      "--noise-sigma", "0", "--out", str(tmp_path / "out")], capsys)
    assert result.returncode == 0, result.stderr
    assert "noise sigma 0.0000 (given)" in result.stdout
    clean = png(tmp_path / "clean.png")[None, ..., None].astype(np.float32)
    output = png(tmp_path / "out" / "clean.png")[None, ..., None]
    reconstruction = model.reconstruct(tf.constant(clean)).numpy()
    tolerance = 0.5 / 255 + 1e-4
    assert (output >= np.minimum(clean, reconstruction) - tolerance).all()
    assert (output <= np.maximum(clean, reconstruction) + tolerance).all()
    head = clean > 0.1
    assert np.abs(output - clean)[head].mean() < 0.5 * np.abs(reconstruction - clean)[head].mean()
    seen = denoiser.head_mask(reconstruction).numpy()[..., None] == 1.0
    assert np.abs(output - clean)[seen].max(initial=0.0) <= tolerance
