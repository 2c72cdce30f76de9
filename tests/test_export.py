"""The exported SavedModel checks its inputs, called from plain TensorFlow in a process without this project; a
hierarchical export's endpoints agree with each other there."""

import json
import sys
import textwrap

import numpy as np
import pytest

import dataset
from conftest import run

# Run in a fresh process on the session's conditional export: each bad call, as (the argument its error must
# name, the call), and each call at the edge of the ranges, which must still work. K codes, C classes, G grid.
SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys, numpy as np, tensorflow as tf
    for name in ("modules", "prior", "export"):
        assert importlib.util.find_spec(name) is None, name  # this project is not importable here
    model = tf.saved_model.load(sys.argv[1])
    meta = json.loads(model.metadata().numpy().decode())
    K, C, G, S = meta["num_codes"], len(meta["class_names"]), meta["grid"], meta["image_size"]

    def codes(*values):  # one grid per value, each all zeros but its first code
        grids = np.zeros((len(values), G, G), np.int32)
        grids[:, 0, 0] = values
        return tf.constant(grids)

    def images(*values):  # one image per value, each all 0.5 but its first pixel
        batch = np.full((len(values), S, S, 1), 0.5, np.float32)
        batch[:, 0, 0, 0] = values
        return tf.constant(batch)

    def sample(n=2, temperature=1.0, top_k=0, top_p=1.0):
        return model.sample(n, temperature, 0, top_k, top_p, False)

    def sample_class(label=0, n=2, temperature=1.0, top_k=0, top_p=1.0):
        return model.sample_class(n, label, temperature, 0, top_k, top_p, True)

    def heal(threshold=0.01, orders=1, label=0, n=1, value=0.5):
        return model.heal(images(*[value] * n), threshold, 0, orders, tf.constant([label] * n))

    def step(position=1, previous=(0,), label=0):
        return model.prior_step(model.prior_start(1, tf.constant([label])), position, tf.constant(previous))

    nan, inf = float("nan"), float("inf")
    bad = {
        "decode code -1": ("codes", lambda: model.decode(codes(-1))),
        "decode code K": ("codes", lambda: model.decode(codes(K))),
        "decode code 9999": ("codes", lambda: model.decode(codes(0, 9999))),
        "prior_logits code -1": ("codes", lambda: model.prior_logits(codes(-1), tf.constant([0]))),
        "prior_logits label C": ("labels", lambda: model.prior_logits(codes(0), tf.constant([C]))),
        "prior_logits 1 label for 2 grids": ("labels", lambda: model.prior_logits(codes(0, 0), tf.constant([0]))),
        "log_prob label -1": ("labels", lambda: model.log_prob(images(0.5), tf.constant([-1]))),
        "prior_start label C": ("labels", lambda: model.prior_start(1, tf.constant([C]))),
        "prior_start 1 label for 2 grids": ("labels", lambda: model.prior_start(2, tf.constant([0]))),
        "sample_class label 99": ("label", lambda: sample_class(99)),
        "sample_class label -1": ("label", lambda: sample_class(-1)),
        "sample_class label C": ("label", lambda: sample_class(C)),
        "sample n 0": ("n", lambda: sample(n=0)),
        "sample n -1": ("n", lambda: sample(n=-1)),
        "sample_class n 0": ("n", lambda: sample_class(n=0)),
        "prior_start n 0": ("n", lambda: model.prior_start(0, tf.zeros([0], tf.int32))),
        "sample temperature nan": ("temperature", lambda: sample(temperature=nan)),
        "sample temperature -1": ("temperature", lambda: sample(temperature=-1.0)),
        "sample temperature 0": ("temperature", lambda: sample(temperature=0.0)),
        "sample temperature inf": ("temperature", lambda: sample(temperature=inf)),
        "sample_class temperature nan": ("temperature", lambda: sample_class(temperature=nan)),
        "sample top_k -1": ("top_k", lambda: sample(top_k=-1)),
        "sample top_k K+1": ("top_k", lambda: sample(top_k=K + 1)),
        "sample_class top_k K+1": ("top_k", lambda: sample_class(top_k=K + 1)),
        "sample top_p 0": ("top_p", lambda: sample(top_p=0.0)),
        "sample top_p -0.1": ("top_p", lambda: sample(top_p=-0.1)),
        "sample top_p 1.5": ("top_p", lambda: sample(top_p=1.5)),
        "sample top_p nan": ("top_p", lambda: sample(top_p=nan)),
        "encode nan": ("images", lambda: model.encode(images(nan))),
        "encode 1.5": ("images", lambda: model.encode(images(0.5, 1.5))),
        "reconstruct -0.5": ("images", lambda: model.reconstruct(images(-0.5))),
        "texture nan": ("images", lambda: model.texture(images(nan), 0)),
        "denoise 1.5": ("images", lambda: model.denoise(images(1.5), tf.constant([0.1]))),
        "denoise sigma nan": ("sigma", lambda: model.denoise(images(0.5), tf.constant([nan]))),
        "denoise sigma inf": ("sigma", lambda: model.denoise(images(0.5), tf.constant([inf]))),
        "denoise 1 sigma for 2 images": ("sigma", lambda: model.denoise(images(0.5, 0.5), tf.constant([0.1]))),
        "noise_sigma nan": ("images", lambda: model.noise_sigma(images(nan))),
        "log_prob 2": ("images", lambda: model.log_prob(images(2.0), tf.constant([0]))),
        "prior_step position -1": ("position", lambda: step(position=-1)),
        "prior_step position G*G": ("position", lambda: step(position=G * G)),
        "prior_step previous K": ("previous", lambda: step(previous=(K,))),
        "prior_step previous -1": ("previous", lambda: step(previous=(-1,))),
        "prior_step 2 previous for 1 grid": ("previous", lambda: step(previous=(0, 0))),
        "heal threshold 0": ("threshold", lambda: heal(threshold=0.0)),
        "heal threshold 1.5": ("threshold", lambda: heal(threshold=1.5)),
        "heal threshold nan": ("threshold", lambda: heal(threshold=nan)),
        "heal orders 0": ("orders", lambda: heal(orders=0)),
        "heal orders 2 of 1": ("orders", lambda: heal(orders=2)),
        "heal label C": ("labels", lambda: heal(label=C)),
        "heal images 1.5": ("images", lambda: heal(value=1.5)),
        "code_log_likelihoods label C": ("labels", lambda: model.code_log_likelihoods(images(0.5), tf.constant([C]))),
        "code_log_likelihoods nan": ("images", lambda: model.code_log_likelihoods(images(nan), tf.constant([0]))),
    }
    good = {
        "decode codes 0 and K-1": lambda: model.decode(codes(0, K - 1)),
        "prior_logits codes 0 and K-1, labels 0 and C-1": lambda: model.prior_logits(codes(0, K - 1),
                                                                                     tf.constant([0, C - 1])),
        "encode 0 and 1": lambda: model.encode(images(0.0, 1.0)),
        "reconstruct 0 and 1": lambda: model.reconstruct(images(0.0, 1.0)),
        "texture 0 and 1": lambda: model.texture(images(0.0, 1.0), 0),
        "denoise 0 and 1, sigma 0 and -1": lambda: model.denoise(images(0.0, 1.0), tf.constant([0.0, -1.0])),
        "noise_sigma 0 and 1": lambda: model.noise_sigma(images(0.0, 1.0)),
        "log_prob 0 and 1, labels 0 and C-1": lambda: model.log_prob(images(0.0, 1.0), tf.constant([0, C - 1])),
        "sample n 1, top_k K, top_p 1": lambda: sample(n=1, top_k=K, top_p=1.0),
        "sample small temperature and top_p": lambda: sample(temperature=1e-6, top_p=1e-6),
        "sample_class label 0, top_k K": lambda: sample_class(0, top_k=K),
        "sample_class label C-1, top_k 1": lambda: sample_class(C - 1, top_k=1),
        "prior_step position 0": lambda: step(position=0, label=C - 1)["logits"],
        "prior_step position G*G-1, previous K-1": lambda: step(position=G * G - 1, previous=(K - 1,))["logits"],
        "heal threshold 1, label C-1, 2 images": lambda: heal(threshold=1.0, label=C - 1, n=2)["anomaly"],
        "heal tiny threshold": lambda: heal(threshold=1e-30)["anomaly"],
        "code_log_likelihoods 0 and 1": lambda: model.code_log_likelihoods(images(0.0, 1.0), tf.constant([0, 0])),
    }
    results = {}
    for name, (argument, call) in bad.items():
        try:
            call()
            results[name] = {"argument": argument, "error": None}
        except Exception as error:
            results[name] = {"argument": argument, "error": type(error).__name__,
                             "message": getattr(error, "message", str(error))}
    for name, call in good.items():
        results[name] = {"shape": list(call().shape)}
    print(json.dumps({"metadata": meta, "results": results}))
""")


@pytest.fixture(scope="module")
def called(trained, tmp_path_factory):
    """(the export's metadata, {case: what the fresh process saw}) for every call in SCRIPT."""
    out = trained[0]
    result = run([sys.executable, "-c", SCRIPT, str(out)], cwd=tmp_path_factory.mktemp("plain"),
                 env={"PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    return printed["metadata"], printed["results"]


def test_every_bad_input_is_an_invalid_argument_error_naming_the_argument(called):
    metadata, results = called
    assert metadata["class_names"] == ["AD", "NC"] and metadata["has_prior"]  # the conditional export
    assert metadata["has_denoiser"]
    bad = {name: result for name, result in results.items() if "argument" in result}
    assert len(bad) > 30
    wrong = {name: result for name, result in bad.items()
             if result["error"] != "InvalidArgumentError" or f"{result['argument']}: expected" not in result["message"]}
    assert not wrong, json.dumps(wrong, indent=1)[:4000]


def test_inputs_at_the_edges_of_their_ranges_still_work(called):
    metadata, results = called
    size, grid, num_codes = metadata["image_size"], metadata["grid"], metadata["num_codes"]
    expected = {"decode codes 0 and K-1": [2, size, size, 1],
                "prior_logits codes 0 and K-1, labels 0 and C-1": [2, grid, grid, num_codes],
                "encode 0 and 1": [2, grid, grid], "reconstruct 0 and 1": [2, size, size, 1],
                "texture 0 and 1": [2, size, size, 1], "denoise 0 and 1, sigma 0 and -1": [2, size, size, 1],
                "noise_sigma 0 and 1": [2], "log_prob 0 and 1, labels 0 and C-1": [2],
                "sample n 1, top_k K, top_p 1": [1, size, size, 1],
                "sample small temperature and top_p": [2, size, size, 1],
                "sample_class label 0, top_k K": [2, size, size, 1],
                "sample_class label C-1, top_k 1": [2, size, size, 1],
                "prior_step position 0": [1, num_codes], "prior_step position G*G-1, previous K-1": [1, num_codes],
                "heal threshold 1, label C-1, 2 images": [2, size, size, 1], "heal tiny threshold": [1, size, size, 1],
                "code_log_likelihoods 0 and 1": [2, grid, grid]}
    assert {name: results[name]["shape"] for name in expected} == expected


# Run in a fresh process on the session's hierarchical (and conditional) export, on the images saved at argv[2]:
# every endpoint's outputs, saved at argv[3], and the errors of top codes out of range.
HIERARCHICAL_SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys, numpy as np, tensorflow as tf
    for name in ("modules", "prior", "hierarchy", "export"):
        assert importlib.util.find_spec(name) is None, name  # this project is not importable here
    model = tf.saved_model.load(sys.argv[1])
    meta = json.loads(model.metadata().numpy().decode())
    images = tf.constant(np.load(sys.argv[2]))
    n, G, T = len(images), meta["grid"], meta["top_grid"]
    labels = tf.constant(np.arange(n) % len(meta["class_names"]), tf.int32)
    top, codes = model.encode_top(images), model.encode(images)
    state, previous, stepped = model.top_prior_start(n, labels), tf.zeros([n], tf.int32), []
    for position in range(T * T):  # teacher-forced: each step is given the top code before it
        outputs = model.top_prior_step(state, position, previous)
        state = {name: outputs[name] for name in state}
        stepped.append(outputs["logits"])
        previous = tf.reshape(top, [n, T * T])[:, position]
    top_logits = model.top_prior_logits(top, labels)
    arrays = {"top": top, "codes": codes, "decoded": model.decode(codes, top),
              "reconstructed": model.reconstruct(images), "log_prob": model.log_prob(images, labels),
              "labels": labels, "top_logits": top_logits, "logits": model.prior_logits(codes, top, labels),
              "stepped": tf.stack(stepped, axis=1),
              "code_log_likelihoods": model.code_log_likelihoods(images, labels),
              "top_code_log_likelihoods": model.top_code_log_likelihoods(images, labels),
              **{f"kept_{name}": value for name, value in model.heal(images, 1e-30, 0, 8, labels).items()},
              **{f"healed_{name}": value for name, value in model.heal(images, 0.5, 0, 8, labels).items()}}
    np.savez(sys.argv[3], **{name: np.asarray(value) for name, value in arrays.items()})

    K_top = top_logits.shape[-1]
    def tops(*values):  # one top grid per value, each all zeros but its last code
        grids = np.zeros((len(values), T, T), np.int32)
        grids[:, -1, -1] = values
        return tf.constant(grids)
    zeros, label = tf.zeros([1, G, G], tf.int32), tf.constant([0])
    calls = {f"{endpoint} top code {value}": call
             for value in (-1, K_top, 9999) for endpoint, call in (
                 ("decode", lambda v=value: model.decode(zeros, tops(v))),
                 ("prior_logits", lambda v=value: model.prior_logits(zeros, tops(v), label)),
                 ("prior_start", lambda v=value: model.prior_start(1, tops(v), label)),
                 ("top_prior_logits", lambda v=value: model.top_prior_logits(tops(v), label)))}
    errors = {}
    for name, call in calls.items():
        try:
            call()
            errors[name] = {"error": None}
        except Exception as error:
            errors[name] = {"error": type(error).__name__, "message": getattr(error, "message", str(error))}
    edge = list(model.decode(tf.zeros([2, G, G], tf.int32), tops(0, K_top - 1)).shape)
    print(json.dumps({"metadata": meta, "errors": errors, "edge": edge}))
""")


@pytest.fixture(scope="module")
def called_hierarchical(trained_hierarchical, tmp_path_factory):
    """(the export's metadata, {bad call: its error}, decode's shape at the top codes' edge, {name: array} of
    the endpoints' outputs) for test slices of the hierarchical run, from a fresh process."""
    out, _, data, _ = trained_hierarchical
    folder = tmp_path_factory.mktemp("plain_hierarchical")
    paths = sorted((data / "test").rglob("*.jpeg"))[::5]
    np.save(folder / "images.npy", np.stack([dataset.decode_image(str(path), 32).numpy() for path in paths]))
    result = run([sys.executable, "-c", HIERARCHICAL_SCRIPT, str(out), str(folder / "images.npy"),
                  str(folder / "outputs.npz")], cwd=folder, env={"PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    with np.load(folder / "outputs.npz") as outputs:
        return printed["metadata"], printed["errors"], printed["edge"], dict(outputs)


def test_a_hierarchical_export_encodes_a_top_grid_and_decodes_both_levels(called_hierarchical):
    metadata, _, edge, outputs = called_hierarchical
    n, grid, top_grid = len(outputs["codes"]), metadata["grid"], metadata["top_grid"]
    assert (grid, top_grid, n) == (8, 4, len(outputs["reconstructed"])) and n >= 2
    assert outputs["top"].shape == (n, top_grid, top_grid) and outputs["codes"].shape == (n, grid, grid)
    np.testing.assert_allclose(outputs["decoded"], outputs["reconstructed"], atol=1e-5)
    assert edge == [2, 32, 32, 1]


def _log_likelihood(logits, codes):
    """The sum over each grid of log-softmax(logits) [N, g, g, K] at `codes` [N, g, g], in float64."""
    logits = logits.astype(np.float64)
    peak = logits.max(axis=-1, keepdims=True)
    log_p = logits - peak - np.log(np.exp(logits - peak).sum(axis=-1, keepdims=True))
    return np.take_along_axis(log_p, codes[..., None], axis=-1).sum(axis=(1, 2, 3))


def test_a_hierarchical_log_prob_is_the_sum_of_both_levels(called_hierarchical):
    outputs = called_hierarchical[3]
    expected = (_log_likelihood(outputs["top_logits"], outputs["top"])
                + _log_likelihood(outputs["logits"], outputs["codes"]))
    np.testing.assert_allclose(outputs["log_prob"], expected, rtol=1e-4)


def test_the_top_prior_step_fed_the_top_codes_reproduces_top_prior_logits(called_hierarchical):
    outputs = called_hierarchical[3]
    n, top_grid, num_codes = outputs["top"].shape[0], outputs["top"].shape[1], outputs["top_logits"].shape[-1]
    full = outputs["top_logits"].reshape(n, top_grid ** 2, num_codes)
    np.testing.assert_allclose(outputs["stepped"], full, atol=1e-4 * np.abs(full).max())


def _named_wrongly(errors, endpoints):
    return {name: error for name, error in errors.items() if name.split()[0] in endpoints
            and (error["error"] != "InvalidArgumentError" or "top_codes: expected" not in error["message"])}


def test_top_codes_out_of_range_are_an_invalid_argument_error_naming_top_codes(called_hierarchical):
    errors = called_hierarchical[1]
    wrong = _named_wrongly(errors, ("decode", "prior_logits", "prior_start"))
    assert len(errors) == 12 and not wrong, json.dumps(wrong, indent=1)[:4000]


def test_top_prior_logits_names_top_codes_out_of_range(called_hierarchical):
    wrong = _named_wrongly(called_hierarchical[1], ("top_prior_logits",))
    assert not wrong, json.dumps(wrong, indent=1)[:4000]


def test_per_position_log_likelihoods_of_both_levels_sum_to_log_prob(called_hierarchical):
    outputs = called_hierarchical[3]
    n, grid, top_grid = outputs["codes"].shape[0], outputs["codes"].shape[1], outputs["top"].shape[1]
    assert outputs["code_log_likelihoods"].shape == (n, grid, grid)
    assert outputs["top_code_log_likelihoods"].shape == (n, top_grid, top_grid)
    total = outputs["code_log_likelihoods"].sum(axis=(1, 2)) + outputs["top_code_log_likelihoods"].sum(axis=(1, 2))
    np.testing.assert_allclose(total, outputs["log_prob"], rtol=1e-4)


def test_healing_below_every_likelihood_keeps_the_reconstruction_and_maps_nothing(called_hierarchical):
    metadata, _, _, outputs = called_hierarchical
    assert metadata["scan_orders"] == 8
    for name in ("anomaly", "replaced", "score", "codes_replaced"):
        assert not outputs[f"kept_{name}"].any(), name
    np.testing.assert_allclose(outputs["kept_healed"], outputs["reconstructed"], atol=1e-5)


def test_healing_at_a_high_threshold_replaces_codes_and_maps_only_where_it_did(called_hierarchical):
    outputs = called_hierarchical[3]
    assert outputs["healed_codes_replaced"].min() > 0
    assert outputs["healed_anomaly"].min() >= 0 and outputs["healed_anomaly"].max() > 0
    np.testing.assert_allclose(outputs["healed_score"], outputs["healed_anomaly"].max(axis=(1, 2, 3)), rtol=1e-5)
    assert 0 <= outputs["healed_replaced"].min() and outputs["healed_replaced"].max() <= 1
