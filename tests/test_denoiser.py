"""Noise training of the VQ-VAE and the Wiener-filter denoiser, against computations done here by hand (numpy)
and against the exported endpoint called from a process without this project."""

import runtime  # noqa: F401  (first: it sets TensorFlow's environment before TensorFlow loads)

import json
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import noise
from conftest import fake_slice, run
from denoiser import Denoiser, fit_denoiser, head_mask, residual_spectrum
from export import export_savedmodel
from modules import VQVAETrainer

SIDE = 32
TINY_MODEL = dict(num_codes=16, code_dim=8, channels=16, res_blocks=1, seed=3)


def slices(count, seed=0):
    """`count` brain-like slices [count, SIDE, SIDE, 1] in [0, 1] on a black background."""
    rng = np.random.default_rng(seed)
    return np.stack([np.asarray(fake_slice(rng, SIDE, SIDE), np.float32)[..., None] / 255 for _ in range(count)])


def twin_trainers(train_noise):
    """Two VQ-VAEs with the same weights: one trained with `train_noise`, one without."""
    keras.utils.set_random_seed(0)
    noisy = VQVAETrainer(train_noise=train_noise, **TINY_MODEL)
    clean = VQVAETrainer(**TINY_MODEL)
    clean.set_weights(noisy.get_weights())
    for model in (noisy, clean):
        model.compile(optimizer=keras.optimizers.SGD(0.1))
    return noisy, clean


def test_the_encoder_sees_noise_and_the_loss_the_clean_image():
    images = tf.constant(slices(8))
    trained, reference = twin_trainers(train_noise=0.3)
    inputs = trained.noisy_inputs(images, step=0)
    # By hand, on the twin: the encoder fed the noisy copy, the losses against the clean images.
    _, _, expected = reference._forward(images, training=True, inputs=inputs)
    logs = trained.train_step(images)
    for name in ("mse", "ssim", "vq_loss", "loss"):
        np.testing.assert_allclose(logs[name], expected[name], rtol=1e-5, err_msg=name)
    _, _, clean_input = VQVAETrainer(**TINY_MODEL)._forward(images, training=False)
    assert abs(float(logs["mse"]) - float(clean_input["mse"])) > 1e-6
    # The draws: seeded by the step, a quarter of the images clean, the others with different sigmas.
    np.testing.assert_array_equal(trained.noisy_inputs(images, 0), inputs)
    assert not np.array_equal(trained.noisy_inputs(images, 1), inputs)
    many = tf.constant(np.repeat(slices(1), 400, axis=0))
    changed = np.abs(trained.noisy_inputs(many, 5).numpy() - many.numpy()).max(axis=(1, 2, 3)) > 0
    assert 0.15 < 1 - changed.mean() < 0.35
    sigmas = noise.estimate_sigma(trained.noisy_inputs(many, 5)).numpy()[changed]
    assert sigmas.max() < 0.3 * 1.2 and np.quantile(sigmas, 0.9) > 0.2 and np.quantile(sigmas, 0.1) < 0.06


def test_validation_sees_clean_images_and_no_noise_means_no_change():
    images = tf.constant(slices(4))
    trained, reference = twin_trainers(train_noise=0.3)
    for name, value in trained.test_step(images).items():
        np.testing.assert_allclose(value, reference.test_step(images)[name], rtol=1e-6, err_msg=name)
    np.testing.assert_array_equal(reference.noisy_inputs(images, 0), images)


def test_config_round_trips():
    model = VQVAETrainer(train_noise=0.15, **TINY_MODEL)
    assert VQVAETrainer.from_config(model.get_config()).get_config() == model.get_config()
    assert model.get_config()["train_noise"] == 0.15
    layer = Denoiser(16, levels=(0.0, 0.1), name="denoiser")
    assert Denoiser.from_config(layer.get_config()).get_config() == layer.get_config()
    with pytest.raises(ValueError, match="levels"):
        Denoiser(16, levels=(0.1, 0.0))


def fitted_denoiser(power, levels=(0.0,)):
    """A Denoiser of SIDE x SIDE images whose residual spectrum is `power` everywhere at each level."""
    spectra = np.full((len(levels), SIDE, SIDE // 2 + 1), power, np.float32)
    return Denoiser(SIDE, levels).fit(spectra)


def test_the_filter_keeps_the_input_without_noise_and_the_reconstruction_under_huge_noise():
    clean = slices(3, seed=1)
    reconstructions = np.clip(clean + 0.05, 0, 1) * (clean > 0)  # off by 0.05 inside the head
    inside = head_mask(reconstructions).numpy() == 1.0
    assert inside.mean() > 0.2 and not inside.all()
    layer = fitted_denoiser(power=1.0)
    quiet = layer(clean, reconstructions, tf.zeros(3)).numpy()[..., 0]
    np.testing.assert_allclose(quiet[inside], clean[..., 0][inside], atol=1e-5)
    loud = layer(clean, reconstructions, tf.fill([3], 1e4)).numpy()[..., 0]
    np.testing.assert_allclose(loud, reconstructions[..., 0], atol=1e-5)
    outside = head_mask(reconstructions).numpy() == 0.0
    assert outside.any()
    np.testing.assert_array_equal(quiet[outside], reconstructions[..., 0][outside])  # the background stays clean


def test_the_gain_is_the_wiener_gain_of_the_spectrum_at_each_images_sigma():
    layer = fitted_denoiser(power=0.0, levels=(0.0, 0.1, 0.2))
    layer.spectrum.assign(np.stack([np.full((SIDE, SIDE // 2 + 1), value, np.float32) for value in (1, 3, 7)]))
    np.testing.assert_allclose(layer.spectrum_at(tf.constant([0.0, 0.05, 0.15, 0.5]))[:, 0, 0], [1, 2, 5, 7])
    # A flat spectrum S_r against white noise: every frequency scaled by S_r / (S_r + sigma^2 * sum(mask^2)).
    clean = slices(1, seed=2)
    reconstructions = clean.copy()
    noisy = clean + np.float32(0.01) * (clean > 0.3)
    mask = head_mask(reconstructions).numpy()
    sigma = 0.02  # a fifth of the way from level 0 to level 0.1: S_r = 1 + 0.2 * (3 - 1)
    gain = 1.4 / (1.4 + sigma ** 2 * (mask ** 2).sum())
    expected = np.clip(reconstructions[..., 0] + gain * (noise.rician_bias_correct(noisy, sigma).numpy()
                                                         - reconstructions)[..., 0] * mask ** 2, 0, 1)
    np.testing.assert_allclose(layer(noisy, reconstructions, tf.constant([sigma])).numpy()[..., 0], expected,
                               atol=1e-5)


def test_the_fitted_spectrum_is_numpys_mean_power_of_the_residuals():
    keras.utils.set_random_seed(0)
    vqvae = VQVAETrainer(**TINY_MODEL)
    images = slices(6, seed=4)
    layer = fit_denoiser(vqvae, images, levels=(0.0, 0.1), seed=7)
    for index, level in enumerate((0.0, 0.1)):
        noisy = np.clip(noise.rician_noise(images, level, 7).numpy(), 0, 1)
        residual = (images - np.clip(vqvae(noisy).numpy(), 0, 1))[..., 0].astype(np.float64)
        expected = (np.abs(np.fft.rfft2(residual)) ** 2).mean(axis=0)
        np.testing.assert_allclose(layer.spectrum.numpy()[index], expected, rtol=1e-3, atol=1e-6 * expected.max())
    assert not np.allclose(layer.spectrum.numpy()[0], layer.spectrum.numpy()[1])
    np.testing.assert_allclose(residual_spectrum(images, images), 0.0)


FRESH = textwrap.dedent("""
    import importlib.util, sys, numpy as np, tensorflow as tf
    for name in ("modules", "denoiser", "export", "noise"):
        assert importlib.util.find_spec(name) is None, name  # this project is not importable here
    model = tf.saved_model.load(sys.argv[1])
    noisy = tf.constant(np.load(sys.argv[2]))
    sigma = tf.constant([0.05, -1.0, 0.2])
    np.save(sys.argv[3], np.stack([model.denoise(noisy, sigma).numpy()[..., 0],
                                   model.reconstruct(noisy).numpy()[..., 0]]))
    np.save(sys.argv[4], model.noise_sigma(noisy).numpy())
    try:
        model.denoise(noisy, tf.constant([0.1, float("nan"), 0.1]))
        print("nan sigma accepted")
    except tf.errors.InvalidArgumentError as error:
        print("refused:", "sigma: expected a finite noise level" in error.message)
""")


def test_the_exported_endpoint_equals_the_layer(tmp_path):
    keras.utils.set_random_seed(0)
    vqvae = VQVAETrainer(**TINY_MODEL)
    vqvae.decoder.get_layer("up1").bias.assign([0.5])  # untrained, it decodes about 0: no head to denoise
    images = slices(8, seed=5)
    layer = fit_denoiser(vqvae, images, levels=(0.0, 0.1))
    metadata = {"image_size": SIDE, "grid": 8, "top_grid": 0, "num_codes": 16, "has_prior": False, "class_names": [],
                "class_counts": [], "has_texture": False, "has_denoiser": True}
    export_savedmodel(vqvae, tmp_path / "model", SIDE, metadata, denoiser=layer)
    noisy = np.clip(noise.rician_noise(images[:3], [0.05, 0.1, 0.2], 1).numpy(), 0, 1)
    np.save(tmp_path / "noisy.npy", noisy)
    result = run([sys.executable, "-c", FRESH, *(str(tmp_path / name) for name in
                                                  ("model", "noisy.npy", "out.npy", "sigma.npy"))],
                 cwd=tmp_path, env={"PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "refused: True"
    denoised, reconstructed = np.load(tmp_path / "out.npy")
    estimated = noise.estimate_sigma(noisy).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "sigma.npy"), estimated, rtol=1e-5)
    expected = layer(noisy, vqvae.reconstruct(noisy), tf.constant([0.05, estimated[1], 0.2])).numpy()[..., 0]
    np.testing.assert_allclose(denoised, expected, atol=1e-5)
    assert np.abs(denoised - reconstructed).max() > 1e-3  # the filter did something


DISTRIBUTED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    import modules
    keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = modules.VQVAETrainer(num_codes=16, code_dim=8, channels=16, res_blocks=1, train_noise=0.3)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images = np.random.default_rng(0).random((16, 16, 16, 1)).astype("float32")
    history = model.fit(images, batch_size=8, epochs=2, shuffle=False, verbose=0)
    same = tf.constant(images[:4])
    drawn = strategy.run(tf.function(lambda: model.noisy_inputs(same, 0)))
    copies = [tensor.numpy() for tensor in strategy.experimental_local_results(drawn)]
    differ = bool(np.abs(copies[0] - copies[1]).max() > 0)
    print(json.dumps({"loss": history.history["loss"], "replicas_differ": differ}))
""")


def test_noise_training_runs_per_replica_under_mixed_precision():
    result = run([sys.executable, "-c", DISTRIBUTED])
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(np.isfinite(printed["loss"])) and printed["replicas_differ"]
