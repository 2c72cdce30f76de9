"""train.py end to end on a tiny ADNI fixture, the exported SavedModel, and bad input on the command line."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, write_adni

TINY = ["--image-size", "32", "--epochs", "2", "--batch-size", "8", "--channels", "16", "--code-dim", "8",
        "--num-codes", "16", "--res-blocks", "1"]


def run(args, cwd=ROOT, env=None):
    """Run a command with a clean environment; returns the CompletedProcess."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run shared by the tests below: (output folder, log folder, data root)."""
    tmp = tmp_path_factory.mktemp("run")
    data = write_adni(tmp / "AD_NC", train_patients=4, test_patients=2, slices=4)
    out, logdir = tmp / "saved_models" / "vqvae", tmp / "logs"
    result = run([sys.executable, "train.py", "--data", str(data), "--out", str(out), "--logdir", str(logdir), *TINY])
    assert result.returncode == 0, result.stderr[-3000:]
    return out, logdir, data, result.stdout


def scalar_tags(logdir):
    tags = set()
    for path in tf.io.gfile.glob(f"{logdir}/*/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(f"{os.path.basename(os.path.dirname(path))}/{v.tag}" for v in event.summary.value)
    return tags


def test_train_writes_tensorboard_loss_and_ssim_for_train_and_validation(trained):
    _, logdir, _, _ = trained
    tags = scalar_tags(logdir)
    for split in ("train", "validation"):
        assert f"{split}/epoch_loss" in tags and f"{split}/epoch_ssim" in tags
        assert f"{split}/epoch_psnr" in tags and f"{split}/epoch_codes_used" in tags
    assert "validation/inputs_and_reconstructions" in tags


def test_train_writes_config_metrics_and_prints_where(trained):
    out, _, _, stdout = trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 2 * 2 * 4  # the whole test split: 2 AD + 2 NC patients x 4 slices
    assert 0 < metrics["ssim_mean"] <= 1 and metrics["psnr_mean"] > 0 and metrics["mse_mean"] > 0
    assert 1 <= metrics["codes_used"] <= 16 and 1 <= metrics["perplexity"] <= 16
    config = json.loads((out / "config.json").read_text())
    assert config["image_size"] == 32 and config["class_names"] == ["AD", "NC"]
    assert (out / "model.keras").exists()
    assert str(out) in stdout and "metrics.json" in stdout


def test_export_loads_without_the_project_and_matches_the_keras_model(trained, tmp_path):
    out, _, _, _ = trained
    images = np.random.default_rng(0).random((3, 32, 32, 1)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(f"""
        import sys, numpy as np, tensorflow as tf
        assert not any(p.endswith("main") or "modules" in p for p in sys.path if p)
        model = tf.saved_model.load({str(out)!r})
        x = tf.constant(np.load("images.npy"))
        codes = model.encode(x)
        assert codes.dtype == tf.int32 and codes.shape == (3, 8, 8), codes.shape
        np.save("exported.npy", model.reconstruct(x).numpy())
        np.save("roundtrip.npy", model.decode(codes).numpy())
        print(model.metadata().numpy().decode())
    """)
    result = run([sys.executable, "-c", script], cwd=tmp_path, env={"PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["image_size"] == 32
    exported, roundtrip = np.load(tmp_path / "exported.npy"), np.load(tmp_path / "roundtrip.npy")
    import keras
    import modules  # noqa: F401  (registers the custom classes for loading)

    model = keras.models.load_model(out / "model.keras")
    np.testing.assert_allclose(exported, model.reconstruct(images).numpy(), atol=1e-5)
    np.testing.assert_allclose(roundtrip, exported, atol=1e-6)
    assert exported.min() >= 0 and exported.max() <= 1


@pytest.mark.parametrize("args, message", [
    (["--data", "/no/such/folder"], "/no/such/folder"),
    (["--image-size", "30"], "--image-size"),
    (["--dataset", "oasis"], "--dataset oasis needs --data"),
])
def test_bad_input_gives_one_line_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    result = run([sys.executable, "train.py", *args, "--out", str(out), "--logdir", str(tmp_path / "logs")])
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]
    assert not out.exists() and not (tmp_path / "logs").exists()
