"""train.py under interruption and bad input: SIGKILL and Ctrl-C then --resume, time limits, one-line errors."""

import json
import shlex
import signal
import subprocess
import sys
import time

import keras
import pytest
import tensorflow as tf
from PIL import Image

from checkpoints import CheckpointState, EpochCheckpoints
import train
from callbacks import TrainingClock
from conftest import ROOT, call_main, run, write_adni
from conftest import TINY as TINY_TWO_EPOCHS

# Three epochs a stage, so that a run can be stopped in the middle one; deterministic, so that a resumed run
# can be compared with an uninterrupted one number for number.
TINY = [*TINY_TWO_EPOCHS, "--epochs", "3", "--prior-epochs", "3", "--deterministic"]


@pytest.fixture(scope="module")
def adni(tmp_path_factory):
    """ADNI layout with 14 steps of 8 images per epoch, so that an epoch lasts long enough to interrupt."""
    return write_adni(tmp_path_factory.mktemp("data") / "AD_NC", train_patients=8, test_patients=2, slices=8)


def interrupt_when(state_path, epochs_done, sig, command):
    """Run `command`; send `sig` as soon as `state_path` records `epochs_done` epochs. Returns the result and
    the state seen at that moment."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = None
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        try:
            seen = json.loads(state_path.read_text())
        except (OSError, ValueError):
            seen = None
        if seen and seen["epochs_done"] >= epochs_done:
            process.send_signal(sig)
            break
        time.sleep(0.02)
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr, seen


def test_killed_and_interrupted_run_resumes_to_the_uninterrupted_result(adni, tmp_path):
    def command(name, *extra):
        return [sys.executable, "train.py", "--data", str(adni), "--out", str(tmp_path / name / "vqvae"),
                "--logdir", str(tmp_path / name / "logs"), *TINY, *extra]

    reference = run(command("reference"))
    assert reference.returncode == 0, reference.stderr[-3000:]

    checkpoints = tmp_path / "resumed" / "vqvae_checkpoints"
    # SIGKILL during the VQ-VAE's epoch 2: no chance to clean up.
    code, _, _, seen = interrupt_when(checkpoints / "vqvae" / "state.json", 1, signal.SIGKILL, command("resumed"))
    assert code == -signal.SIGKILL and seen["epochs_done"] == 1 and seen["optimizer_iterations"] == 14
    assert not (tmp_path / "resumed" / "vqvae").exists()  # no export from a killed run
    # Resume; Ctrl-C once during the prior's epoch 2: it finishes and saves the epoch in progress, then stops.
    code, _, stderr, seen = interrupt_when(checkpoints / "prior" / "state.json", 1, signal.SIGINT,
                                           command("resumed", "--resume"))
    assert code == 130, stderr[-3000:]
    assert "--resume" in stderr.strip().splitlines()[-1] and "Traceback" not in stderr
    prior_state = json.loads((checkpoints / "prior" / "state.json").read_text())
    # Epoch 2 as a rule; epoch 1 when the signal lands while epoch 1's end-of-epoch callbacks still run.
    assert prior_state["epochs_done"] in (1, 2)
    assert prior_state["optimizer_iterations"] == prior_state["epochs_done"] * 14
    assert not (tmp_path / "resumed" / "vqvae").exists()
    # Resume again: it finishes both stages with the optimizer's step count continued.
    finished = run(command("resumed", "--resume"))
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "Resuming from" in finished.stdout
    for stage in ("vqvae", "prior"):
        state = json.loads((checkpoints / stage / "state.json").read_text())
        assert state["epochs_done"] == 3 and state["optimizer_iterations"] == 3 * 14
        assert sorted(p.name for p in (checkpoints / stage).iterdir()) == sorted({"state.json", state["latest"],
                                                                                    state["best"]})
    expected = json.loads((tmp_path / "reference" / "vqvae" / "metrics.json").read_text())
    resumed = json.loads((tmp_path / "resumed" / "vqvae" / "metrics.json").read_text())
    for key in ("ssim_mean", "psnr_mean", "mse_mean", "perplexity", "prior_validation_bits_per_code"):
        assert resumed[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
    assert resumed["codes_used"] == expected["codes_used"] and resumed["epochs_run"] == 3


def test_max_minutes_stops_exports_and_says_how_to_resume(adni, tmp_path):
    out = tmp_path / "vqvae"
    result = run([sys.executable, "train.py", "--data", str(adni), "--out", str(out), "--logdir",
                  str(tmp_path / "logs"), *TINY, "--stage", "vqvae", "--max-minutes", "0.0001"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--max-minutes 0.0001 in epoch 1 of 3" in result.stdout and "--resume" in result.stdout
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 1
    again = run([sys.executable, "train.py", "--data", str(adni), "--out", str(out), "--logdir",
                 str(tmp_path / "logs"), *TINY, "--stage", "vqvae", "--resume", "--channels", "32"])
    assert again.returncode != 0 and "Traceback" not in again.stderr
    assert "--resume: the run in" in again.stderr and "used --channels 16, not 32" in again.stderr


def write_corrupt_adni(root):
    data = write_adni(root / "AD_NC", train_patients=4, test_patients=2, slices=4)
    (data / "train" / "AD" / "100001_70.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return data


def write_unknown_layout(root):
    (root / "notes").mkdir(parents=True)
    (root / "notes" / "readme.txt").write_text("no images here")
    return root / "notes"


def write_empty(root):
    (root / "empty").mkdir(parents=True)
    return root / "empty"


@pytest.mark.parametrize("make, args, message", [
    (write_empty, [], "found no images"),
    (write_unknown_layout, [], "found no images"),
    (write_corrupt_adni, [], "100001_70.jpeg: not a readable PNG/JPEG"),
    (lambda root: write_adni(root / "AD_NC", 4, 1, 2), ["--learning-rate", "1e12", "--epochs", "2"],
     "--learning-rate 1e+12: the vqvae training loss became NaN"),
    (lambda root: write_adni(root / "AD_NC", 4, 1, 2), ["--batch-size", "64"], "--batch-size 64: the training split"),
    (lambda root: write_adni(root / "AD_NC", 4, 1, 2), ["--resume"], "--resume: no saved run"),
    (lambda root: write_adni(root / "AD_NC", 4, 1, 2), ["--strategy", "multiworker"], "set TF_CONFIG"),
])
def test_bad_data_gives_one_line_and_no_outputs(tmp_path, capsys, monkeypatch, make, args, message):
    data = make(tmp_path / "in")
    out = tmp_path / "out" / "vqvae"
    monkeypatch.setenv("TF_CONFIG", "")
    # In this process, so without --deterministic, which TensorFlow cannot turn off again.
    tiny = [flag for flag in TINY if flag != "--deterministic"]
    result = call_main(train.main, ["--data", str(data), "--out", str(out), "--logdir", str(tmp_path / "logs"),
                                    *tiny, "--epochs", "1", *args], capsys)
    assert result.returncode not in (0, None) and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, result.stderr[-2000:]
    assert not out.exists()


def test_skip_bad_skips_and_counts_unreadable_files(tmp_path):
    data = write_corrupt_adni(tmp_path)
    (data / "train" / "NC" / "notes.txt").write_text("not an image, ignored")
    Image.new("RGBA", (300, 200), (200, 10, 10, 255)).save(data / "train" / "NC" / "100005_90.png")
    result = run([sys.executable, "train.py", "--data", str(data), "--out", str(tmp_path / "out"), "--logdir",
                  str(tmp_path / "logs"), *TINY, "--epochs", "1", "--stage", "vqvae", "--skip-bad"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Skipped 1 unreadable image files (--skip-bad)" in result.stdout
    assert (tmp_path / "out" / "saved_model.pb").exists()


def test_best_vqvae_checkpoint_is_chosen_by_validation_reconstruction_loss_not_total_loss(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    checkpoints = EpochCheckpoints(CheckpointState(tmp_path, settings={}), TrainingClock(), "val_reconstruction_loss")
    checkpoints.set_model(model)
    # The total loss keeps falling while the reconstruction loss is lowest after epoch 2.
    for epoch, (val_loss, val_reconstruction_loss) in enumerate([(3.0, 0.9), (2.0, 0.5), (1.0, 0.7)]):
        checkpoints.on_epoch_end(epoch, {"loss": 1.0, "val_loss": val_loss,
                                         "val_reconstruction_loss": val_reconstruction_loss})
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["best"] == "epoch-0002.weights.h5" and saved["best_epoch"] == 2
    assert saved["latest"] == "epoch-0003.weights.h5"
    assert sorted(path.name for path in tmp_path.glob("epoch-*.weights.h5")) == ["epoch-0002.weights.h5",
                                                                               "epoch-0003.weights.h5"]


def in_process(tmp_path, data, *extra):
    """train.py's command line for a tiny in-process run on `data` (without --deterministic, which TensorFlow
    cannot turn off again in this process)."""
    tiny = [flag for flag in TINY if flag != "--deterministic"]
    return ["--data", str(data), "--out", str(tmp_path / "out" / "vqvae"), "--logdir", str(tmp_path / "logs"), *tiny,
            *extra]


def test_a_full_disk_during_export_keeps_the_checkpoints_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    data = write_adni(tmp_path / "AD_NC", 4, 1, 2)
    out = tmp_path / "out" / "vqvae"
    argv = in_process(tmp_path, data, "--epochs", "1", "--stage", "vqvae")

    def full_disk(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, f"{out}: No space left on device")

    monkeypatch.setattr(train, "export_savedmodel", full_disk)
    monkeypatch.setattr(sys, "argv", ["train.py", *argv])  # what the resume command repeats
    result = call_main(train.main, argv, capsys)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: --out {out}: cannot write the export (ResourceExhaustedError: ")
    assert f"the checkpoints are kept in {out}_checkpoints/" in line
    assert line.endswith(shlex.join(["python", "train.py", *argv, "--resume"]))
    assert json.loads((tmp_path / "out" / "vqvae_checkpoints" / "vqvae" / "state.json").read_text())["epochs_done"] == 1
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["vqvae_checkpoints"]  # no half export
    monkeypatch.undo()
    resumed = call_main(train.main, [*argv, "--resume"], capsys)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming from" in resumed.stdout and (out / "saved_model.pb").exists()


@pytest.mark.parametrize("prior_batch_size, message", [
    ("64", "--prior-batch-size 64: the training split has only 12 images; expected at most that"),
    ("100000000", "--prior-batch-size 100000000 "),  # nor could it fit in memory
])
def test_a_prior_batch_larger_than_the_data_is_refused_before_the_vqvae_trains(tmp_path, capsys, prior_batch_size,
                                                                              message):
    # 4 + 4 train patients of 2 slices, of which one patient per class is held out for validation: 12 images.
    data = write_adni(tmp_path / "AD_NC", 4, 1, 2)
    result = call_main(train.main, in_process(tmp_path, data, "--prior-batch-size", prior_batch_size), capsys)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]
    out = tmp_path / "out" / "vqvae"
    assert not out.exists() and not (tmp_path / "out" / "vqvae_checkpoints").exists()  # the VQ-VAE never trained


def test_a_million_epochs_with_a_time_limit_start_at_once_and_stop_in_time(tmp_path, capsys):
    data = write_adni(tmp_path / "AD_NC", 4, 1, 2)
    result = call_main(train.main, in_process(tmp_path, data, "--stage", "vqvae", "--epochs", "1000000",
                                              "--max-minutes", "0.01"), capsys)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Stopped the vqvae training after --max-minutes 0.01 in epoch" in result.stdout
    assert "of 1000000" in result.stdout
