"""Outputs that know what they are (issue 27): each folder's marker names its kind and its run; train.py refuses
another kind's folder, another run's checkpoints and the data folder; predict.py locks its --out and replaces
it as a whole; a run that fails early leaves nothing behind."""

import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import predict
import train
from conftest import ROOT, TINY, call_main, write_adni
from utils import MARKER, RunLock, mark_as_ours, marker_of

QUICK = [*TINY, "--epochs", "1", "--stage", "vqvae"]


def refused(main, argv, capsys):
    """Run a tool's main in this process; assert it exits 2 with one line, and return that line."""
    result = call_main(main, argv, capsys)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def snapshot(folder):
    """{relative path: bytes (None for a folder)} of everything below `folder`, to show nothing changed."""
    return {str(path.relative_to(folder)): None if path.is_dir() else path.read_bytes()
            for path in sorted(Path(folder).rglob("*"))}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_adni(tmp_path_factory.mktemp("data") / "AD_NC", train_patients=4, test_patients=2, slices=2)


def train_argv(data, out, logdir, *extra):
    return ["--data", str(data), *QUICK, "--out", str(out), "--logdir", str(logdir), *extra]


def hold_lock(folder, kind, owner=None):
    """A process that holds utils.RunLock on `folder` (as a running train.py or predict.py would) until killed."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from utils import RunLock
        with RunLock({str(folder)!r}, {kind!r}, {owner!r}):
            print("locked", flush=True)
            time.sleep(300)
    """)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def release(holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()


# Each folder says what it is and which run it belongs to.

def test_every_output_folder_records_its_kind_and_its_run(trained, tmp_path, capsys, monkeypatch):
    out, _, _, _ = trained
    monkeypatch.setattr(sys, "argv", ["predict.py"])  # the command line a marker records
    assert marker_of(out)["kind"] == "export"
    checkpoints = marker_of(Path(f"{out}_checkpoints"))
    assert checkpoints["kind"] == "checkpoints" and checkpoints["owner"] == out.name
    assert "--out" in checkpoints["command"] and str(out) in checkpoints["command"]
    assert not (Path(f"{out}_checkpoints") / "lock").exists()  # the lock file goes with its run
    call_main(predict.main, ["--model", str(out), "--n", "2", "--out", str(tmp_path / "p")], capsys)
    assert marker_of(tmp_path / "p") == {"written_by": "brain_vqvae", "kind": "predictions", "command": "predict.py"}


# Lost or overwritten work, case 1: train.py --out on predict.py's outputs.

def test_train_refuses_a_folder_of_predictions(data, tmp_path, capsys):
    predictions = tmp_path / "P"
    mark_as_ours(predictions, "predictions")
    (predictions / "sample_000.png").write_bytes(b"an image")
    before = snapshot(tmp_path)
    line = refused(train.main, train_argv(data, predictions, tmp_path / "logs"), capsys)
    assert line == (f"error: --out {predictions}: holds predict.py's outputs; expected a new or empty folder, or an "
                    f"export of train.py, for the SavedModel (nothing was changed)")
    assert snapshot(tmp_path) == before


def test_the_documentations_figures_are_never_replaced_by_predictions(tmp_path, capsys):
    assert marker_of(ROOT / "assets")["kind"] == "figures"
    shutil.copytree(ROOT / "assets", tmp_path / "assets")
    before = snapshot(tmp_path)
    line = refused(predict.main, ["--model", str(tmp_path / "model"), "--n", "2", "--out", str(tmp_path / "assets")],
                   capsys)
    assert "holds the figures of the documentation; expected a new or empty folder, or predict.py's outputs" in line
    assert snapshot(tmp_path) == before


# Case 2: another run's checkpoint folder as --out, or a folder inside it.

def write_checkpoints(folder, owner):
    """A stage's checkpoints as train.py leaves them for `owner` (weights files are stand-ins)."""
    (folder / "vqvae").mkdir(parents=True)
    mark_as_ours(folder, "checkpoints", owner)
    (folder / "vqvae" / "state.json").write_text('{"epochs_done": 1}')
    (folder / "vqvae" / "epoch-0001.weights.h5").write_bytes(b"weights")


@pytest.mark.parametrize("out, message", [
    ("m1_checkpoints", "holds train.py's checkpoints of --out m1; expected a new or empty folder, or an export"),
    ("m1_checkpoints/new", "inside {tmp}/m1_checkpoints, train.py's checkpoints of --out m1; choose a folder "
                             "outside it"),
    ("m2_checkpoints", "expected a name that does not end in _checkpoints"),
])
def test_train_refuses_another_runs_checkpoints_and_their_name(data, tmp_path, capsys, out, message):
    write_checkpoints(tmp_path / "m1_checkpoints", "m1")
    before = snapshot(tmp_path)
    line = refused(train.main, train_argv(data, tmp_path / out, tmp_path / "logs"), capsys)
    assert line.startswith(f"error: --out {tmp_path / out}: ") and message.format(tmp=tmp_path) in line
    assert snapshot(tmp_path) == before


# Case 3: run B aimed at run A's live checkpoints, or at A's --out.

def test_a_second_run_never_touches_a_live_runs_checkpoints_or_lock(data, tmp_path, capsys):
    live = tmp_path / "cx_checkpoints"
    write_checkpoints(live, "cx")
    holder = hold_lock(live, "checkpoints", "cx")
    try:
        before = snapshot(tmp_path)
        line = refused(train.main, train_argv(data, live, tmp_path / "logs"), capsys)
        assert "holds train.py's checkpoints of --out cx" in line
        line = refused(train.main, train_argv(data, tmp_path / "cx", tmp_path / "logs"), capsys)
        assert line.startswith(f"error: --out {tmp_path / 'cx'}: another run is writing in {live} (pid {holder.pid}")
        assert snapshot(tmp_path) == before
    finally:
        release(holder)


# Case 4: predict.py runs on one --out, at once and one after the other.

def test_a_second_predict_run_on_a_locked_out_is_refused_naming_the_holder(trained, tmp_path, capsys):
    out = tmp_path / "pc"
    holder = hold_lock(out, "predictions")
    try:
        before = snapshot(tmp_path)
        line = refused(predict.main, ["--model", str(trained[0]), "--n", "3", "--seed", "1", "--out", str(out)],
                       capsys)
        assert line.startswith(f"error: --out {out}: another run is writing in {out} (pid {holder.pid}: ")
        assert snapshot(tmp_path) == before
    finally:
        release(holder)


def test_a_new_predict_run_replaces_the_earlier_outputs_as_a_whole(trained, tmp_path, capsys, monkeypatch):
    out = tmp_path / "pc"
    model = str(trained[0])
    first = ["--model", model, "--n", "6", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["predict.py", *first])  # the command line the marker records
    assert call_main(predict.main, first, capsys).returncode == 0
    result = call_main(predict.main, ["--model", model, "--n", "2", "--seed", "1", "--out", str(out)], capsys)
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in out.iterdir()) == [MARKER, "sample_000.png", "sample_001.png",
                                                           "sample_grid.png"]
    assert f"Replaced the earlier outputs in {out} (of `" in result.stdout and "--n 6" in result.stdout
    assert f"Grid:   {out / 'sample_grid.png'}" in result.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pc"]  # no temporary folder left beside it
    # A run that fails leaves the earlier outputs as they were, without a lock file.
    before = snapshot(out)
    line = refused(predict.main, ["--model", model, "--n", "2", "--label", "MCI", "--out", str(out)], capsys)
    assert "--label MCI" in line and snapshot(out) == before


def test_predict_refuses_train_pys_folders(trained, tmp_path, capsys):
    out = trained[0]
    for folder, kind in ((out, "an export of train.py"), (Path(f"{out}_checkpoints"), "train.py's checkpoints")):
        before = snapshot(folder)
        line = refused(predict.main, ["--model", str(out), "--n", "2", "--out", str(folder)], capsys)
        assert line.startswith(f"error: --out {folder}: holds {kind}") and "predict.py's outputs" in line
        assert snapshot(folder) == before


# No output in the data: what the next training run would read as images.

def test_predict_refuses_an_out_in_the_models_training_data_or_in_what_it_reads(trained, tmp_path, capsys):
    out, _, data, _ = trained
    model = ["--model", str(out)]
    before = snapshot(data)
    line = refused(predict.main, [*model, "--n", "2", "--out", str(data / "train" / "AD" / "p")], capsys)
    assert line == (f"error: --out {data / 'train' / 'AD' / 'p'}: inside --model {out}'s training data {data}, "
                    f"whose files are read as input; expected a place apart from it")
    line = refused(predict.main, [*model, "--reconstruct", str(data), "--out", str(data / "r")], capsys)
    assert f"inside --reconstruct {data}, whose files are read as input" in line
    assert snapshot(data) == before
    other = write_adni(tmp_path / "other", train_patients=1, test_patients=1, slices=1)
    for mode in ("--evaluate", "--compress"):
        line = refused(predict.main, [*model, mode, str(other), "--out", str(other / "test" / "e")], capsys)
        assert line == (f"error: --out {other / 'test' / 'e'}: inside {mode} {other}, whose files are read as "
                        f"input; expected a place apart from it")
    coded = tmp_path / "coded"
    mark_as_ours(coded, "predictions")
    (coded / "a.vqz").write_bytes(b"VQ")
    line = refused(predict.main, [*model, "--decompress", str(coded / "a.vqz"), "--out", str(coded)], capsys)
    assert line == (f"error: --out {coded}: --decompress {coded / 'a.vqz'} is inside it, and --out is replaced as a "
                    f"whole when the run ends; expected a folder apart from it")
    assert (coded / "a.vqz").read_bytes() == b"VQ" and not (tmp_path / "other" / "test" / "e").exists()
    line = refused(predict.main, [*model, "--reconstruct-volume", str(tmp_path / "scan.nii"), "--out",
                                  str(data / "r.nii")], capsys)
    assert line.startswith(f"error: --out {data / 'r.nii'}: inside --model {out}'s training data {data}")


def test_metrics_out_inside_out_is_written_with_the_rest(trained, tmp_path, capsys):
    out, _, data, _ = trained
    result = call_main(predict.main, ["--model", str(out), "--evaluate", str(data), "--out", str(tmp_path / "e"),
                                      "--metrics-out", str(tmp_path / "e" / "sub" / "m.json")], capsys)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "e" / "sub" / "m.json").is_file() and (tmp_path / "e" / "evaluation_test.csv").is_file()
    assert f"metrics: {tmp_path / 'e' / 'sub' / 'm.json'}" in result.stdout


@pytest.mark.parametrize("flag", ["--out", "--logdir"])
def test_train_refuses_outputs_below_data(tmp_path, capsys, flag):
    data = write_adni(tmp_path / "AD_NC", train_patients=4, test_patients=2, slices=2)
    outputs = {"--out": tmp_path / "o", "--logdir": tmp_path / "logs", flag: data / "train" / "AD" / "x"}
    before = snapshot(tmp_path)
    line = refused(train.main, ["--data", str(data), *QUICK, *(str(part) for item in outputs.items()
                                                                  for part in item)], capsys)
    assert line.startswith(f"error: {flag} {outputs[flag]}: inside --data {data}, where the next training run")
    assert snapshot(tmp_path) == before


def test_train_refuses_a_logdir_inside_the_tools_outputs(data, tmp_path, capsys):
    mark_as_ours(tmp_path / "P", "predictions")
    line = refused(train.main, train_argv(data, tmp_path / "o", tmp_path / "P" / "logs"), capsys)
    assert f"--logdir {tmp_path / 'P' / 'logs'}: inside {tmp_path / 'P'}, predict.py's outputs" in line


# A run that fails early leaves nothing behind; one that saved an epoch keeps it.

@pytest.mark.parametrize("extra, message", [(["--batch-size", "1000"], "--batch-size 1000"),
                                            (["--resume"], "--resume: no saved run"),
                                            (["--data", "an empty folder"], "found no images")])
def test_a_run_that_fails_early_leaves_nothing_behind(data, tmp_path, tmp_path_factory, capsys, extra, message):
    extra = [str(tmp_path_factory.mktemp("empty")) if part == "an empty folder" else part for part in extra]
    line = refused(train.main, train_argv(data, tmp_path / "new" / "r", tmp_path / "logs", *extra), capsys)
    assert message in line
    assert list(tmp_path.iterdir()) == []  # no r_checkpoints/{lock, .brain_vqvae, vqvae/}, no new/


def test_a_failed_run_in_a_users_empty_folder_leaves_it_empty(data, tmp_path, capsys):
    (tmp_path / "r_checkpoints").mkdir()
    refused(train.main, train_argv(data, tmp_path / "r", tmp_path / "logs", "--batch-size", "1000"), capsys)
    assert [path.name for path in tmp_path.rglob("*")] == ["r_checkpoints"]


# A file output's folder must be there: refused before any work.

def test_a_volume_output_in_a_missing_folder_is_refused_before_any_work(tmp_path, capsys):
    line = refused(predict.main, ["--model", str(tmp_path / "no-model"), "--reconstruct-volume",
                                  str(tmp_path / "no-scan.nii"), "--out", "/nonexistent/dir/r.nii"], capsys)
    assert line == "error: --out /nonexistent/dir/r.nii: no folder /nonexistent/dir to write it in"


def test_the_lock_of_a_killed_run_never_blocks_and_goes_with_the_next(tmp_path):
    holder = hold_lock(tmp_path / "c", "checkpoints", "x")
    release(holder)
    assert (tmp_path / "c" / "lock").exists()
    with RunLock(tmp_path / "c"):
        pass
    assert sorted(path.name for path in (tmp_path / "c").iterdir()) == [MARKER]
