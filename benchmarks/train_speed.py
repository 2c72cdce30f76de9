"""Training speed of the VQ-VAE step against the machine's dense-matmul roofline. Prints one JSON line per
configuration.

FLOPs are counted analytically from the model's layers: a convolution costs 2·H_out·W_out·C_in·C_out·k_h·k_w
per image forward (a transposed convolution the same with its input size), the quantiser's distance matmul
2·positions·D·K; these cost three times as much in a training step (forward, gradient with respect to the
inputs, gradient with respect to the weights). The loss's SSIM filters four maps with an 11×11 Gaussian
(2·121·(S-10)² each), forward and back. The roofline is a float32 matmul of 2048×2048 matrices timed
on the same machine. Images are random: the step's cost does not depend on the pixels.

    python -m benchmarks.train_speed                    # default (128 px, batch 16) and full size (256 px, batch 32)
    python -m benchmarks.train_speed --configs default --steps 40
    python -m benchmarks.train_speed --configs default --layers     # and each convolution's ms and GFLOP/s
"""

import runtime  # noqa: F401  (first: it sets TensorFlow's environment before TensorFlow loads)

import argparse
import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from keras import layers

import settings
from modules import VQVAETrainer

# train.py's defaults (128 px, batch 16), and the full-size configuration the README gives for OASIS and ADNI.
DEFAULTS = settings.defaults()
VQVAE_ARGUMENTS = settings.model_arguments(DEFAULTS, settings.VQVAE)
CONFIGS = {
    "default": dict(image_size=DEFAULTS.image_size, batch_size=DEFAULTS.batch_size, **VQVAE_ARGUMENTS),
    "full": dict(image_size=256, batch_size=32, **VQVAE_ARGUMENTS),
}


def matmul_gflops(size=2048, repeats=10):
    """Achieved GFLOP/s of a float32 size x size matmul on this machine (the roofline)."""
    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    run = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    run().numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        run().numpy()
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e9


def conv_layers(model):
    """The Conv2D and Conv2DTranspose layers of a functional model, in order."""
    return [layer for layer in model.layers if isinstance(layer, (layers.Conv2D, layers.Conv2DTranspose))]


def layer_forward_flops(layer):
    """Forward FLOPs per image of a convolution layer of a model built at a fixed image size."""
    in_shape, out_shape = layer.input.shape, layer.output.shape
    kh, kw = layer.kernel_size
    spatial = in_shape if isinstance(layer, layers.Conv2DTranspose) else out_shape
    return 2 * spatial[1] * spatial[2] * in_shape[-1] * out_shape[-1] * kh * kw


def sized_models(config):
    """(model, encoder, decoder) of the configuration, the last two rebuilt at its fixed image size."""
    model = VQVAETrainer(**{name: config[name] for name in VQVAE_ARGUMENTS})
    size = config["image_size"]
    grid = size // 2 ** config["downsamplings"]
    encoder = keras.models.clone_model(model.encoder, input_tensors=keras.Input((size, size, 1)))
    decoder = keras.models.clone_model(model.decoder, input_tensors=keras.Input((grid, grid, config["code_dim"])))
    return model, encoder, decoder


def train_flops(config):
    """FLOPs per image of a training step: encoder, quantiser distances, decoder and the loss's SSIM."""
    _, encoder, decoder = sized_models(config)
    size = config["image_size"]
    grid = size // 2 ** config["downsamplings"]
    quantizer = 2 * grid * grid * config["code_dim"] * config["num_codes"]
    convolutions = sum(layer_forward_flops(layer) for layer in conv_layers(encoder) + conv_layers(decoder))
    ssim_filters = 4 * 2 * 11 * 11 * (size - 10) ** 2
    return 3 * (convolutions + quantizer) + (2 if config["ssim_weight"] else 1) * ssim_filters


def layer_seconds(layer, batch, input_gradient, repeats=20):
    """Seconds of one forward and backward pass of a layer on a batch (the gradient with respect to its
    input too, unless it is the first layer, as in the training step)."""
    inputs = tf.random.uniform((batch, *layer.input.shape[1:]))

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = layer(inputs)
        sources = [inputs] * input_gradient + layer.trainable_variables
        gradients = tape.gradient(outputs, sources, output_gradients=tf.ones_like(outputs))
        return [tf.reduce_sum(gradient) for gradient in gradients]  # returned, so none is pruned away

    forward_backward()
    start = time.perf_counter()
    for _ in range(repeats):
        forward_backward()[0].numpy()
    return (time.perf_counter() - start) / repeats


def print_layer_profile(name, config):
    """One JSON line per convolution: its milliseconds and GFLOP/s forward + backward on one batch."""
    _, encoder, decoder = sized_models(config)
    batch = config["batch_size"]
    for model in (encoder, decoder):
        for index, layer in enumerate(conv_layers(model)):
            input_gradient = not (model is encoder and index == 0)
            seconds = layer_seconds(layer, batch, input_gradient)
            flops = (2 + input_gradient) * layer_forward_flops(layer) * batch
            print(json.dumps({"benchmark": "train_speed_layer", "config": name,
                              "layer": f"{model.name}/{layer.name}", "input": list(layer.input.shape[1:]),
                              "output": list(layer.output.shape[1:]),
                              "milliseconds_per_batch": round(seconds * 1000, 2),
                              "gflops": round(flops / seconds / 1e9, 1)}), flush=True)


def images_per_second(config, steps, jit):
    """Training images/s of VQVAETrainer.fit steps (after a warm-up epoch that traces the step)."""
    keras.utils.set_random_seed(0)
    model, _, _ = sized_models(config)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit)
    size, batch = config["image_size"], config["batch_size"]
    images = np.random.default_rng(0).random((batch * 4, size, size, 1)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices(images).batch(batch).repeat().prefetch(tf.data.AUTOTUNE)

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.start

    timer = Timer()
    # Warm-up: tracing, and the codebook's initialisation from the first batch.
    model.fit(data, steps_per_epoch=5, epochs=1, verbose=0, shuffle=False)
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
    return steps * batch / timer.seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per configuration")
    parser.add_argument("--jit", action="store_true", help="compile the step with XLA")
    parser.add_argument("--layers", action="store_true",
                        help="also time each convolution alone (forward and backward), one JSON line each")
    args = parser.parse_args()
    roofline = matmul_gflops()
    for name in args.configs:
        config = CONFIGS[name]
        flops = train_flops(config)
        speed = images_per_second(config, args.steps, args.jit)
        achieved = flops * speed / 1e9
        print(json.dumps({
            "benchmark": "train_speed", "config": name, **config, "jit": args.jit,
            "device": "GPU" if tf.config.list_physical_devices("GPU") else f"CPU x{os.cpu_count()}",
            "images_per_second": round(speed, 1), "train_gflop_per_image": round(flops / 1e9, 3),
            "achieved_gflops": round(achieved, 1),
            "matmul_gflops": round(roofline, 1), "fraction_of_matmul_roofline": round(achieved / roofline, 3),
            "command": " ".join(["python", "-m", "benchmarks.train_speed", *sys.argv[1:]])}), flush=True)
        if args.layers:
            print_layer_profile(name, config)


if __name__ == "__main__":
    main()
