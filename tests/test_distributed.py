"""Training under tf.distribute and mixed precision: the same numbers as on one device, float32 quantiser."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import tensorflow as tf

from conftest import ROOT, TINY, write_adni

MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    sys.path.insert(0, sys.argv[1])
    import modules

    rng = np.random.default_rng(0)
    images = rng.random((32, 16, 16, 1)).astype("float32")
    initial = None

    class BatchLosses(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.losses = []
        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(float(logs["loss"]))

    def train(strategy):
        global initial
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = modules.VQVAETrainer(num_codes=16, code_dim=8, channels=16, res_blocks=1, seed=0,
                                         dead_code_steps=1000)
            model.compile(optimizer=keras.optimizers.Adam(1e-3))
        if initial is None:
            initial = model.get_weights()
        model.set_weights(initial)  # both models start from the same weights and an initialised codebook
        vectors = model.encoder(images[:16]).numpy().reshape(-1, 8)
        quantizer = model.quantizer
        quantizer.codebook.assign(vectors[::8][:16])
        quantizer.ema_code_sum.assign(vectors[::8][:16])
        quantizer.ema_cluster_size.assign(np.ones(16, "float32"))
        quantizer.initialized.assign(1.0)
        losses = BatchLosses()
        model.fit(images, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[losses])
        return {"replicas": strategy.num_replicas_in_sync, "losses": losses.losses,
                "codebook": quantizer.codebook.numpy().tolist(),
                "cluster_size": quantizer.ema_cluster_size.numpy().tolist(),
                "encoder": model.encoder.get_weights()[0].ravel().tolist(),
                "iterations": int(model.optimizer.iterations.numpy())}

    single = train(tf.distribute.get_strategy())
    mirrored = train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    print(json.dumps({"single": single, "mirrored": mirrored}))
""")


def test_mirrored_over_two_cpu_devices_matches_one_device():
    result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(ROOT)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    single, mirrored = runs["single"], runs["mirrored"]
    assert single["replicas"] == 1 and mirrored["replicas"] == 2
    assert mirrored["iterations"] == single["iterations"] == 8
    np.testing.assert_allclose(mirrored["losses"], single["losses"], rtol=1e-4, atol=1e-6)
    # The EMA statistics are summed over both halves of each batch, as on one device.
    np.testing.assert_allclose(mirrored["cluster_size"], single["cluster_size"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mirrored["codebook"], single["codebook"], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(mirrored["encoder"], single["encoder"], rtol=1e-3, atol=1e-5)
    # Training changed the codebook at all, so the comparison above means something.
    assert not np.allclose(mirrored["cluster_size"], 1.0)


def test_quantizer_computes_in_float32_under_mixed_precision():
    import modules

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = modules.VQVAETrainer(num_codes=16, code_dim=8, channels=16, res_blocks=1, seed=0)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        assert model.encoder.layers[1].compute_dtype == "float16"
        quantizer = model.quantizer
        assert quantizer.compute_dtype == "float32" and quantizer.codebook.dtype == "float32"
        vectors = model.encoder(np.random.default_rng(0).random((2, 16, 16, 1)).astype("float32"))
        assert vectors.dtype == tf.float16
        quantizer(vectors, training=True)  # initialises the codebook from these vectors, one EMA step
        quantized, indices = quantizer(vectors)
        assert quantized.dtype == tf.float32 and all(loss.dtype == tf.float32 for loss in quantizer.losses)
        # The nearest codes are those of the float32 vectors, by numpy brute force.
        flat = tf.cast(vectors, tf.float32).numpy().reshape(-1, 8)
        codebook = quantizer.codebook.numpy()
        distances = ((flat[:, None] - codebook[None]) ** 2).sum(-1)
        chosen = np.take_along_axis(distances, indices.numpy().reshape(-1, 1), 1)[:, 0]
        # Equal to the minimum (codes initialised from repeated vectors may tie, so indices alone can differ).
        np.testing.assert_allclose(chosen, distances.min(1), rtol=1e-4, atol=1e-5)
        history = model.fit(np.random.default_rng(1).random((8, 16, 16, 1)).astype("float32"), batch_size=4,
                            epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        assert type(model.optimizer).__name__ == "LossScaleOptimizer"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_multiworker_run_of_two_local_workers_trains_and_the_chief_exports(tmp_path):
    data = write_adni(tmp_path / "AD_NC", train_patients=4, test_patients=1, slices=4)
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    workers = [f"localhost:{port}" for port in ports]
    out = tmp_path / "run" / "vqvae"
    processes = []
    for index in range(2):
        config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        env = {**os.environ, "TF_CONFIG": config, "TF_CPP_MIN_LOG_LEVEL": "2"}
        processes.append(subprocess.Popen(
            [sys.executable, "train.py", "--data", str(data), "--out", str(out), "--logdir", str(tmp_path / "logs"),
             *TINY, "--deterministic", "--epochs", "2", "--prior-epochs", "1", "--strategy", "multiworker"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    assert "the chief worker writes the outputs" in outputs[1][0]
    config = json.loads((out / "config.json").read_text())
    assert config["replicas"] == 2 and config["strategy"] == "multiworker"
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 2
    assert (out / "prior.keras").exists() and not list((tmp_path / "run").glob("*worker*"))
