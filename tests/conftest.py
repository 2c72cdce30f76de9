"""Small fixtures in the real OASIS and ADNI layouts, written by the tests themselves."""

import runtime  # noqa: F401  (first: it sets TensorFlow's environment before TensorFlow loads)

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageDraw

from prior import GatedPixelCNN

ROOT = Path(__file__).resolve().parents[1]
TINY_GRID = 8  # the code grid of `tiny_prior`


def fake_slice(rng, width=256, height=256):
    """A brain-like grayscale slice: a bright ellipse with a darker core on a black background."""
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    rx, ry = rng.integers(width // 4, width // 3), rng.integers(height // 4, height // 3)
    cx, cy = width // 2 + rng.integers(-8, 9), height // 2 + rng.integers(-8, 9)
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=int(rng.integers(150, 230)))
    draw.ellipse([cx - rx // 3, cy - ry // 3, cx + rx // 3, cy + ry // 3], fill=int(rng.integers(30, 90)))
    return image


TINY_TOP_GRID = 2  # the top grid that `tiny_prior(conditioned=True)` is conditioned on


def tiny_prior(num_classes=0, seed=0, attention_layers=0, attention_pool=1, dropout=0.0, conditioned=False,
               scan_orders=1):
    """A small prior with random weights and biases, so that no two codes tie anywhere (as after training);
    `conditioned`: the bottom prior of a hierarchy, given top codes [N, TINY_TOP_GRID, TINY_TOP_GRID] of 5 codes."""
    keras.utils.set_random_seed(seed)
    model = GatedPixelCNN(num_codes=6, grid_size=TINY_GRID, channels=16, num_layers=3, num_classes=num_classes,
                          attention_layers=attention_layers, attention_pool=attention_pool, dropout=dropout,
                          condition_grid=TINY_TOP_GRID if conditioned else 0, condition_codes=5 if conditioned else 0,
                          scan_orders=scan_orders)
    for weight in model.weights:
        weight.assign(tf.random.normal(weight.shape, stddev=0.5))
    return model


@pytest.fixture
def oasis_root(tmp_path):
    """OASIS layout: 3 train, 1 validate, 1 test patient of 4 slices each, plus a seg folder to ignore."""
    rng = np.random.default_rng(0)
    case = 0
    for split, patients in (("train", 3), ("validate", 1), ("test", 1)):
        for folder in (f"keras_png_slices_{split}", f"keras_png_slices_seg_{split}"):
            (tmp_path / folder).mkdir()
        for _ in range(patients):
            case += 1
            for index in range(4):
                name = f"case_{case:03d}_slice_{index}.nii.png"
                fake_slice(rng).save(tmp_path / f"keras_png_slices_{split}" / name)
                Image.new("L", (256, 256), 3).save(tmp_path / f"keras_png_slices_seg_{split}" / name)
    return tmp_path


def write_adni(base, train_patients=5, test_patients=2, slices=3, seed=0):
    """ADNI layout under `base`: {train,test}/{AD,NC}/<patient>_<slice>.jpeg, 256 wide x 240 high."""
    rng = np.random.default_rng(seed)
    patient = 100000
    for split, count in (("train", train_patients), ("test", test_patients)):
        for label in ("AD", "NC"):
            folder = base / split / label
            folder.mkdir(parents=True)
            for _ in range(count):
                patient += 1
                for index in range(slices):
                    fake_slice(rng, 256, 240).save(folder / f"{patient}_{70 + index}.jpeg", quality=95)
    return base


@pytest.fixture
def adni_root(tmp_path):
    """ADNI as distributed: <root>/AD_NC/{train,test}/{AD,NC}, 5+5 train and 2+2 test patients."""
    write_adni(tmp_path / "AD_NC")
    return tmp_path


TINY = ["--image-size", "32", "--epochs", "2", "--batch-size", "8", "--channels", "16", "--code-dim", "8",
        "--num-codes", "16", "--res-blocks", "1", "--prior-epochs", "2", "--prior-channels", "8", "--prior-layers", "3"]


def run(args, cwd=ROOT, env=None):
    """Run a command with a clean environment; returns the CompletedProcess."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def call_main(main, argv, capsys):
    """Run a command-line tool's main(argv) in this process, as `python tool.py ARGV` would but without
    starting Python and TensorFlow again (seconds of CPU each). Returns a CompletedProcess; an uncaught
    exception fails the test, as a traceback would."""
    try:
        main(argv)
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, status, captured.out, captured.err)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """One tiny training run shared by the tests: (output folder, log folder, data root, its stdout)."""
    tmp = tmp_path_factory.mktemp("run")
    data = write_adni(tmp / "AD_NC", train_patients=4, test_patients=2, slices=4)
    out, logdir = tmp / "saved_models" / "vqvae", tmp / "logs"
    result = run([sys.executable, "train.py", "--data", str(data), "--out", str(out), "--logdir", str(logdir), *TINY])
    assert result.returncode == 0, result.stderr[-3000:]
    return out, logdir, data, result.stdout


@pytest.fixture(scope="session")
def trained_hierarchical(tmp_path_factory):
    """`trained`, but a hierarchical VQ-VAE (a 4x4 top grid over the 8x8 grid) and its two-level prior, which
    learns all eight scan orders."""
    tmp = tmp_path_factory.mktemp("hierarchical")
    data = write_adni(tmp / "AD_NC", train_patients=4, test_patients=2, slices=4)
    out, logdir = tmp / "saved_models" / "vqvae", tmp / "logs"
    result = run([sys.executable, "train.py", "--data", str(data), "--out", str(out), "--logdir", str(logdir), *TINY,
                  "--top-downsamplings", "1", "--top-prior-epochs", "2", "--prior-scan-orders", "8"])
    assert result.returncode == 0, result.stderr[-3000:]
    return out, logdir, data, result.stdout


def png_claiming(path, width, height):
    """A small valid PNG whose IHDR is rewritten to claim `width` x `height` (a decompression bomb's header)."""
    Image.new("1", (8, 8)).save(path)
    raw = bytearray(path.read_bytes())
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    path.write_bytes(bytes(raw))


def head(rng, shape=(24, 28, 20)):
    """A synthetic head in RAS: a bright ellipsoid with a darker core, Rician-like noise, empty top slices."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    radius = (x / 0.8) ** 2 + (y / 0.85) ** 2 + ((z + 0.2) / 0.7) ** 2
    volume = np.where(radius < 1, 600.0, 0.0) - np.where(radius < 0.2, 300.0, 0.0)
    return (volume + np.abs(rng.normal(0, 15, shape))).astype(np.float32)


def write_pir_head(path):
    """A synthetic head of 30x34x26 voxels of 1.5x1.5x2 mm, stored in PIR orientation (not RAS), saved at
    `path`; returns the nibabel image."""
    transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                                nib.orientations.axcodes2ornt("PIR"))
    source = nib.Nifti1Image(head(np.random.default_rng(0), (30, 34, 26)), np.diag([1.5, 1.5, 2.0, 1.0]))
    source = source.as_reoriented(transform)
    nib.save(source, path)
    return source
