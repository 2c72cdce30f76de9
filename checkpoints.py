"""A training stage's resumable state on disk, and the callback that saves it after every epoch.

A stage's folder holds `epoch-NNNN.weights.h5` files (weights, codebook and optimizer state after epoch N)
for the latest epoch and the best one, and `state.json`, which names them and records the settings the
stage was started with, the epoch count and the training time so far. Each file is written under a
temporary name and renamed, and state.json is replaced only once the files it names are complete, so a kill
at any moment leaves the previous or the new state, never a mix.
"""

import json
import math
import os
from pathlib import Path

import keras

from dataset import describe_data_change
from utils import write_json


class ResumeError(Exception):
    """A saved state that --resume cannot continue; the message says why."""


class CheckpointState:
    """The state of one stage: what state.json records, and the weights files it names.

    `folder` is where the stage's checkpoints live; `write_folder` is where this process writes them (the
    same, except on the non-chief workers of a multi-worker run, which write to scratch folders).
    """

    def __init__(self, folder, settings, record=None, write_folder=None, data=None):
        self.folder = Path(folder)
        self.write_folder = Path(write_folder or folder)
        self.record = record or {"settings": settings, "data": data, "epochs_done": 0}
        self.replaces = None  # the state.json of an earlier run that this fresh one replaces after its first epoch

    @classmethod
    def open(cls, folder, settings, resume, required, write_folder=None, data=None):
        """The saved state of the stage in `folder` to continue (with `resume`), or a fresh one.

        A saved state continues only if it was started with the same `settings` and `data` (a fingerprint
        of the splits, see dataset.data_fingerprint); if only the VQ-VAE it was trained on changed
        (`settings["vqvae_fingerprint"]`), the stage starts afresh. Raises ResumeError for other changes, for
        an unreadable or incomplete state, or if `required` and there is nothing to resume. A fresh state
        keeps an earlier run's checkpoints until its own first epoch is saved.
        """
        path = Path(folder) / "state.json"
        if resume and path.exists():
            state = cls(folder, settings, _read_state(path), write_folder)
            state._check(settings, data)
            if state.record["settings"].get("vqvae_fingerprint") == settings.get("vqvae_fingerprint"):
                print(f"Resuming from {folder} after epoch {state.epochs_done}.")
                return state
            print(f"The VQ-VAE changed since {folder} was saved: training the prior from the start.")
        elif resume and required:
            raise ResumeError(f"no saved run at {path}; start one without --resume")
        fresh = cls(folder, settings, write_folder=write_folder, data=data)
        fresh.write_folder.mkdir(parents=True, exist_ok=True)
        if (fresh.write_folder / "state.json").exists():
            fresh.replaces = fresh.write_folder / "state.json"
        return fresh

    def _check(self, settings, data):
        """Raise ResumeError if the saved state differs from these settings or data, or misses a file."""
        saved = self.record["settings"]
        for key, value in settings.items():
            if key != "vqvae_fingerprint" and saved.get(key, value) != value:
                raise ResumeError(f"the run in {self.folder} used --{key.replace('_', '-')} {saved[key]}, not {value}")
        change = describe_data_change(self.record.get("data"), data)
        if change:
            raise ResumeError(f"the data changed since the run in {self.folder} was saved: {change}")
        for name in {self.record.get("latest"), self.record.get("best")} - {None}:
            if not self._path(name).is_file():
                raise ResumeError(f"{self.folder / name}, named by state.json, is missing; start without --resume")

    @property
    def epochs_done(self):
        """Epochs completed and saved so far."""
        return self.record["epochs_done"]

    @property
    def best_epoch(self):
        """The saved epoch with the lowest validation score (None before the first)."""
        return self.record.get("best_epoch")

    @property
    def train_seconds(self):
        """Seconds of training steps over every session of this run so far."""
        return self.record.get("train_seconds", 0.0)

    @property
    def train_steps(self):
        """Training steps over every session of this run so far."""
        return self.record.get("train_steps", 0)

    def _path(self, name):
        """A weights file: where this process wrote it, else where an earlier session did."""
        written = self.write_folder / name
        return written if written.exists() else self.folder / name

    def restore_latest(self, model):
        """Load the latest epoch's weights and optimizer state into `model`, if an epoch is done; raises
        ResumeError if the file cannot be read."""
        if self.epochs_done:
            model.optimizer.build(model.trainable_variables)  # so that its saved state has somewhere to go
            path = self._path(self.record["latest"])
            try:
                model.load_weights(path)
            except (OSError, ValueError) as error:
                raise ResumeError(f"{path}: not a readable checkpoint of this model ({error}); start without "
                                  f"--resume") from None

    def restore_best(self, model):
        """Load the best epoch's weights into `model`."""
        model.load_weights(self._path(self.record["best"]))

    def record_epoch(self, model, epoch, score, monitor, clock):
        """Save `model` after `epoch` (1-based) with its validation `score` (lower is better) under `monitor`,
        then state.json; remove the weights files that are neither the latest nor the best."""
        latest = f"epoch-{epoch:04d}.weights.h5"
        self.record.update(epochs_done=epoch, latest=latest, train_seconds=clock.seconds, train_steps=clock.steps,
                           optimizer_iterations=int(model.optimizer.iterations.numpy()))
        if self.record.get("best_score") is None or score < self.record["best_score"]:
            self.record.update(best=latest, best_score=score, best_epoch=epoch, monitor=monitor)
        tmp = self.write_folder / f"tmp-{os.getpid()}.weights.h5"
        model.save_weights(tmp)
        if self.replaces is not None:  # the earlier run's state stops naming files before any is replaced
            self.replaces.unlink(missing_ok=True)
            self.replaces = None
        os.replace(tmp, self.write_folder / latest)
        write_json(self.write_folder / "state.json", self.record)
        for old in self.write_folder.glob("epoch-*.weights.h5"):
            if old.name not in (self.record["latest"], self.record["best"]):
                old.unlink()


class EpochCheckpoints(keras.callbacks.Callback):
    """After every epoch, record it in a CheckpointState, so that --resume loses at most the epoch in progress.

    The best epoch is the one with the lowest logged `monitor`. A diverged epoch is never saved.
    """

    def __init__(self, state, clock, monitor):
        super().__init__()
        self.state = state
        self.clock = clock
        self.monitor = monitor

    def on_epoch_end(self, epoch, logs=None):
        if not math.isfinite(logs.get("loss", math.nan)):
            return  # TerminateOnNaN stops the run
        self.state.record_epoch(self.model, epoch + 1, logs.get(self.monitor, math.nan), self.monitor, self.clock)


def _read_state(path):
    """The record in a state.json; raises ResumeError if it is not one."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResumeError(f"{path}: not a readable state ({error}); start without --resume") from None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict) or "epochs_done" not in record:
        raise ResumeError(f"{path}: not a state written by train.py; start without --resume")
    return record
