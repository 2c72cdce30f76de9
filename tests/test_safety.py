"""Never losing a user's files or runs: outputs the tools refuse, one run per output, resume that checks the
data, bounded generation, and one-line errors instead of tracebacks (issue 12's cases, each a test)."""

import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import dataset
import predict
import train
from checkpoints import CheckpointState, ResumeError
from conftest import ROOT, TINY, call_main, fake_slice, run, tiny_prior, write_adni
from export import load_export
from metrics import evaluate_reconstructions, prior_scorer
from utils import MARKER, RunLock, mark_as_ours, write_json

QUICK = [*TINY, "--epochs", "1", "--stage", "vqvae"]


def refused(main, argv, capsys):
    """Run a tool's main in this process; assert it exits 2, and return the last line it wrote to stderr."""
    result = call_main(main, argv, capsys)
    assert result.returncode == 2, result.stderr[-2000:]
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_adni(tmp_path_factory.mktemp("data") / "AD_NC", train_patients=4, test_patients=2, slices=2)


# 1. Outputs never destroy what the tool did not write.

def test_out_on_a_folder_the_tool_did_not_write_is_refused_and_kept(data, tmp_path):
    out = tmp_path / "x"
    (out / "sub").mkdir(parents=True)
    (out / "precious.txt").write_text("keep")
    result = run([sys.executable, "train.py", "--data", str(data), *QUICK, "--out", str(out), "--logdir",
                  str(tmp_path / "logs")])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "a folder that this tool did not write is there" in result.stderr.strip().splitlines()[-1]
    assert (out / "precious.txt").read_text() == "keep" and (out / "sub").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no checkpoints, no logs


@pytest.mark.parametrize("target, message", [("a-file", "a file is there"), (".", "not the working directory")])
def test_out_on_a_file_or_the_working_directory_is_refused_before_any_work(data, tmp_path, monkeypatch, capsys,
                                                                           target, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("mine")
    line = refused(train.main, ["--data", str(data), *QUICK, "--out", target], capsys)
    assert message in line and (tmp_path / "a-file").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_an_export_is_replaced_by_the_next_run_on_the_same_out(trained, tmp_path, capsys):
    out, _, data, _ = trained
    copy = tmp_path / "vqvae"
    shutil.copytree(out, copy)
    assert (copy / MARKER).exists()
    train.main(["--data", str(data), *QUICK, "--out", str(copy), "--logdir", str(tmp_path / "logs")])
    config = json.loads((copy / "config.json").read_text())
    assert config["stage"] == "vqvae" and not (copy / "prior.keras").exists()


# 2. One run per output.

def test_a_second_run_on_the_same_out_is_refused_while_the_first_holds_the_lock(data, tmp_path, capsys):
    out = tmp_path / "run" / "vqvae"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from utils import RunLock
        with RunLock({str(out) + '_checkpoints'!r}):
            print("locked", flush=True)
            time.sleep(120)
    """)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = refused(train.main, ["--data", str(data), *QUICK, "--out", str(out), "--logdir",
                                    str(tmp_path / "logs")], capsys)
        assert f"--out {out}: another run is writing in {out}_checkpoints" in line and f"pid {holder.pid}" in line
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The SIGKILLed holder left its lock file, which no longer locks anything.
    assert (Path(f"{out}_checkpoints") / "lock").exists()
    with RunLock(Path(f"{out}_checkpoints")) as lock:
        assert f"pid {os.getpid()}" in lock.path.read_text()


# 3. A re-run that fails keeps the previous run's checkpoints.

def write_saved_state(folder, epochs=3):
    """A finished stage's checkpoint folder as train.py leaves it (the weights files are stand-ins)."""
    folder.mkdir(parents=True)
    mark_as_ours(folder.parent, "checkpoints", folder.parent.name.removesuffix("_checkpoints"))
    for epoch in (2, epochs):
        (folder / f"epoch-{epoch:04d}.weights.h5").write_bytes(b"weights of epoch %d" % epoch)
    write_json(folder / "state.json", {"settings": {}, "epochs_done": epochs, "latest": f"epoch-{epochs:04d}.weights.h5",
                                       "best": "epoch-0002.weights.h5", "best_score": 0.1, "best_epoch": 2})
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def test_a_failed_rerun_keeps_the_resumable_state(data, tmp_path, capsys):
    out = tmp_path / "r"
    before = write_saved_state(tmp_path / "r_checkpoints" / "vqvae")
    line = refused(train.main, ["--data", str(data), *QUICK, "--batch-size", "1000", "--out", str(out),
                                "--logdir", str(tmp_path / "logs")], capsys)
    assert "--batch-size 1000" in line
    folder = tmp_path / "r_checkpoints" / "vqvae"
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_a_fresh_run_replaces_the_earlier_checkpoints_only_once_its_first_epoch_is_saved(tmp_path):
    import keras

    folder = tmp_path / "r_checkpoints" / "vqvae"
    before = write_saved_state(folder, epochs=1)
    state = CheckpointState.open(folder, {"seed": 1}, resume=False, required=True)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)

    class Clock:
        seconds, steps = 1.0, 4

    state.record_epoch(model, 1, 0.5, "val_loss", Clock())
    assert sorted(path.name for path in folder.iterdir()) == ["epoch-0001.weights.h5", "state.json"]
    saved = json.loads((folder / "state.json").read_text())
    assert saved["settings"] == {"seed": 1} and saved["epochs_done"] == 1
    assert (folder / "epoch-0001.weights.h5").read_bytes() != before["epoch-0001.weights.h5"]


# 4. --resume checks what the data is, not how it was spelled.

def test_resume_is_refused_on_other_data_and_accepted_for_the_same_folder_spelled_otherwise(tmp_path, monkeypatch,
                                                                                          capsys):
    first, second = tmp_path / "one", tmp_path / "two"
    for cwd, seed in ((first, 0), (second, 1)):
        write_adni(cwd / "data" / "AD_NC", train_patients=4, test_patients=2, slices=2, seed=seed)
    out = tmp_path / "out" / "vqvae"
    command = ["--data", "data", *QUICK, "--out", str(out), "--logdir", str(tmp_path / "logs"), "--max-minutes",
               "0.0001", "--epochs", "2"]
    monkeypatch.chdir(first)
    train.main(command)
    monkeypatch.chdir(second)  # the same relative --data names other images here
    line = refused(train.main, [*command, "--resume"], capsys)
    assert f"used --data {first / 'data'}, not {second / 'data'}" in line
    monkeypatch.chdir(first)
    removed = first / "data" / "AD_NC" / "test" / "AD" / "100009_70.jpeg"
    original = removed.read_bytes()
    removed.unlink()  # the same folder, other files
    line = refused(train.main, [*command, "--resume"], capsys)
    assert "the data changed since the run" in line and "the test split had 8 files" in line and "now 7" in line
    removed.write_bytes(original)
    monkeypatch.chdir(first / "data")
    train.main([*command[:1], "../data/", *command[2:], "--resume"])  # the same data, spelled otherwise
    assert "Resuming from" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["data"] == str(first / "data") and config["data_fingerprint"]["splits"]["test"]["files"] == 8


def test_resume_with_a_missing_or_damaged_checkpoint_gives_one_reason(tmp_path):
    folder = tmp_path / "c" / "vqvae"
    write_saved_state(folder)
    (folder / "epoch-0003.weights.h5").unlink()
    with pytest.raises(ResumeError, match="epoch-0003.weights.h5, named by state.json, is missing"):
        CheckpointState.open(folder, {}, resume=True, required=True)
    (folder / "state.json").write_text('{"settings": {}, "epo')
    with pytest.raises(ResumeError, match="state.json: not a readable state"):
        CheckpointState.open(folder, {}, resume=True, required=True)


# 5. Bounded generation.

def test_generation_runs_in_batches_and_the_first_batch_is_the_exports_sample(trained, tmp_path, capsys):
    out, _, _, _ = trained
    predict.main(["--model", str(out), "--n", "5", "--batch-size", "2", "--seed", "3", "--out", str(tmp_path / "p")])
    names = sorted(path.name for path in (tmp_path / "p").glob("sample_*.png"))
    assert names == [f"sample_{i:03d}.png" for i in range(5)] + ["sample_grid.png"]
    first = np.asarray(Image.open(tmp_path / "p" / "sample_000.png"))
    export = tf.saved_model.load(str(out))  # kept: the endpoints need the object's variables alive
    expected = export.sample(2, 1.0, 3, 0, 1.0, False).numpy()[0, ..., 0]
    np.testing.assert_array_equal(first, np.round(expected * 255).astype(np.uint8))
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "p" / "sample_002.png")), first)


def test_top_k_1_generation_writes_the_exports_greedy_images(trained, tmp_path):
    out, _, _, _ = trained
    predict.main(["--model", str(out), "--n", "2", "--top-k", "1", "--label", "NC", "--no-keep-background",
                  "--out", str(tmp_path / "p")])
    export = tf.saved_model.load(str(out))
    # Temperature near 0: the most likely code everywhere.
    greedy = export.sample_class(2, 1, 1e-20, 9, 0, 1.0, False).numpy()
    for index in range(2):
        written = np.asarray(Image.open(tmp_path / "p" / f"sample_NC_{index:03d}.png"))
        np.testing.assert_array_equal(written, np.round(greedy[index, ..., 0] * 255).astype(np.uint8))


def test_generation_keeps_background_by_default_as_the_exports_keep_background_argument_does(trained, tmp_path):
    out, _, _, _ = trained
    predict.main(["--model", str(out), "--n", "2", "--temperature", "0.5", "--label", "NC", "--out",
                  str(tmp_path / "p")])
    export = tf.saved_model.load(str(out))
    kept = export.sample_class(2, 1, 0.5, 0, 0, 1.0, True).numpy()
    plain = export.sample_class(2, 1, 0.5, 0, 0, 1.0, False).numpy()
    assert not np.array_equal(kept, plain)
    for index in range(2):
        written = np.asarray(Image.open(tmp_path / "p" / f"sample_NC_{index:03d}.png"))
        np.testing.assert_array_equal(written, np.round(kept[index, ..., 0] * 255).astype(np.uint8))


def write_stale_export(path, metadata, endpoints=()):
    """A SavedModel with the encode/decode/reconstruct/metadata endpoints of a 32x32 export, its metadata()
    returning `metadata`, plus do-nothing `endpoints`: what an earlier version of train.py might have left."""
    module = tf.Module()
    images, codes = tf.TensorSpec([None, 32, 32, 1], tf.float32), tf.TensorSpec([None, 8, 8], tf.int32)
    module.encode = tf.function(lambda x: tf.zeros([tf.shape(x)[0], 8, 8], tf.int32), input_signature=[images])
    module.decode = tf.function(lambda c: tf.zeros([tf.shape(c)[0], 32, 32, 1]), input_signature=[codes])
    module.reconstruct = tf.function(lambda x: x, input_signature=[images])
    module.metadata = tf.function(lambda: tf.constant(json.dumps(metadata)), input_signature=[])
    for name in endpoints:
        setattr(module, name, tf.function(lambda x: x, input_signature=[images]))
    tf.saved_model.save(module, str(path))


CURRENT_METADATA = {"image_size": 32, "grid": 8, "top_grid": 0, "num_codes": 16, "class_names": [], "class_counts": [],
                    "has_prior": False, "has_texture": True, "has_denoiser": True, "scan_orders": 0}


@pytest.mark.parametrize("metadata, endpoints, missing", [
    ({key: value for key, value in CURRENT_METADATA.items() if key != "has_texture"},
     ("denoise", "noise_sigma"), "metadata without has_texture:"),
    ({**CURRENT_METADATA, "has_prior": True}, ("texture", "denoise", "noise_sigma", "sample"),
     "no prior_logits, log_prob, prior_start, prior_step, code_log_likelihoods, heal endpoints:"),
])
def test_a_stale_export_gets_one_line_asking_to_retrain_it(metadata, endpoints, missing, tmp_path, capsys):
    stale = tmp_path / "stale"
    write_stale_export(stale, metadata, endpoints)
    result = call_main(predict.main, ["--model", str(stale), "--n", "2", "--out", str(tmp_path / "p")], capsys)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: --model {stale}: ") and missing in line
    assert line.endswith(f": made by an earlier version of this project; retrain it (python train.py --out {stale})")
    assert not (tmp_path / "p").exists()
    current = tmp_path / "current"
    # What train.py writes today is accepted.
    write_stale_export(current, CURRENT_METADATA, ["texture", "denoise", "noise_sigma"])
    assert load_export(current)[1] == CURRENT_METADATA


@pytest.mark.parametrize("flags, message", [
    (["--n", "2000000"], "--n 2000000: expected a number of images from 1 to 1,000,000"),
    (["--temperature", "nan"], "--temperature nan: expected a finite positive number"),
    (["--temperature", "inf"], "--temperature inf: expected a finite positive number"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--top-k", "-1"], "--top-k -1: expected 0 (keep all codes) or a positive number"),
    (["--top-p", "0"], "--top-p 0.0: expected a probability above 0 and at most 1"),
    (["--top-p", "1.5"], "--top-p 1.5: expected a probability above 0 and at most 1"),
])
def test_absurd_generation_flags_are_refused(flags, message, capsys):
    assert message in refused(predict.main, flags, capsys)


def test_tiny_temperature_samples_the_most_likely_codes():
    model = tiny_prior()
    sampled = tf.function(lambda: model.sample(2, temperature=1e-46, seed=3))().numpy()
    assert sampled.min() >= 0 and sampled.max() < model.num_codes
    np.testing.assert_array_equal(sampled, tf.function(lambda: model.sample(2, temperature=1e-7, seed=3))().numpy())


# 6. One line instead of a traceback.

def test_a_file_name_that_is_not_utf8_is_named_in_one_line(tmp_path, capsys):
    data = write_adni(tmp_path / "AD_NC", train_patients=4, test_patients=2, slices=2)
    folder = os.fsencode(data / "train" / "NC")
    with open(os.path.join(folder, b"100009\xff_70.jpeg"), "wb") as handle:
        fake_slice(np.random.default_rng(0), 256, 240).save(handle, format="JPEG")
    line = refused(train.main, ["--data", str(data), *QUICK, "--out", str(tmp_path / "o")], capsys)
    assert "100009\\udcff_70.jpeg" in line and "not valid UTF-8" in line


@pytest.mark.parametrize("flag", ["--out", "--logdir"])
def test_outputs_where_nothing_can_be_written_are_refused_before_any_work(data, tmp_path, capsys, flag):
    outputs = {"--out": str(tmp_path / "o"), "--logdir": str(tmp_path / "logs"), flag: "/proc/brain_vqvae/x"}
    line = refused(train.main, ["--data", str(data), *QUICK, *sum(map(list, outputs.items()), [])], capsys)
    assert line.startswith(f"error: {flag} /proc/brain_vqvae/x: cannot write in /proc")
    assert not list(tmp_path.iterdir())


def write_lookalike(path, drop_variables=False):
    """A SavedModel with this project's endpoint names but other contents."""
    module = tf.Module()
    module.scale = tf.Variable(2.0)
    spec = tf.TensorSpec([None], tf.float32)
    for name in ("encode", "decode", "reconstruct"):
        setattr(module, name, tf.function(lambda x: module.scale * x, input_signature=[spec]))
    module.metadata = tf.function(lambda: tf.constant("not json"), input_signature=[])
    tf.saved_model.save(module, str(path))
    if drop_variables:
        shutil.rmtree(path / "variables")


@pytest.mark.parametrize("drop_variables, message", [(False, "its metadata() is not this project's JSON"),
                                                     (True, "not a loadable SavedModel")])
def test_a_lookalike_savedmodel_is_refused_in_one_line(tmp_path, capsys, drop_variables, message):
    write_lookalike(tmp_path / "m", drop_variables=drop_variables)
    line = refused(predict.main, ["--model", str(tmp_path / "m"), "--out", str(tmp_path / "p")], capsys)
    assert message in line and not (tmp_path / "p").exists()


def test_predict_out_on_a_file_is_refused_before_sampling(trained, tmp_path, capsys):
    out, _, _, _ = trained
    (tmp_path / "p").write_text("mine")
    line = refused(predict.main, ["--model", str(out), "--out", str(tmp_path / "p")], capsys)
    assert "--out" in line and "a file is there" in line and (tmp_path / "p").read_text() == "mine"


# 7. Smaller wrong answers.

class Identity:
    """A stand-in export whose codes are the pixels: every reconstruction is exact."""

    def encode(self, images):
        return tf.cast(tf.round(images[..., 0] * 3), tf.int32)

    def reconstruct(self, images):
        return tf.round(images * 3) / 3


def test_exact_reconstructions_give_strict_json_not_infinity(tmp_path):
    images = tf.zeros((4, 16, 16, 1))
    batches = tf.data.Dataset.from_tensor_slices((images, tf.fill([4], -1))).batch(2)
    summary, per_image, _ = evaluate_reconstructions(Identity(), batches, num_codes=4)
    assert np.isinf(per_image["psnr"]).all() and summary["psnr_mean"] is None and summary["n_exact"] == 4
    write_json(tmp_path / "m.json", {**summary, "nan": math.nan})

    def no_constants(name):
        raise ValueError(f"not strict JSON: {name}")

    assert json.loads((tmp_path / "m.json").read_text(), parse_constant=no_constants)["nan"] is None


def test_skipped_files_are_not_counted_and_upscaled_images_are_reported(tmp_path, capsys):
    data = write_adni(tmp_path / "AD_NC", train_patients=4, test_patients=2, slices=2)
    (data / "test" / "AD" / "100009_70.jpeg").write_bytes(b"\xff\xd8 truncated")
    Image.new("L", (20, 20), 100).save(data / "test" / "NC" / "100011_90.png")
    train.load_data(train.parse_args(["--data", str(data), *QUICK, "--skip-bad"]))
    printed = capsys.readouterr().out
    assert "Skipped 1 unreadable image files" in printed and "test 8 images of 4 patients" in printed
    assert "Note: 1 images are smaller than --image-size 32 and were upscaled" in printed


def test_symlinked_class_folders_are_followed(tmp_path):
    real = write_adni(tmp_path / "real", train_patients=3, test_patients=1, slices=2)
    for split in ("train", "test"):
        for label in ("AD", "NC"):
            (tmp_path / "linked" / split).mkdir(parents=True, exist_ok=True)
            (tmp_path / "linked" / split / label).symlink_to(real / split / label)
    (real / "train" / "AD" / "loop").symlink_to(real / "train" / "AD")  # a cycle is walked once
    source = dataset.load_source(str(tmp_path / "linked"), validation_fraction=0.34)
    assert sum(len(split) for split in source.splits.values()) == 16


def test_a_newline_in_a_file_name_stays_part_of_the_patient():
    assert dataset.patient_id("/d/patient\nseven_12.png") == "patient\nseven"
    assert dataset.patient_id("/d/case_001_slice_3.nii.png") == "case_001"


def test_a_conditional_prior_scores_unknown_classes_under_its_class_mixture():
    class TwoClassExport:
        def log_prob(self, images, labels):  # class 0: -1 per image, class 1: -3
            return tf.where(labels == 0, -1.0, -3.0) * tf.ones(tf.shape(images)[:1])

    metadata = {"has_prior": True, "class_names": ["AD", "NC"], "class_counts": [30, 10]}
    images = tf.zeros((4, 2, 2, 1))
    # Data classes: "NC" is the model's class 1, "MCI" is unknown; -1 is an unlabelled image.
    score = prior_scorer(TwoClassExport(), metadata, ["MCI", "NC"])
    scores = score(images, tf.constant([1, 0, -1, 1])).numpy()
    mixture = np.log(0.75 * np.exp(-1.0) + 0.25 * np.exp(-3.0))
    np.testing.assert_allclose(scores, [-3.0, mixture, mixture, -3.0], rtol=1e-6)


def test_unreadable_files_are_named_without_a_flag_predict_lacks(oasis_root, tmp_path_factory, trained, capsys):
    out, _, _, _ = trained
    (oasis_root / "keras_png_slices_test" / "case_005_slice_0.nii.png").write_bytes(b"\x89PNG broken")
    line = refused(predict.main, ["--model", str(out), "--evaluate", str(oasis_root), "--out",
                                  str(tmp_path_factory.mktemp("outputs") / "e")], capsys)  # not inside the data
    assert "case_005_slice_0.nii.png: not a readable" in line and "--skip-bad" not in line


def test_a_model_file_is_named_as_the_wrong_kind_of_path(trained, tmp_path, capsys):
    out, _, _, _ = trained
    line = refused(predict.main, ["--model", str(out / "model.keras"), "--out", str(tmp_path / "p")], capsys)
    assert "a file; expected the SavedModel folder" in line and "train.py --out" not in line


def test_curves_of_an_empty_folder_leave_no_output_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = refused(predict.main, ["--curves", str(tmp_path / "empty"), "--out", str(tmp_path / "p")], capsys)
    assert "no TensorBoard logs" in line and not (tmp_path / "p").exists()


def test_the_printed_tensorboard_command_is_shell_quoted(tmp_path, capsys):
    logdir = tmp_path / "logs $(touch pwned)"
    run_ = train.Run(out=tmp_path / "o", logdir=logdir, scratch=None, is_chief=True, strategy=None, jit=False)
    metrics = {"n_images": 1, "ssim_mean": 0.5, "ssim_std": 0.0, "psnr_mean": 20.0, "codes_used": 1,
               "num_codes": 2, "perplexity": 1.0, "train_seconds": 1.0, "train_images_per_second": 1.0}
    train.report(run_, metrics)
    line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("TensorBoard:")][0]
    assert shlex.split(line.split(":", 1)[1]) == ["tensorboard", "--logdir", str(logdir)]
