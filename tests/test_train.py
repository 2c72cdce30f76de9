"""train.py end to end on a tiny ADNI fixture, the exported SavedModel, and bad input on the command line."""

import csv
import json
import os
import shutil
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from skimage.metrics import structural_similarity

import dataset
import predict
import train
from figures import read_scalars
from texture import fit_texture
from conftest import TINY, call_main, fake_slice, run


def summaries(logdir):
    """Every value written under a run's logdir, read with TensorFlow's own event reader: {"stage/split/tag":
    {step: value or None (not a scalar)}}."""
    written = {}
    for path in tf.io.gfile.glob(f"{logdir}/*/*/events.out.tfevents.*"):
        where = os.path.relpath(os.path.dirname(path), logdir)
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor) if value.HasField("tensor") else np.array(value.simple_value)
                written.setdefault(f"{where}/{value.tag}", {})[event.step] = float(array) if array.ndim == 0 else None
    return written


def test_train_writes_tensorboard_loss_ssim_and_prior_bits_for_train_and_validation(trained):
    _, logdir, _, _ = trained
    written = summaries(logdir)
    for split in ("train", "validation"):
        for metric in ("loss", "ssim", "psnr", "codes_used", "perplexity"):
            assert f"vqvae/{split}/epoch_{metric}" in written
        for tag in ("vqvae/{}/epoch_loss", "vqvae/{}/epoch_ssim", "prior/{}/epoch_loss", "prior/{}/epoch_bits_per_code"):
            points = written[tag.format(split)]
            assert sorted(points) == [0, 1] and all(np.isfinite(list(points.values())))  # two epochs, as trained
    assert 0 < written["vqvae/validation/epoch_ssim"][1] <= 1
    assert "vqvae/validation/inputs_and_reconstructions" in written and "prior/validation/samples" in written
    # The training curves read the same scalars.
    for run_name, tags in read_scalars(logdir).items():
        for tag, points in tags.items():
            assert dict(points) == pytest.approx(written[f"{run_name}/{tag}"])


def test_train_writes_config_metrics_and_prints_where(trained):
    """metrics.json holds what the export does on the test split, measured here with numpy and scikit-image."""
    out, _, data, stdout = trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 2 * 2 * 4  # the whole test split: 2 AD + 2 NC patients x 4 slices
    splits = dataset.load_source(str(data)).splits
    test = np.stack([image for image, _ in dataset.decoded_split(splits["test"], 32).images.as_numpy_iterator()])
    export = tf.saved_model.load(str(out))
    reconstructions, codes = export.reconstruct(test).numpy(), export.encode(test).numpy()
    mse = ((test - reconstructions) ** 2).mean(axis=(1, 2, 3))
    ssim = [structural_similarity(a[..., 0], b[..., 0], data_range=1.0, gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False) for a, b in zip(test, reconstructions)]
    shares = np.bincount(codes.ravel(), minlength=16) / codes.size
    assert metrics["mse_mean"] == pytest.approx(mse.mean(), rel=1e-4)
    assert metrics["psnr_mean"] == pytest.approx(np.mean(10 * np.log10(1 / mse)), rel=1e-4)
    assert metrics["ssim_mean"] == pytest.approx(np.mean(ssim), abs=1e-3)
    assert metrics["codes_used"] == len(np.unique(codes))
    assert metrics["perplexity"] == pytest.approx(np.exp(-np.sum(shares[shares > 0] * np.log(shares[shares > 0]))),
                                                  rel=1e-4)
    validate = dataset.decoded_split(splits["validate"], 32).images
    images, labels = (np.stack(column) for column in zip(*validate.as_numpy_iterator()))
    bits = -export.log_prob(images, labels).numpy() / (codes[0].size * np.log(2))
    assert metrics["prior_validation_bits_per_code"] == pytest.approx(bits.mean(), rel=1e-3)
    assert metrics["prior_uniform_bits_per_code"] == 4
    assert metrics["prior_conditional"] and metrics["prior_class_counts"] == [12, 12]
    config = json.loads((out / "config.json").read_text())
    assert config["image_size"] == 32 and config["class_names"] == ["AD", "NC"]
    assert (out / "model.keras").exists() and (out / "prior.keras").exists()
    assert str(out) in stdout and "metrics.json" in stdout


def test_export_loads_without_the_project_and_matches_the_keras_models(trained, tmp_path):
    out, _, data, _ = trained
    images = np.random.default_rng(0).random((3, 32, 32, 1)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(f"""
        import importlib.util, json, sys, numpy as np, tensorflow as tf
        for name in ("modules", "prior", "export"):
            assert importlib.util.find_spec(name) is None, name  # this project is not importable here
        model = tf.saved_model.load({str(out)!r})
        x = tf.constant(np.load("images.npy"))
        codes = model.encode(x)
        assert codes.dtype == tf.int32 and codes.shape == (3, 8, 8), codes.shape
        labels = tf.constant([0, 1, 1])
        np.save("exported.npy", model.reconstruct(x).numpy())
        np.save("roundtrip.npy", model.decode(codes).numpy())
        np.save("logits.npy", model.prior_logits(codes, labels).numpy())
        np.save("log_prob.npy", model.log_prob(x, labels).numpy())
        assert "tensorflow_probability" not in sys.modules  # the graph needs TensorFlow alone
        samples = model.sample(4, 1.0, 5, 0, 1.0, False)  # n, temperature, seed, top_k, top_p, keep_background
        assert samples.shape == (4, 32, 32, 1) and samples.dtype == tf.float32
        again = model.sample(*[tf.constant(value) for value in (4, 1.0, 5, 0, 1.0, False)])
        np.testing.assert_array_equal(samples.numpy(), again.numpy())  # the same seed draws the same images
        for shorter in ((4, 1.0, 5), (4, 1.0, 5, 0, 1.0)):  # one signature: every argument is required
            try:
                model.sample(*shorter)
            except (TypeError, ValueError):
                pass
            else:
                raise AssertionError(f"sample{{shorter}} was accepted")
        assert model.sample_class(2, 1, 0.5, 0, 0, 1.0, False).shape == (2, 32, 32, 1)
        greedy = [model.sample_class(2, 1, 1.0, seed, 1, 1.0, False).numpy() for seed in (0, 1)]  # top_k 1
        np.testing.assert_array_equal(greedy[0], greedy[1])
        kept = model.sample(4, 1.0, 5, 0, 1.0, True)  # keep_background: nothing to reshape at the defaults
        np.testing.assert_array_equal(kept.numpy(), samples.numpy())
        assert model.sample_class(2, 1, 0.5, 0, 0, 1.0, True).shape == (2, 32, 32, 1)
        state, previous, stepped = model.prior_start(3, labels), tf.zeros([3], tf.int32), []
        for position in range(64):  # the prior one position at a time, fed the images' own codes
            state = model.prior_step(state, position, previous)
            stepped.append(state.pop("logits").numpy())
            previous = tf.reshape(codes, (3, 64))[:, position]
        np.save("stepped.npy", np.stack(stepped, axis=1).reshape(3, 8, 8, -1))
        np.save("textured.npy", np.stack([model.texture(x, seed).numpy() for seed in (0, 0, 1)]))
        print(model.metadata().numpy().decode())
    """)
    result = run([sys.executable, "-c", script], cwd=tmp_path, env={"PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    metadata = json.loads(result.stdout.strip().splitlines()[-1])
    assert metadata["image_size"] == 32 and metadata["class_names"] == ["AD", "NC"] and metadata["has_prior"]
    assert metadata["has_texture"] and metadata["class_counts"] == [12, 12]
    # texture: a seeded draw added inside the head only, clipped to [0, 1] (what it draws: test_texture.py)
    textured = np.load(tmp_path / "textured.npy")
    np.testing.assert_array_equal(textured[0], textured[1])
    background = images <= 0.1
    np.testing.assert_array_equal(textured[0][background], images[background])
    assert textured.min() >= 0 and textured.max() <= 1

    import keras  # the custom classes are registered: train, imported above, imports modules and prior

    vqvae = keras.models.load_model(out / "model.keras")
    prior = keras.models.load_model(out / "prior.keras")
    exported = np.load(tmp_path / "exported.npy")
    np.testing.assert_allclose(exported, vqvae.reconstruct(images).numpy(), atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "roundtrip.npy"), exported, atol=1e-6)
    assert exported.min() >= 0 and exported.max() <= 1
    codes = vqvae.encode(images)
    logits = prior((codes, tf.constant([0, 1, 1]))).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), logits, atol=1e-4)
    np.testing.assert_allclose(np.load(tmp_path / "stepped.npy"), logits, atol=1e-4)
    # log_prob is the sum over positions of the log-softmax at each image's own codes.
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = np.take_along_axis(log_softmax, codes.numpy()[..., None], -1).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(np.load(tmp_path / "log_prob.npy"), expected, rtol=1e-4)
    # The texture is fitted to the VQ-VAE's residuals on the training split.
    training = dataset.decoded_split(dataset.load_source(str(data)).splits["train"], 32).images
    texture = fit_texture(vqvae, train.texture_slices(training))
    for seed in (0, 1):
        np.testing.assert_allclose(textured[seed * 2], texture(images, seed=seed).numpy(), atol=1e-6)


def test_predict_generates_16_images_and_a_grid(trained, tmp_path):
    out, _, _, _ = trained
    result = run([sys.executable, "predict.py", "--n", "16", "--model", str(out), "--out", str(tmp_path / "p"),
                  "--label", "AD", "--temperature", "0.8"])
    assert result.returncode == 0, result.stderr[-3000:]
    written = sorted((tmp_path / "p").glob("sample_AD_*.png"))
    assert len(written) == 17 and (tmp_path / "p" / "sample_AD_grid.png") in written
    assert str(tmp_path / "p" / "sample_AD_grid.png") in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--label", "MCI"], "--label MCI: expected one of AD, NC"),
    (["--n", "0"], "--n 0"),
    (["--model", "/no/such/model"], "--model /no/such/model"),
    (["--evaluate", "/no/such/data"], "--evaluate /no/such/data: no such file"),
    (["--top-k", "17"], "--top-k 17: expected 0 (keep all codes) up to 16, the model's number of codes"),
])
def test_predict_bad_input_gives_one_line(trained, tmp_path, capsys, args, message):
    out, _, _, _ = trained
    result = call_main(predict.main, ["--model", str(out), "--out", str(tmp_path / "p"), *args], capsys)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("args, message", [
    (["--evaluate", "d", "--reconstruct", "d"], "argument --reconstruct: not allowed with argument --evaluate"),
    (["--curves", "logs", "--compress", "x.png"], "argument --compress: not allowed with argument --curves"),
    (["--evaluate", "d", "--n", "4"], "--n is for generating and --reconstruct only, not --evaluate"),
    (["--compress", "x.png", "--label", "AD"], "--label is for generating and --anomaly only, not --compress"),
    (["--reconstruct", "d", "--no-texture"], "--texture is for generating only, not --reconstruct"),
    (["--split", "train"], "--split is for --evaluate only, not generating"),
    (["--decompress", "x.vqz", "--batch-size", "8"], "--batch-size is for generating, --compress, "
                                                       "--reconstruct-volume, --denoise and --anomaly only, not "
                                                       "--decompress"),
    (["--reconstruct-volume", "scan.nii"], "--reconstruct-volume needs --out"),
])
def test_predict_runs_one_mode_and_refuses_flags_that_mode_does_not_use(tmp_path, capsys, args, message):
    result = call_main(predict.main, [*args, "--model", str(tmp_path / "none")], capsys)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == 2 and errors == [result.stderr.strip().splitlines()[-1]]
    assert message in errors[0]


def write_slices(folder, patients=20, slices=2):
    """A plain folder of slices named <patient>_<slice>.png: a folder source, split by a seeded shuffle."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for patient in range(patients):
        for index in range(slices):
            fake_slice(rng, 64, 64).save(folder / f"patient{patient:02d}_{index}.png")
    return folder


def test_evaluate_splits_the_data_as_the_model_was_trained_whatever_the_seed_flag(trained, tmp_path, capsys):
    folder = write_slices(tmp_path / "slices")
    model = tmp_path / "model"
    shutil.copytree(trained[0], model)
    config = json.loads((model / "config.json").read_text())
    config.update(data=str(folder), data_root=str(folder), dataset="folder", seed=0)
    (model / "config.json").write_text(json.dumps(config))
    trained_on, other = (dataset.load_folder(folder, seed=seed).splits for seed in (0, 1))
    train_patients, test_patients = set(trained_on["train"].patients), set(trained_on["test"].patients)
    assert set(other["test"].patients) & train_patients  # --seed 1's split would score training patients
    result = call_main(predict.main, ["--model", str(model), "--evaluate", str(folder), "--seed", "1", "--out",
                                      str(tmp_path / "e")], capsys)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "e" / "evaluation_test.csv", newline="") as handle:
        scored = {row["patient"] for row in csv.DictReader(handle)}
    assert scored == test_patients and not scored & train_patients
    (model / "config.json").unlink()
    result = call_main(predict.main, ["--model", str(model), "--reconstruct", str(folder), "--out",
                                      str(tmp_path / "r")], capsys)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and str(model / "config.json") in lines[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, message", [
    (["--data", "/no/such/folder"], "/no/such/folder"),
    (["--image-size", "30"], "--image-size"),
    (["--ssim-weight", "-1"], "--ssim-weight -1.0: expected a weight >= 0"),
    (["--prior-batch-size", "0"], "--prior-batch-size 0: expected a positive integer"),
    (["--prior-attention-pool", "0"], "--prior-attention-pool 0: expected a positive integer"),
    (["--prior-dropout", "1"], "--prior-dropout 1.0: expected a fraction in [0, 1)"),
    (["--dataset", "oasis"], "--dataset oasis needs --data"),
    (["--stage", "prior"], "--stage prior: no trained VQ-VAE"),
])
def test_bad_input_gives_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    result = call_main(train.main, [*args, "--out", str(out), "--logdir", str(tmp_path / "logs")], capsys)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]
    assert not out.exists() and not (tmp_path / "logs").exists()


def test_predict_evaluate_writes_metrics_csv_and_figures(trained, tmp_path):
    out, _, data, _ = trained
    metrics_path = tmp_path / "m" / "metrics.json"
    result = run([sys.executable, "predict.py", "--model", str(out), "--evaluate", str(data), "--out",
                  str(tmp_path / "e"), "--metrics-out", str(metrics_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(metrics_path.read_text())
    for key in ("n_images", "ssim_mean", "ssim_std", "psnr_mean", "mse_mean", "codes_used", "perplexity",
                "prior_bits_per_code"):
        assert key in metrics
    assert metrics["n_images"] == 16 and metrics["ms_ssim_mean"] is None  # 32x32 is too small for MS-SSIM
    # The same model and split as train.py's own test evaluation.
    trained_metrics = json.loads((out / "metrics.json").read_text())
    assert abs(metrics["ssim_mean"] - trained_metrics["ssim_mean"]) < 1e-4
    rows = (tmp_path / "e" / "evaluation_test.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 16 and rows[0].startswith("file,slice,patient,label,ssim,psnr,mse")
    for figure in ("evaluation_test_examples.png", "evaluation_test_codebook_usage.png"):
        assert (tmp_path / "e" / figure).stat().st_size > 1000


def test_training_curves_are_plotted_by_train_and_by_predict(trained, tmp_path):
    out, logdir, _, _ = trained
    assert (out / "training_curves.png").stat().st_size > 1000
    result = run([sys.executable, "predict.py", "--curves", str(logdir), "--out", str(tmp_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "training_curves.png").stat().st_size > 1000


def test_predict_rejects_a_foreign_savedmodel(tmp_path, capsys):
    module = tf.Module()
    module.double = tf.function(lambda x: 2 * x, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "foreign"))
    result = call_main(predict.main, ["--model", str(tmp_path / "foreign"), "--out", str(tmp_path / "p")], capsys)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "without this project's encode/decode/reconstruct" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "p").exists()


def test_stage_prior_trains_an_unconditional_prior_that_rejects_labels(trained, tmp_path):
    out, _, data, _ = trained
    copy = tmp_path / "vqvae"
    shutil.copytree(out, copy)
    result = run([sys.executable, "train.py", "--data", str(data), "--out", str(copy), "--logdir",
                  str(tmp_path / "logs"), *TINY, "--stage", "prior", "--unconditional"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert not json.loads((copy / "metrics.json").read_text())["prior_conditional"]
    labelled = run([sys.executable, "predict.py", "--model", str(copy), "--out", str(tmp_path / "p"),
                    "--label", "AD"])
    assert labelled.returncode != 0 and "Traceback" not in labelled.stderr
    assert "--label AD: the model at" in labelled.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "p").exists()
    unlabelled = run([sys.executable, "predict.py", "--model", str(copy), "--out", str(tmp_path / "p"), "--n", "2"])
    assert unlabelled.returncode == 0 and len(list((tmp_path / "p").glob("sample_*.png"))) == 3


def test_best_checkpoints_are_chosen_by_reconstruction_loss_for_the_vqvae_and_nll_for_the_prior(trained):
    out, _, _, _ = trained
    for stage, monitor in (("vqvae", "val_reconstruction_loss"), ("prior", "val_loss")):
        state = json.loads((out.parent / f"{out.name}_checkpoints" / stage / "state.json").read_text())
        assert state["monitor"] == monitor and state["best"].startswith("epoch-")
