"""The decoder's texture model, against statistics computed in numpy on synthetic residuals of known law."""

import runtime  # noqa: F401  (first: it sets TensorFlow's environment before TensorFlow loads)

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from scipy import signal

import predict
from conftest import call_main
from export import export_savedmodel
from modules import VQVAETrainer
from prior import GatedPixelCNN
from texture import DecoderTexture

FILTER = np.array([[0, 1, 0], [1, 2, 1], [0, 1, 0]], "float64") / np.sqrt(8.0)  # unit norm


def true_sigma(intensity):
    return 0.02 + 0.06 * intensity


def synthetic(rng, n=48, size=64):
    """(images, means): smooth heads (a horizontal ramp from 0.2 to 0.9 inside a disc, 0 outside) plus noise
    of standard deviation `true_sigma(mean)` correlated by FILTER."""
    rows, columns = np.mgrid[:size, :size]
    disc = (rows - size / 2) ** 2 + (columns - size / 2) ** 2 < (0.45 * size) ** 2
    mean = np.where(disc, 0.2 + 0.7 * columns / (size - 1), 0.0)
    means = np.repeat(mean[None], n, axis=0)
    noise = np.stack([signal.convolve2d(rng.normal(size=(size, size)), FILTER, mode="same", boundary="wrap")
                      for _ in range(n)])
    images = means + np.where(disc, true_sigma(means) * noise, 0.0)
    return images[..., None].astype("float32"), means[..., None].astype("float32")


def test_fit_recovers_the_residual_sigma_per_intensity_and_its_correlation():
    images, means = synthetic(np.random.default_rng(0))
    texture = DecoderTexture(bins=16, kernel_size=7).fit(images, means)
    sigma = texture.sigma.numpy()
    level = np.clip((means[..., 0] * 16).astype(int), 0, 15)
    head = means[..., 0] > 0.1
    for k in np.unique(level[head]):
        pixels = head & (level == k)
        if pixels.sum() >= 2000:  # bins cut by the disc's edge hold few pixels
            expected = np.sqrt(np.mean(true_sigma(means[..., 0][pixels]) ** 2))
            np.testing.assert_allclose(sigma[k], expected, rtol=0.05, err_msg=f"bin {k}")
    # The law of Gaussian noise is its autocorrelation (not the filter: many filters give one spectrum).
    kernel = texture.kernel.numpy()[..., 0, 0]
    fitted = signal.correlate2d(kernel, kernel)[4:9, 4:9]  # lags -2..2 of the 13 x 13 autocorrelation
    expected = signal.correlate2d(FILTER, FILTER)  # lags -2..2
    np.testing.assert_allclose(fitted, expected, atol=0.04)


def test_draws_have_the_fitted_law_and_leave_the_background_alone():
    texture = DecoderTexture(bins=4, kernel_size=5)
    texture.build()
    texture.sigma.assign(np.array([0.0, 0.05, 0.1, 0.2], "float32"))
    texture.kernel.assign(np.pad(FILTER, 1)[..., None, None].astype("float32"))
    images = np.full((8, 96, 96, 1), 0.6, "float32")  # level 2: sigma 0.1
    images[:, :, :8] = 0.05  # background: at or below the foreground threshold 0.1
    drawn = texture(images, seed=3).numpy()
    np.testing.assert_array_equal(drawn[:, :, :8], images[:, :, :8])
    residual = (drawn - images)[:, 8:-8, 16:-8, 0]  # away from the background and the border
    np.testing.assert_allclose(residual.std(), 0.1, rtol=0.03)
    lag = np.corrcoef(residual[:, :, 1:].ravel(), residual[:, :, :-1].ravel())[0, 1]
    expected_lag = (FILTER[:, 1:] * FILTER[:, :-1]).sum()  # the filter's autocorrelation at one column
    np.testing.assert_allclose(lag, expected_lag, atol=0.03)
    np.testing.assert_array_equal(texture(images, seed=3).numpy(), drawn)
    assert not np.array_equal(texture(images, seed=4).numpy(), drawn)
    bright = texture(np.full((2, 32, 32, 1), 0.99, "float32"), seed=0).numpy()
    assert bright.max() <= 1.0 and bright.min() >= 0.0


def test_config_round_trip_and_weights_travel_with_the_layer():
    texture = DecoderTexture(bins=8, kernel_size=3, foreground=0.2, name="texture")
    texture.build()
    texture.sigma.assign(np.linspace(0, 0.1, 8).astype("float32"))
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(texture))
    assert (copy.bins, copy.kernel_size, copy.foreground) == (8, 3, 0.2)
    assert copy.built  # deserialisation builds it, creating the weights
    copy.set_weights(texture.get_weights())
    images = np.full((1, 16, 16, 1), 0.5, "float32")
    np.testing.assert_array_equal(copy(images, seed=1).numpy(), texture(images, seed=1).numpy())


@pytest.fixture(scope="module")
def textured_export(tmp_path_factory):
    """(folder, texture layer): an untrained 32x32 export with a prior and a texture that acts everywhere
    (foreground -1), so that its effect shows on an untrained decoder's dark images."""
    keras.utils.set_random_seed(0)
    vqvae = VQVAETrainer(num_codes=16, code_dim=8, channels=16, res_blocks=1)
    vqvae(tf.zeros((1, 32, 32, 1)))
    prior = GatedPixelCNN(num_codes=16, grid_size=8, channels=8, num_layers=2)
    prior(tf.zeros((1, 8, 8), tf.int32))
    texture = DecoderTexture(bins=4, kernel_size=3, foreground=-1.0, name="texture")
    texture.build()
    texture.sigma.assign(np.full(4, 0.2, "float32"))
    texture.kernel.assign(np.pad([[1.0]], 1)[..., None, None].astype("float32"))
    folder = tmp_path_factory.mktemp("export") / "model"
    metadata = {"image_size": 32, "grid": 8, "top_grid": 0, "num_codes": 16, "has_prior": True, "class_names": [],
                "class_counts": [], "has_texture": True, "has_denoiser": False, "scan_orders": 1}
    export_savedmodel(vqvae, folder, 32, metadata, prior, texture=texture)
    return folder, texture


def test_the_export_draws_what_the_layer_draws(textured_export):
    folder, texture = textured_export
    images = np.random.default_rng(0).random((3, 32, 32, 1)).astype("float32")
    loaded = tf.saved_model.load(str(folder))  # held: its functions need its variables alive
    exported = loaded.texture(tf.constant(images), tf.constant(5)).numpy()
    np.testing.assert_allclose(exported, texture(images, seed=5).numpy(), atol=1e-6)


def test_predict_writes_the_exports_samples_with_texture_unless_told_not_to(textured_export, tmp_path, capsys):
    folder, _ = textured_export
    model = tf.saved_model.load(str(folder))
    smooth = model.sample(4, 1.0, 0, 0, 1.0, False)
    expected = {"--texture": model.texture(smooth, 0).numpy(), "--no-texture": smooth.numpy()}
    for flag, images in expected.items():
        out = tmp_path / flag
        result = call_main(predict.main, ["--n", "4", "--model", str(folder), "--out", str(out), flag], capsys)
        assert result.returncode == 0, result.stderr[-3000:]
        written = np.stack([np.asarray(Image.open(out / f"sample_{i:03d}.png")) for i in range(4)])
        np.testing.assert_allclose(written, np.round(images[..., 0] * 255), atol=1)
    assert np.abs(expected["--texture"] - expected["--no-texture"]).mean() > 0.05


def test_tensorboard_prior_samples_carry_the_texture(textured_export, tmp_path):
    """train.py's PriorSamples writes what predict.py writes: decoded samples with a draw of the texture."""
    import train

    keras.utils.set_random_seed(0)
    vqvae = VQVAETrainer(num_codes=16, code_dim=8, channels=16, res_blocks=1)
    vqvae(tf.zeros((1, 32, 32, 1)))
    prior = GatedPixelCNN(num_codes=16, grid_size=8, channels=8, num_layers=2)
    prior(tf.zeros((1, 8, 8), tf.int32))
    _, texture = textured_export
    labels = tf.zeros(3, tf.int32)
    callback = train.PriorSamples(vqvae, texture, labels, tmp_path, every=1)
    callback.set_model(prior)
    callback.set_params({"epochs": 1})
    callback.on_train_begin()
    callback.on_epoch_end(0)
    [events] = tf.io.gfile.glob(str(tmp_path / "validation" / "events.out.tfevents.*"))
    written = [tf.image.decode_png(png).numpy()[..., 0]
               for event in tf.compat.v1.train.summary_iterator(events) for value in event.summary.value
               if value.tag == "samples" for png in tf.make_ndarray(value.tensor)[2:]]
    smooth = vqvae.decode(prior.sample(3, labels, seed=0)).numpy()
    expected = texture(smooth, seed=0).numpy()[..., 0]
    np.testing.assert_allclose(np.stack(written), np.round(expected * 255), atol=1)
    assert np.abs(expected - smooth[..., 0]).mean() > 0.05
